// startAggregator: follows the decision stream into memory, rebuilds the merged blocklists and serves
// them (and the decision snapshot/delta) over HTTP. The pool, bus, logger and registry belong to the
// caller, which may share them with other services in one process (`banbus run all`).
import type pg from 'pg';
import type { AggregatorEnv } from '@banbus/core';
import type { Bus } from '@banbus/bus';
import { HostRepository } from '@banbus/db';
import { Gauge, Histogram, listen, metric, type Logger, type Registry, type Running } from '@banbus/runtime';
import { createAggregatorApp } from './app.js';
import { ReadAuthenticator } from './auth.js';
import { BlocklistBuilder, type Build } from './builder.js';
import { DecisionFollower } from './follower.js';

export { mainAggregator } from './main.js';
export { createAggregatorApp, type AggregatorAppOptions } from './app.js';
export { ReadAuthenticator } from './auth.js';
export { BlocklistBuilder, StaleBuildError, type Build, type RenderQuery } from './builder.js';
export { DecisionFollower } from './follower.js';
export { DecisionSet, DecisionSnapshot, loadSnapshot, readLog, type DecisionEntry } from './state.js';

export interface AggregatorDeps {
  config: AggregatorEnv;
  logger: Logger;
  registry: Registry;
  pool: pg.Pool;
  bus: Bus;
}

export interface AggregatorRunning extends Running {
  readonly port: number;
  ready(): boolean;
  readonly follower: DecisionFollower;
  readonly builder: BlocklistBuilder;
  /** Resolves with the first build that reflects at least `seq`. */
  waitForSeq(seq: number): Promise<Build>;
}

function createMetrics(registry: Registry, follower: DecisionFollower, builder: BlocklistBuilder) {
  const entries = metric(
    registry,
    'banbus_aggregator_entries',
    () =>
      new Gauge({
        name: 'banbus_aggregator_entries',
        help: 'CIDRs in the served merged blocklist, by family',
        labelNames: ['family'] as const,
        registers: [registry],
      }),
  );
  metric(
    registry,
    'banbus_aggregator_seq',
    () =>
      new Gauge({
        name: 'banbus_aggregator_seq',
        help: 'Decision seq held in memory',
        registers: [registry],
        collect() {
          this.set(follower.state.seq);
        },
      }),
  );
  metric(
    registry,
    'banbus_aggregator_decisions',
    () =>
      new Gauge({
        name: 'banbus_aggregator_decisions',
        help: 'Decisions held in memory',
        registers: [registry],
        collect() {
          this.set(follower.state.size);
        },
      }),
  );
  metric(
    registry,
    'banbus_aggregator_lag_seconds',
    () =>
      new Gauge({
        name: 'banbus_aggregator_lag_seconds',
        help: 'Seconds since the oldest decision change applied in memory but not yet in the served lists (0 = up to date)',
        registers: [registry],
        collect() {
          this.set(builder.lagSeconds());
        },
      }),
  );
  const rebuild = metric(
    registry,
    'banbus_aggregator_rebuild_seconds',
    () =>
      new Histogram({
        name: 'banbus_aggregator_rebuild_seconds',
        help: 'Time to merge the decisions into the blocklists (and write the files)',
        buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
        registers: [registry],
      }),
  );
  return { entries, rebuild };
}

export async function startAggregator(deps: AggregatorDeps): Promise<AggregatorRunning> {
  const { config, registry, pool, bus } = deps;
  const logger = deps.logger.child({ component: 'aggregator' });

  // The builder reads the follower's state; the follower tells the builder about changes (the closures
  // run only after start, when all three exist).
  let firstBuild = true;
  const follower = new DecisionFollower({
    pool,
    bus,
    logger,
    queueMaxLength: config.AGGREGATOR_QUEUE_MAX_LENGTH,
    onChange: () => {
      // The first build after the snapshot goes out at once: until then there is nothing to serve.
      builder.schedule(firstBuild);
      firstBuild = false;
    },
  });
  const builder = new BlocklistBuilder({
    source: (buffers) => follower.state.columns(buffers),
    debounceMs: config.AGGREGATOR_REBUILD_DEBOUNCE_MS,
    dir: config.BLOCKLIST_DIR,
    logger,
    onBuild: (build, seconds) => {
      metrics.entries.set({ family: '4' }, build.counts.v4);
      metrics.entries.set({ family: '6' }, build.counts.v6);
      metrics.rebuild.observe(seconds);
    },
  });
  const metrics = createMetrics(registry, follower, builder);

  const auth = new ReadAuthenticator({
    hosts: new HostRepository(pool),
    ttlSeconds: config.AGGREGATOR_TOKEN_CACHE_TTL,
    anonymous: config.AGGREGATOR_ANONYMOUS,
    logger,
  });
  const ready = () => follower.isLoaded && builder.current !== undefined && bus.connected;
  const app = createAggregatorApp({
    logger,
    registry,
    pool,
    follower,
    builder,
    auth,
    readiness: {
      bus: () => bus.connected,
      state: () => follower.isLoaded && builder.current !== undefined,
    },
  });

  await follower.start();
  let listening;
  try {
    listening = await listen(app, config.AGGREGATOR_PORT, config.BANBUS_LISTEN);
  } catch (err) {
    await follower.stop();
    await builder.stop();
    throw err;
  }
  logger.info({ port: listening.port, host: config.BANBUS_LISTEN }, 'aggregator listening');
  const server = listening;

  return {
    port: server.port,
    ready,
    follower,
    builder,
    waitForSeq: (seq) => builder.waitForSeq(seq),
    async stop() {
      await server.close();
      await follower.stop();
      await builder.stop();
    },
  };
}
