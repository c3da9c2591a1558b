// Wires ingest: config → pool and bus → startIngest. `banbus run ingest` (and `run all`) call this and
// own the signals; the pool and bus are closed after ingest stopped, so in-flight requests finish.
import { IngestEnvSchema, parseEnv } from '@banbus/core';
import { startWithResources, type Logger, type Registry, type Running } from '@banbus/runtime';
import { Bus } from '@banbus/bus';
import { createPool } from '@banbus/db';
import { startIngest, type ReportHandoff } from './index.js';

export async function mainIngest(
  env: Record<string, string | undefined>,
  shared: { logger: Logger; registry: Registry; handoff?: ReportHandoff },
): Promise<Running & { port: number }> {
  const config = parseEnv(IngestEnvSchema, env);
  const logger = shared.logger.child({ service: 'ingest' });
  return startWithResources(async (resources) => {
    const pool = resources.hold(
      createPool(config.DATABASE_URL, { logger, applicationName: 'banbus-ingest' }),
      (p) => p.end(),
    );
    const bus = resources.hold(
      await Bus.connect({
        url: config.AMQP_URL,
        namespace: config.BANBUS_NAMESPACE,
        logger,
        registry: shared.registry,
      }),
      (b) => b.close(),
    );
    const ingest = await startIngest({
      config,
      logger,
      registry: shared.registry,
      pool,
      bus,
      handoff: shared.handoff,
    });
    return { port: ingest.port, stop: () => ingest.stop() };
  });
}
