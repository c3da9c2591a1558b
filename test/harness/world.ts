// A pipeline for integration tests: a database and a namespace of their own, a bus to publish reports,
// a listener on the decision stream, and persisters started on demand (each with its own bus and pool).
// Used by the persister's and the aggregator's tests; not re-exported from index.ts, so tests that do not
// need a persister do not load one.
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { parseEnv, PersisterEnvSchema, type PersisterEnv, type Report } from '@banbus/core';
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
  start(
    overrides?: Partial<PersisterEnv>,
  ): Promise<PersisterRunning & { bus: Bus; pool: pg.Pool; registry: Registry }>;
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
  return {
    db,
    amqpUrl,
    namespace,
    logger,
    pool,
    bus,
    listener,
    config,
    async start(overrides = {}) {
      const ownPool = createPool(db.url, { logger });
      const ownBus = await Bus.connect({ url: amqpUrl, namespace, logger, registry: createRegistry(false) });
      const registry = createRegistry(false);
      const persister = await startPersister({
        config: config(overrides),
        logger,
        registry,
        pool: ownPool,
        bus: ownBus,
      });
      const handle = Object.assign(persister, { bus: ownBus, pool: ownPool, registry });
      running.push({
        async stop() {
          await persister.stop();
          await ownBus.close();
          await ownPool.end();
        },
      });
      return handle;
    },
    async close() {
      for (const r of running.reverse()) await r.stop().catch(() => undefined);
      await listener.close();
      await bus.close();
      await pool.end();
      await deleteNamespace(amqpUrl, namespace).catch(() => undefined);
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
