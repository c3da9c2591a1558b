import type { Command } from 'commander';
import { z } from 'zod';
import { CommonEnvSchema, parseEnv } from '@banbus/core';
import { createLogger, createRegistry, stopOnSignals, type Logger, type Running } from '@banbus/runtime';
import type { mainAggregator as MainAggregatorFn } from '@banbus/aggregator';
import type { mainIngest as MainIngestFn } from '@banbus/ingest';
import type { mainPersister as MainPersisterFn } from '@banbus/persister';
import type { mainRouteApplier as MainRouteApplierFn } from '@banbus/route-applier';
import type { mainImporter3cx as MainImporter3cxFn } from '@banbus/importer-3cx';
import type { mainConsole as MainConsoleFn } from '@banbus/console';
import { UsageError, type CliIo } from '../io.js';

type MainIngest = typeof MainIngestFn;
type MainPersister = typeof MainPersisterFn;
type MainAggregator = typeof MainAggregatorFn;
type MainRouteApplier = typeof MainRouteApplierFn;
type MainImporter3cx = typeof MainImporter3cxFn;
type MainConsole = typeof MainConsoleFn;

/** Every service of the design; `all` is the central ones in one process. */
export const SERVICES = [
  'all',
  'ingest',
  'persister',
  'aggregator',
  'route-applier',
  'importer-3cx',
  'console',
] as const;
export type ServiceName = (typeof SERVICES)[number];

export interface RunningService extends Running {
  logger: Logger;
  /** The port ingest listens on, when this process runs it. */
  ingestPort?: number;
  /** The port the aggregator listens on, when this process runs it. */
  aggregatorPort?: number;
  /** The port the console listens on, when this process runs it. */
  consolePort?: number;
}

/**
 * Starts a service with its wiring (each service's main.ts). `all` is the single-machine install:
 * it creates the database if needed, migrates, then runs every central service in this process
 * with one metrics registry, served on ingest's port.
 */
export async function runService(name: ServiceName, env: CliIo['env']): Promise<RunningService> {
  const common = parseEnv(CommonEnvSchema, env);
  // No name here: each service's child logger adds its own `service`.
  const logger = createLogger({ level: common.LOG_LEVEL });
  const registry = createRegistry();
  // Each service's code is loaded only when this process runs it: a process running one service does
  // not carry the others' modules (tens of megabytes for all of them).
  const mainIngest: MainIngest = async (...args) => (await import('@banbus/ingest')).mainIngest(...args);
  const mainPersister: MainPersister = async (...args) =>
    (await import('@banbus/persister')).mainPersister(...args);
  const mainAggregator: MainAggregator = async (...args) =>
    (await import('@banbus/aggregator')).mainAggregator(...args);
  const mainConsole: MainConsole = async (...args) => (await import('@banbus/console')).mainConsole(...args);
  if (name === 'console') {
    const consoleService = await mainConsole(env, { logger, registry });
    return { stop: () => consoleService.stop(), logger, consolePort: consoleService.port };
  }
  if (name === 'ingest') {
    const ingest = await mainIngest(env, { logger, registry });
    return { ...ingest, logger, ingestPort: ingest.port };
  }
  if (name === 'aggregator') {
    const aggregator = await mainAggregator(env, { logger, registry });
    return { stop: () => aggregator.stop(), logger, aggregatorPort: aggregator.port };
  }
  if (name === 'route-applier') {
    // One per host, not a central service: not part of `all`, and it needs no database.
    const mainRouteApplier: MainRouteApplier = async (...args) =>
      (await import('@banbus/route-applier')).mainRouteApplier(...args);
    const applier = await mainRouteApplier(env, { logger, registry });
    return { stop: () => applier.stop(), logger };
  }
  if (name === 'importer-3cx') {
    // Runs beside a 3CX PBX and talks to ingest over HTTP: not part of `all`, no banbus database.
    const mainImporter3cx: MainImporter3cx = async (...args) =>
      (await import('@banbus/importer-3cx')).mainImporter3cx(...args);
    const importer = await mainImporter3cx(env, { logger, registry });
    return { stop: () => importer.stop(), logger };
  }
  if (name === 'persister') {
    const persister = await mainPersister(env, { logger, registry, serveHttp: true });
    return { stop: () => persister.stop(), logger };
  }
  // Loaded here: the route-applier and importer return above and never need pg or node-pg-migrate.
  const { ensureDatabase, migrate } = await import('@banbus/db');
  if (await ensureDatabase(common.DATABASE_URL)) logger.info('created the database');
  const applied = await migrate(common.DATABASE_URL, { logger });
  if (applied.length) logger.info({ migrations: applied }, 'migrated');
  // The persister first, so reports ingest accepts are consumed as soon as they arrive; the aggregator
  // next, so its snapshot starts from the decisions already there.
  const started: (Running & { port?: number })[] = [];
  try {
    const persister = await mainPersister(env, { logger, registry, serveHttp: false });
    started.push(persister);
    const aggregator = await mainAggregator(env, { logger, registry });
    started.push(aggregator);
    // Reports ingest publishes are applied by this persister at once, not after the broker delivered
    // them back (services/persister/src/handoff.ts).
    const ingest = await mainIngest(env, { logger, registry, handoff: persister.handoff });
    started.push(ingest);
    const consoleService = await mainConsole(env, { logger, registry });
    started.push(consoleService);
    return {
      logger,
      ingestPort: ingest.port,
      aggregatorPort: aggregator.port,
      consolePort: consoleService.port,
      async stop() {
        // Ingest first: stop accepting, then the readers, then let the persister finish what it holds.
        for (const service of [...started].reverse()) await service.stop();
      },
    };
  } catch (err) {
    for (const service of started.reverse()) await service.stop().catch(() => undefined);
    throw err;
  }
}

export function runCommand(program: Command, io: CliIo): void {
  program
    .command('run <service>')
    .description(`start a service until SIGTERM: ${SERVICES.join(' | ')}`)
    .action(async (service: string) => {
      const name = z.enum(SERVICES).safeParse(service);
      if (!name.success)
        throw new UsageError(`unknown service ${service}; available: ${SERVICES.join(', ')}`);
      const running = await runService(name.data, io.env);
      stopOnSignals(running, running.logger);
    });
}
