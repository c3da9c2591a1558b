// Wires the aggregator: config → pool and bus → startAggregator. `banbus run aggregator` (and `run all`)
// call this and own the signals; the pool and bus are closed after the aggregator stopped.
import { AggregatorEnvSchema, parseEnv } from '@banbus/core';
import { startWithResources, type Logger, type Registry, type Running } from '@banbus/runtime';
import { Bus } from '@banbus/bus';
import { createPool } from '@banbus/db';
import { startAggregator } from './index.js';

export async function mainAggregator(
  env: Record<string, string | undefined>,
  shared: { logger: Logger; registry: Registry },
): Promise<Running & { port: number; ready(): boolean }> {
  const config = parseEnv(AggregatorEnvSchema, env);
  const logger = shared.logger.child({ service: 'aggregator' });
  return startWithResources(async (resources) => {
    const pool = resources.hold(
      createPool(config.DATABASE_URL, { logger, applicationName: 'banbus-aggregator' }),
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
    const aggregator = await startAggregator({ config, logger, registry: shared.registry, pool, bus });
    return { port: aggregator.port, ready: () => aggregator.ready(), stop: () => aggregator.stop() };
  });
}
