// Wires the console: config → pool and bus → startConsole. `banbus run console` (and `run all`) call this
// and own the signals; the pool and bus are closed after the console stopped.
import { ConsoleEnvSchema, parseEnv } from '@banbus/core';
import { startWithResources, type Logger, type Registry, type Running } from '@banbus/runtime';
import { Bus } from '@banbus/bus';
import { createPool } from '@banbus/db';
import { startConsole } from './index.js';

export async function mainConsole(
  env: Record<string, string | undefined>,
  shared: { logger: Logger; registry: Registry },
): Promise<Running & { port: number; ready(): boolean }> {
  const config = parseEnv(ConsoleEnvSchema, env);
  const logger = shared.logger.child({ service: 'console' });
  return startWithResources(async (resources) => {
    const pool = resources.hold(
      createPool(config.DATABASE_URL, { logger, applicationName: 'banbus-console', max: 5 }),
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
    const running = await startConsole({ config, logger, registry: shared.registry, pool, bus });
    return { port: running.port, ready: () => running.ready(), stop: () => running.stop() };
  });
}
