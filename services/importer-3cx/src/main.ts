// Wires the 3CX importer: config → the 3CX database reader, the ingest client and the cursor file →
// startImporter3cx. `banbus run importer-3cx` calls this and owns the signals.
import { Importer3cxEnvSchema, parseEnv } from '@banbus/core';
import type { Logger, Registry, Running } from '@banbus/runtime';
import { CursorFile } from './cursor-file.js';
import { IngestClient } from './ingest-client.js';
import { PgEventSource } from './source.js';
import { startImporter3cx } from './index.js';

export async function mainImporter3cx(
  env: Record<string, string | undefined>,
  shared: { logger: Logger; registry: Registry },
): Promise<Running & { port: number; ready(): boolean }> {
  const config = parseEnv(Importer3cxEnvSchema, env);
  const logger = shared.logger.child({ service: 'importer-3cx' });
  const source = new PgEventSource(
    {
      url: config.THREECX_DATABASE_URL,
      table: config.THREECX_TABLE,
      timeColumn: config.THREECX_TIME_COLUMN,
      eventColumn: config.THREECX_EVENT_COLUMN,
      eventIds: config.THREECX_EVENT_IDS,
      textColumn: config.THREECX_TEXT_COLUMN,
      idColumn: config.THREECX_ID_COLUMN,
    },
    logger,
  );
  try {
    const running = await startImporter3cx({
      config,
      logger,
      registry: shared.registry,
      source,
      sender: new IngestClient({ url: config.BANBUS_INGEST_URL, token: config.BANBUS_TOKEN }),
      store: new CursorFile(config.THREECX_CURSOR_FILE),
    });
    return {
      port: running.port,
      ready: () => running.ready(),
      async stop() {
        await running.stop();
        await source.close();
      },
    };
  } catch (err) {
    await source.close().catch(() => undefined);
    throw err;
  }
}
