// Wires the route-applier: config → bus → startRouteApplier. `banbus run route-applier` calls this and
// owns the signals; the bus is closed after the applier stopped. No database: a host only needs the
// broker and the aggregator.
import { parseEnv, RouteApplierEnvSchema } from '@banbus/core';
import type { Logger, Registry, Running } from '@banbus/runtime';
import { Bus } from '@banbus/bus';
import { startRouteApplier } from './index.js';

export async function mainRouteApplier(
  env: Record<string, string | undefined>,
  shared: { logger: Logger; registry: Registry },
): Promise<Running & { port: number; ready(): boolean }> {
  const config = parseEnv(RouteApplierEnvSchema, env);
  const logger = shared.logger.child({ service: 'route-applier' });
  const bus = await Bus.connect({
    url: config.AMQP_URL,
    namespace: config.BANBUS_NAMESPACE,
    logger,
    registry: shared.registry,
    // The central services own the shared topology; a host's user may configure only its own queue.
    declares: 'own-queues',
  });
  try {
    const applier = await startRouteApplier({ config, logger, registry: shared.registry, bus });
    return {
      port: applier.port,
      ready: () => applier.ready(),
      async stop() {
        await applier.stop();
        await bus.close();
      },
    };
  } catch (err) {
    await bus.close().catch(() => undefined);
    throw err;
  }
}
