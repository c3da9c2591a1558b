// startRouteApplier: one per host. Binds the host's durable queue on the decision fanout, takes a
// snapshot from the aggregator, reconciles the kernel to it by diff, then applies the stream in seq
// order. The bus, logger and registry belong to the caller (main.ts or a test).
import type { Channel } from 'amqplib';
import { DecisionMessageSchema, type DecisionChange, type RouteApplierEnv } from '@banbus/core';
import type { Bus, Consumer } from '@banbus/bus';
import { createProbeHandler, listen, type Logger, type Registry, type Running } from '@banbus/runtime';
import { Applier } from './applier.js';
import { BackendError, createBackend, type KernelBackend } from './backends/index.js';
import { detectNeverBlock } from './host.js';
import { createApplierMetrics } from './metrics.js';
import type { NeverBlock } from './never-block.js';
import { HttpDecisionSource, SourceError, type DecisionSource } from './source.js';

export { mainRouteApplier } from './main.js';
export { Applier, type ApplierObserver, type ApplierOptions } from './applier.js';
export * from './backends/index.js';
export { Coverage, maximalTargets } from './coverage.js';
export { NeverBlock, LOOPBACK } from './never-block.js';
export { detectNeverBlock, hostAddresses } from './host.js';
export {
  HttpDecisionSource,
  SnapshotScanner,
  parseSnapshot,
  SourceError,
  type DecisionSource,
  type Delta,
  type Snapshot,
  type SourceFailure,
} from './source.js';
export { diffSets, netEffect, pendingAfter, suspiciousSnapshot, KernelOps } from './changes.js';
export { TargetSet, type TargetCollection } from './target-set.js';

export interface RouteApplierDeps {
  config: RouteApplierEnv;
  logger: Logger;
  registry: Registry;
  bus: Bus;
  /** Defaults: the backend APPLIER_BACKEND names, the aggregator at BANBUS_URL, the detected never-block list. */
  backend?: KernelBackend;
  source?: DecisionSource;
  neverBlock?: NeverBlock;
}

export interface RouteApplierRunning extends Running {
  readonly port: number;
  readonly queue: string;
  readonly applier: Applier;
  readonly backend: KernelBackend;
  ready(): boolean;
}

/**
 * Arguments of a host's queue: see docs/route-applier.md ("The host's queue").
 *
 * A classic durable queue, not a quorum queue. What it holds is derived data: every change in it is also
 * in decision_log and in the aggregator's snapshot, and the applier heals any gap (a seq beyond the next)
 * from a delta or a snapshot. Quorum replication buys nothing here that the applier does not already get
 * from healing, and it cost the most of all: the relay's publish is confirmed only when every bound queue
 * has it, so each host's queue added a Raft log write per decision and its CPU to RabbitMQ; twenty of
 * them made up most of the broker's load and of the time from a relay's publish to its confirm. Durable
 * with persistent messages it still survives a broker restart, and a host that was away still finds its
 * changes waiting. No x-delivery-limit: classic queues have none; the consumer counts attempts itself.
 */
export function applierQueueArguments(config: RouteApplierEnv): Record<string, unknown> {
  return {
    'x-queue-type': 'classic',
    // A retired host's queue goes away by itself.
    'x-expires': config.APPLIER_QUEUE_EXPIRES * 1000,
    // A host away for long keeps the newest changes; the oldest are dropped (never dead-lettered, never
    // refused: reject-publish would make the fanout nack the persister's relay for every host). The
    // applier sees the dropped seqs as a gap and heals it from a delta or a snapshot.
    'x-max-length': config.APPLIER_QUEUE_MAX_LENGTH,
    'x-overflow': 'drop-head',
  };
}

/** Longest wait before an applied message is acked (see ConsumeOptions.ackDelayMs). */
const ACK_DELAY_MS = 50;

export async function startRouteApplier(deps: RouteApplierDeps): Promise<RouteApplierRunning> {
  const { config, registry, bus } = deps;
  const logger = deps.logger.child({ component: 'route-applier', host: config.APPLIER_HOST });
  const backend = deps.backend ?? createBackend(config, logger);
  await backend.init();
  let applier: Applier | undefined;
  let consumer: Consumer | undefined;
  let checkTimer: NodeJS.Timeout | undefined;
  let onReconnected: (() => void) | undefined;
  try {
    const neverBlock =
      deps.neverBlock ?? (await detectNeverBlock(config.APPLIER_NETNS, config.APPLIER_NEVER_BLOCK, logger));
    const source =
      deps.source ??
      new HttpDecisionSource({
        url: config.BANBUS_URL,
        token: config.BANBUS_TOKEN,
        timeoutMs: config.APPLIER_HTTP_TIMEOUT * 1000,
      });
    const observer = createApplierMetrics(registry, () => applier);
    const running = new Applier({
      source,
      backend,
      neverBlock,
      logger,
      observer,
      guard: { min: config.APPLIER_SNAPSHOT_GUARD_MIN, ratio: config.APPLIER_SNAPSHOT_GUARD_RATIO },
      deltaMax: config.APPLIER_DELTA_MAX,
      retry: {
        minMs: config.APPLIER_SNAPSHOT_RETRY_MIN * 1000,
        maxMs: config.APPLIER_SNAPSHOT_RETRY_MAX * 1000,
      },
    });
    applier = running;

    // The queue first, the snapshot second: a change committed in between is in the queue and skipped
    // if the snapshot already holds it, so nothing falls between them.
    const t = bus.topology;
    const queue = t.applierQueue(config.APPLIER_HOST);
    consumer = await bus.consume<DecisionChange[]>({
      queue,
      declare: async (channel: Channel) => {
        await channel.assertQueue(queue, { durable: true, arguments: applierQueueArguments(config) });
        await channel.bindQueue(queue, t.decisionsExchange, '');
      },
      schema: DecisionMessageSchema,
      prefetch: config.APPLIER_PREFETCH,
      batchSize: config.APPLIER_PREFETCH,
      maxRetries: 5,
      // The aggregator or the kernel tool being away says nothing about the message: wait and retry.
      isTransient: (err) => err instanceof SourceError || err instanceof BackendError,
      handler: (deliveries) => running.receive(deliveries.flatMap((d) => d.body)),
      // A per-host RabbitMQ user may not publish through the default exchange (docs/rabbitmq.md).
      retry: 'requeue',
      // One ack frame per ACK_DELAY_MS instead of one per message: on a fleet every ack is paid by the
      // broker once per host. A crash in between only redelivers changes the applier skips by seq.
      ackDelayMs: ACK_DELAY_MS,
    });
    running.start();
    // Decision messages are transient: a broker restart empties the host queue. Whatever it held is in
    // the decision log, so every reconnect asks the aggregator for a delta instead of waiting for the next
    // change (or the periodic check) to show the gap.
    onReconnected = () => void running.check();
    bus.on('connected', onReconnected);
    if (config.APPLIER_CHECK_INTERVAL > 0) {
      checkTimer = setInterval(() => void running.check(), config.APPLIER_CHECK_INTERVAL * 1000);
      checkTimer.unref();
    }

    // node:http alone, not an express app: this process runs on every host (see createProbeHandler).
    const handler = createProbeHandler({
      logger,
      registry,
      readiness: { bus: () => bus.connected, snapshot: () => running.ready },
      routes: {
        '/v1/status': () => ({
          host: config.APPLIER_HOST,
          backend: backend.name,
          queue,
          ready: running.ready,
          seq: running.seq,
          entries: running.kernelView.size,
          decisions: running.decisions.size,
          refused: running.refusedCount,
          lag: running.lag(),
          snapshots: running.snapshots,
          deltas: running.deltas,
          lastSnapshotError: running.lastSnapshotError ?? null,
        }),
      },
    });
    const server = await listen(handler, config.APPLIER_PORT, config.BANBUS_LISTEN);
    logger.info(
      { port: server.port, backend: backend.name, queue, aggregator: config.BANBUS_URL },
      'route-applier started',
    );

    let stopped = false;
    return {
      port: server.port,
      queue,
      applier: running,
      backend,
      ready: () => running.ready && bus.connected,
      async stop() {
        if (stopped) return;
        stopped = true;
        if (checkTimer) clearInterval(checkTimer);
        if (onReconnected) bus.off('connected', onReconnected);
        await running.stop();
        await consumer?.cancel();
        if (config.APPLIER_REMOVE_ON_SHUTDOWN) {
          await backend
            .removeAll()
            .catch((err: unknown) =>
              logger.error({ err: (err as Error).message }, 'removing our entries failed'),
            );
          logger.info('removed our entries from the kernel (APPLIER_REMOVE_ON_SHUTDOWN)');
        }
        await backend.close();
        await server.close();
      },
    };
  } catch (err) {
    if (checkTimer) clearInterval(checkTimer);
    if (onReconnected) bus.off('connected', onReconnected);
    await applier?.stop().catch(() => undefined);
    await consumer?.cancel().catch(() => undefined);
    await backend.close().catch(() => undefined);
    throw err;
  }
}
