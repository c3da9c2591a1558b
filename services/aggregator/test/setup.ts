// Wiring for the aggregator's integration tests: the shared pipeline world (own database and namespace,
// a real persister making decisions from published reports) plus aggregators started on demand, each
// with its own bus and pool.
import { AggregatorEnvSchema, parseEnv, type AggregatorEnv } from '@banbus/core';
import { HostRepository } from '@banbus/db';
import type { PersisterRunning } from '@banbus/persister';
import {
  createWorld as createPipelineWorld,
  type Own,
  type World as PipelineWorld,
} from '../../../test/harness/world.js';
import { startAggregator, type AggregatorRunning } from '../src/index.js';

export { report } from '../../../test/harness/world.js';

export type TestAggregator = AggregatorRunning & Own & { url: string };

export interface World extends Omit<PipelineWorld, 'start' | 'config'> {
  persister: PersisterRunning;
  tokens: { read: string; report: string; admin: string };
  startAggregator(overrides?: Partial<AggregatorEnv>): Promise<TestAggregator>;
}

export async function createWorld(): Promise<World> {
  const base = await createPipelineWorld();
  const { db, amqpUrl, namespace, logger, pool } = base;
  const persister = await base.start();
  const hosts = new HostRepository(pool);
  const tokens = {
    read: (await hosts.add('reader', ['read'])).token,
    report: (await hosts.add('reporter', ['report'])).token,
    admin: (await hosts.add('operator', ['admin'])).token,
  };
  return {
    ...base,
    persister,
    tokens,
    async startAggregator(overrides = {}) {
      const config: AggregatorEnv = {
        ...parseEnv(AggregatorEnvSchema, {
          DATABASE_URL: db.url,
          AMQP_URL: amqpUrl,
          BANBUS_NAMESPACE: namespace,
          LOG_LEVEL: 'silent',
          AGGREGATOR_PORT: '0',
          BANBUS_LISTEN: '127.0.0.1',
          AGGREGATOR_REBUILD_DEBOUNCE_MS: '20',
        }),
        ...overrides,
      };
      const aggregator = await base.serve((own) => startAggregator({ config, logger, ...own }));
      return Object.assign(aggregator, { url: `http://127.0.0.1:${aggregator.port}` });
    },
  };
}

let counter = 0;
/**
 * A target no other test in the file uses (198.18.0.0/15 is reserved for benchmarks). Addresses ≡ 1 mod 4
 * never merge with each other, so each stays its own line in the merged list.
 */
export function freshTarget(): string {
  counter++;
  return `198.18.${Math.floor(counter / 60)}.${(counter % 60) * 4 + 1}`;
}

/** The entries of a plain list (comment lines dropped). */
export function entriesOf(text: string): string[] {
  return text.split('\n').filter((l) => l !== '' && !l.startsWith('#'));
}

export function seqOf(text: string): number {
  const m = /^# seq: (\d+)$/m.exec(text);
  if (!m) throw new Error(`no seq header in ${text.slice(0, 200)}`);
  return Number(m[1]);
}
