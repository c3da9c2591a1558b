// Wires ingest: config → pool and bus → startIngest. `banbus run ingest` (and `run all`) call this and
// own the signals; the pool and bus are closed after ingest stopped, so in-flight requests finish.
import { IngestEnvSchema, parseEnv } from '@banbus/core';
import type { Logger, Registry, Running } from '@banbus/runtime';
import { Bus } from '@banbus/bus';
import { createPool } from '@banbus/db';
import { startIngest } from './index.js';

export async function mainIngest(
  env: Record<string, string | undefined>,
  shared: { logger: Logger; registry: Registry },
): Promise<Running & { port: number }> {
  const config = parseEnv(IngestEnvSchema, env);
  const logger = shared.logger.child({ service: 'ingest' });
  const pool = createPool(config.DATABASE_URL, { logger, applicationName: 'banbus-ingest' });
  let bus: Bus | undefined;
  try {
    bus = await Bus.connect({
      url: config.AMQP_URL,
      namespace: config.BANBUS_NAMESPACE,
      logger,
      registry: shared.registry,
    });
    const ingest = await startIngest({ config, logger, registry: shared.registry, pool, bus });
    const connected = bus;
    return {
      port: ingest.port,
      async stop() {
        await ingest.stop();
        await connected.close();
        await pool.end();
      },
    };
  } catch (err) {
    await bus?.close().catch(() => undefined);
    await pool.end().catch(() => undefined);
    throw err;
  }
}
