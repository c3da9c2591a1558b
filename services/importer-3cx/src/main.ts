// Wires the 3CX importer: config → the 3CX database reader, the ingest client and the cursor file →
// startImporter3cx. `banbus run importer-3cx` calls this and owns the signals.
import { Importer3cxEnvSchema, parseEnv } from '@banbus/core';
import { startWithResources, type Logger, type Registry, type Running } from '@banbus/runtime';
import { CursorFile } from './cursor-file.js';
import { IngestClient } from './ingest-client.js';
import { PgEventSource, sourceConfig } from './source.js';
import { startImporter3cx } from './index.js';

export async function mainImporter3cx(
  env: Record<string, string | undefined>,
  shared: { logger: Logger; registry: Registry },
): Promise<Running & { port: number; ready(): boolean }> {
  const config = parseEnv(Importer3cxEnvSchema, env);
  const logger = shared.logger.child({ service: 'importer-3cx' });
  return startWithResources(async (resources) => {
    const source = resources.hold(new PgEventSource(sourceConfig(config), logger), (s) => s.close());
    const running = await startImporter3cx({
      config,
      logger,
      registry: shared.registry,
      source,
      sender: new IngestClient({ url: config.BANBUS_INGEST_URL, token: config.BANBUS_TOKEN }),
      store: new CursorFile(config.THREECX_CURSOR_FILE),
    });
    return { port: running.port, ready: () => running.ready(), stop: () => running.stop() };
  });
}
