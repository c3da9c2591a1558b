// A pipeline for integration tests: a database and a namespace of their own, a bus to publish reports,
// a listener on the decision stream, and persisters (or any service, through serve) started on demand,
// each with its own bus and pool.
// Used by the persister's and the aggregator's tests; not re-exported from index.ts, so tests that do not
// need a persister do not load one.
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import {
  parseEnv,
  PersisterEnvSchema,
  type DecisionChange,
  type PersisterEnv,
  type Report,
} from '@banbus/core';
import { Bus } from '@banbus/bus';
import { createPool } from '@banbus/db';
import { createLogger, createRegistry, type Logger, type Registry } from '@banbus/runtime';
import {
  amqpTestUrl,
  createTestDatabase,
  deleteNamespace,
  DecisionListener,
  testNamespace,
  type TestDatabase,
} from './index.js';
import { startPersister, type PersisterRunning } from '@banbus/persister';

/** What serve gives a service of its own, as its main.ts would. */
export interface Own {
  pool: pg.Pool;
  bus: Bus;
  registry: Registry;
}

export interface World {
  db: TestDatabase;
  amqpUrl: string;
  namespace: string;
  logger: Logger;
  pool: pg.Pool;
  /** Publishes reports (the persisters have their own buses). */
  bus: Bus;
  listener: DecisionListener;
  config(overrides?: Partial<PersisterEnv>): PersisterEnv;
  /** Starts a persister with its own bus and pool; stopped by close(). */
  start(overrides?: Partial<PersisterEnv>): Promise<PersisterRunning & Own>;
  /**
   * Starts a service on a pool, a bus and a registry of its own. Its stop (idempotent) also closes them;
   * close() stops whatever is still running.
   */
  serve<S extends { stop(): Promise<void> }>(start: (own: Own) => Promise<S>): Promise<S & Own>;
  /** Publishes reports and waits until the persister relayed the change of the last one's target. */
  publish(reports: Report[]): Promise<DecisionChange>;
  /** Queues beyond the namespace's own that close() deletes (a route-applier's). */
  queues: string[];
  close(): Promise<void>;
}

export async function createWorld(): Promise<World> {
  const db = await createTestDatabase();
  const amqpUrl = await amqpTestUrl();
  const namespace = testNamespace();
  const logger = createLogger({ level: process.env.TEST_LOG_LEVEL ?? 'silent' });
  const pool = createPool(db.url, { logger });
  const bus = await Bus.connect({ url: amqpUrl, namespace, logger, registry: createRegistry(false) });
  const listener = await DecisionListener.start(amqpUrl, namespace);
  const running: { stop(): Promise<void> }[] = [];
  const queues: string[] = [];
  const config = (overrides: Partial<PersisterEnv> = {}): PersisterEnv => ({
    ...parseEnv(PersisterEnvSchema, {
      DATABASE_URL: db.url,
      AMQP_URL: amqpUrl,
      BANBUS_NAMESPACE: namespace,
      LOG_LEVEL: 'silent',
      PERSISTER_PORT: '0',
    }),
    ...overrides,
  });
  const serve: World['serve'] = async (startService) => {
    const own: Own = {
      pool: createPool(db.url, { logger }),
      bus: await Bus.connect({ url: amqpUrl, namespace, logger, registry: createRegistry(false) }),
      registry: createRegistry(false),
    };
    const closeOwn = async () => {
      await own.bus.close();
      await own.pool.end();
    };
    let service;
    try {
      service = await startService(own);
    } catch (err) {
      await closeOwn().catch(() => undefined);
      throw err;
    }
    const stopService = service.stop.bind(service);
    let stopped = false;
    const stop = async () => {
      if (stopped) return;
      stopped = true;
      await stopService();
      await closeOwn();
    };
    running.push({ stop });
    return Object.assign(service, own, { stop });
  };
  return {
    db,
    amqpUrl,
    namespace,
    logger,
    pool,
    bus,
    listener,
    config,
    start: (overrides = {}) => serve((own) => startPersister({ config: config(overrides), logger, ...own })),
    serve,
    queues,
    async publish(reports) {
      const last = reports[reports.length - 1]!;
      await bus.publishReports(reports);
      return listener.next(
        (c) => c.target === last.target && c.op === (last.action === 'unban' ? 'del' : 'add'),
      );
    },
    async close() {
      for (const r of running.reverse()) await r.stop().catch(() => undefined);
      await listener.close();
      await bus.close();
      await pool.end();
      await deleteNamespace(amqpUrl, namespace, queues).catch(() => undefined);
      await db.drop();
    },
  };
}

export function report(partial: Partial<Report> & Pick<Report, 'target'>): Report {
  return {
    id: randomUUID(),
    action: 'ban',
    host: 'web1',
    origin: 'fail2ban',
    jail: 'sshd',
    bantime: 3600,
    time: new Date().toISOString(),
    ...partial,
  };
}

let counter = 0;
/** A target no other test in the process uses (198.18.0.0/15 is reserved for benchmarks). */
export function freshTarget(): string {
  counter++;
  return `198.18.${Math.floor(counter / 250)}.${(counter % 250) + 1}`;
}
