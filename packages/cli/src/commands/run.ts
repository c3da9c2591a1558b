import type { Command } from 'commander';
import { z } from 'zod';
import { CommonEnvSchema, IngestEnvSchema, PersisterEnvSchema, parseEnv } from '@banbus/core';
import {
  createLogger,
  createRegistry,
  createServiceApp,
  finishApp,
  listen,
  stopOnSignals,
  type Logger,
  type Registry,
  type Running,
} from '@banbus/runtime';
import { Bus } from '@banbus/bus';
import { createPool, ensureDatabase, migrate } from '@banbus/db';
import { startIngest } from '@banbus/ingest';
import { startPersister } from '@banbus/persister';
import { UsageError, type CliIo } from '../io.js';

/** Services this build can run; the design's other services join this list as they land. */
export const SERVICES = ['all', 'ingest', 'persister'] as const;
const PLANNED = ['aggregator', 'console', 'route-applier', 'importer-3cx'];
export type ServiceName = (typeof SERVICES)[number];

interface Shared {
  logger: Logger;
  registry: Registry;
}

/**
 * Wires one service: config → pool and bus → start. The pool and bus are closed after the
 * service stopped, so in-flight work finishes against live connections.
 */
async function startService(
  name: 'ingest' | 'persister',
  env: CliIo['env'],
  shared: Shared,
): Promise<Running> {
  const logger = shared.logger.child({ service: name });
  const config = parseEnv(name === 'ingest' ? IngestEnvSchema : PersisterEnvSchema, env);
  const pool = createPool(config.DATABASE_URL, { logger });
  const bus = await Bus.connect({
    url: config.AMQP_URL,
    namespace: config.BANBUS_NAMESPACE,
    logger,
    registry: shared.registry,
  });
  let service: Running & { ready?(): boolean };
  let health: { close(): Promise<void> } | undefined;
  try {
    if (name === 'ingest') {
      service = await startIngest({
        config: config as z.infer<typeof IngestEnvSchema>,
        logger,
        registry: shared.registry,
        pool,
        bus,
      });
    } else {
      const persisterConfig = config as z.infer<typeof PersisterEnvSchema>;
      const persister = await startPersister({
        config: persisterConfig,
        logger,
        registry: shared.registry,
        pool,
        bus,
      });
      service = persister;
      // Alone, the persister has no HTTP of its own: give probes and Prometheus a port.
      if (persisterConfig.PERSISTER_PORT > 0 && env.BANBUS_RUN_ALL !== '1') {
        const app = finishApp(
          createServiceApp({
            logger,
            registry: shared.registry,
            readiness: { bus: () => bus.connected, persister: () => persister.ready() },
          }),
        );
        health = await listen(app, persisterConfig.PERSISTER_PORT, persisterConfig.BANBUS_LISTEN);
      }
    }
  } catch (err) {
    await bus.close().catch(() => undefined);
    await pool.end().catch(() => undefined);
    throw err;
  }
  logger.info('started');
  return {
    async stop() {
      await health?.close();
      await service.stop();
      await bus.close();
      await pool.end();
    },
  };
}

export async function runService(
  name: ServiceName,
  env: CliIo['env'],
): Promise<Running & { logger: Logger }> {
  const common = parseEnv(CommonEnvSchema, env);
  const logger = createLogger({ level: common.LOG_LEVEL, name: 'banbus' });
  const registry = createRegistry();
  if (name !== 'all') {
    const running = await startService(name, env, { logger, registry });
    return { ...running, logger };
  }
  // One process for a single-machine install: bring the schema up to date, then every central service.
  if (await ensureDatabase(common.DATABASE_URL)) logger.info('created the database');
  const applied = await migrate(common.DATABASE_URL, { logger });
  if (applied.length) logger.info({ migrations: applied }, 'migrated');
  const allEnv = { ...env, BANBUS_RUN_ALL: '1' };
  const started: Running[] = [];
  try {
    // The persister first, so reports accepted by ingest are consumed as soon as they arrive.
    started.push(await startService('persister', allEnv, { logger, registry }));
    started.push(await startService('ingest', allEnv, { logger, registry }));
  } catch (err) {
    for (const s of started.reverse()) await s.stop().catch(() => undefined);
    throw err;
  }
  return {
    logger,
    async stop() {
      // Ingest first: stop accepting, then let the persister drain what it holds.
      for (const s of [...started].reverse()) await s.stop();
    },
  };
}

export function runCommand(program: Command, io: CliIo): void {
  program
    .command('run <service>')
    .description(`start a service until SIGTERM: ${SERVICES.join(' | ')}`)
    .action(async (service: string) => {
      if (PLANNED.includes(service)) {
        throw new UsageError(`${service} is not part of this build yet; available: ${SERVICES.join(', ')}`);
      }
      const name = z.enum(SERVICES).safeParse(service);
      if (!name.success)
        throw new UsageError(`unknown service ${service}; available: ${SERVICES.join(', ')}`);
      const running = await runService(name.data, io.env);
      stopOnSignals(running, running.logger);
    });
}
