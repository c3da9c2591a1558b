// Wires the persister: config → pool and bus → startPersister. `banbus run persister` (and `run all`) call
// this and own the signals. Alone, a persister has no HTTP server of its own, so health and metrics are
// served on PERSISTER_PORT (0 = none); under `run all` ingest's port serves the shared registry.
import { parseEnv, PersisterEnvSchema } from '@banbus/core';
import { Bus } from '@banbus/bus';
import { createPool } from '@banbus/db';
import {
  createServiceApp,
  finishApp,
  listen,
  type Listening,
  type Logger,
  type Registry,
  type Running,
} from '@banbus/runtime';
import { startPersister, type LocalHandoff } from './index.js';

export async function mainPersister(
  env: Record<string, string | undefined>,
  shared: { logger: Logger; registry: Registry; serveHttp: boolean },
): Promise<Running & { ready(): boolean; handoff: LocalHandoff }> {
  const config = parseEnv(PersisterEnvSchema, env);
  const { registry } = shared;
  const logger = shared.logger.child({ service: 'persister' });
  const pool = createPool(config.DATABASE_URL, { logger, applicationName: 'banbus-persister' });
  let bus: Bus | undefined;
  try {
    bus = await Bus.connect({ url: config.AMQP_URL, namespace: config.BANBUS_NAMESPACE, logger, registry });
    const persister = await startPersister({ config, logger, registry, pool, bus });
    let http: Listening | undefined;
    if (shared.serveHttp && config.PERSISTER_PORT !== 0) {
      const connected = bus;
      const app = createServiceApp({
        logger,
        registry,
        readiness: {
          bus: () => connected.connected,
          persister: () => persister.ready(),
          database: async () => {
            await pool.query('SELECT 1');
            return true;
          },
        },
      });
      finishApp(app);
      http = await listen(app, config.PERSISTER_PORT, config.BANBUS_LISTEN);
      logger.info({ port: http.port }, 'persister health and metrics listening');
    }
    const connected = bus;
    return {
      ready: () => persister.ready(),
      handoff: persister.handoff,
      async stop() {
        await http?.close();
        await persister.stop();
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
