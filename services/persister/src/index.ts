// The persister: the only place reports become decisions. Consumes `<ns>.persister` in batches, applies
// each batch in one transaction (DecisionStore.applyReports) and relays the decision log to the
// `<ns>.decisions` fanout in seq order. Also sweeps expired bans and lifts allowlisted decisions.
import type pg from 'pg';
import {
  ReportMessageSchema,
  policyFromEnv,
  type DecisionChange,
  type PersisterEnv,
  type Report,
} from '@banbus/core';
import type { Bus, Consumer, Delivery } from '@banbus/bus';
import { CHANNELS, DecisionStore, isTransientDbError, listenChannel } from '@banbus/db';
import {
  CoalescedTask,
  Counter,
  Gauge,
  Histogram,
  metric,
  type Logger,
  type Registry,
  type Running,
} from '@banbus/runtime';
import { engineRules } from './engine.js';
import { DecisionRelay } from './relay.js';
import { LocalHandoff } from './handoff.js';
export { mainPersister } from './main.js';
export { LocalHandoff, type HandoffDeps, type HandoffOutcome, type Sorted } from './handoff.js';

export {
  DecisionEngine,
  decide,
  engineRules,
  planLoad,
  effectiveTarget,
  OUTCOMES,
  type Outcome,
} from './engine.js';

export interface PersisterDeps {
  config: PersisterEnv;
  logger: Logger;
  registry: Registry;
  pool: pg.Pool;
  bus: Bus;
}

export interface PersisterRunning extends Running {
  ready(): boolean;
  /** The store this persister writes through (tests and the CLI read snapshots from it). */
  readonly store: DecisionStore;
  /** Runs a relay round now (coalesced with one already running); resolves when it finished. */
  relay(): Promise<void>;
  /** Runs a sweep now; resolves when it finished. */
  sweep(): Promise<void>;
  /** Where an ingest in this process hands the reports it publishes (see handoff.ts). */
  readonly handoff: LocalHandoff;
}

/** Longest wait before a committed message is acked (see ConsumeOptions.ackDelayMs). */
const ACK_DELAY_MS = 20;
/** The advisory lock key of the relay lease (one per database: advisory locks are). */
const RELAY_LEASE_KEY = 0x62616e62; // 'banb'
/** How often unpublished decision_log rows are relayed without being told (rows a crash left behind). */
const RELAY_FALLBACK_MS = 2_000;
/** Decision changes handed to the bus per turn of the event loop while relaying. */
const RELAY_SLICE = 100;
/** Transactions of one persister in flight at once (one writing, the next queued for the decision lock). */
const PIPELINE_DEPTH = 2;
/** How often the allowlist is checked without a notification (a missed NOTIFY while reconnecting). */
const LIFT_INTERVAL_MS = 30_000;

/** Runs tasks in call order, at most `depth` at once (a task waits for a slot, first come first served). */
class Pipeline {
  private active = 0;
  private readonly waiting: (() => void)[] = [];

  constructor(private readonly depth: number) {}

  async run(task: () => Promise<void>): Promise<void> {
    if (this.active < this.depth) this.active += 1;
    else await new Promise<void>((resolve) => this.waiting.push(resolve)); // a finishing task hands its slot over
    try {
      await task();
    } finally {
      const next = this.waiting.shift();
      if (next) next();
      else this.active -= 1;
    }
  }
}

function createMetrics(registry: Registry) {
  return {
    reports: metric(
      registry,
      'banbus_persister_reports_total',
      () =>
        new Counter({
          name: 'banbus_persister_reports_total',
          help: 'Reports applied, by outcome (duplicate = already stored id, skipped)',
          labelNames: ['outcome'] as const,
          registers: [registry],
        }),
    ),
    batchSeconds: metric(
      registry,
      'banbus_persister_batch_seconds',
      () =>
        new Histogram({
          name: 'banbus_persister_batch_seconds',
          help: 'Time to apply one batch of reports (one transaction)',
          buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
          registers: [registry],
        }),
    ),
    decisions: metric(
      registry,
      'banbus_persister_decisions',
      () =>
        new Gauge({ name: 'banbus_persister_decisions', help: 'Decisions in force', registers: [registry] }),
    ),
    lastSeq: metric(
      registry,
      'banbus_persister_last_seq',
      () =>
        new Gauge({
          name: 'banbus_persister_last_seq',
          help: 'Last decision seq allocated',
          registers: [registry],
        }),
    ),
    leader: metric(
      registry,
      'banbus_persister_relay_leader',
      () =>
        new Gauge({
          name: 'banbus_persister_relay_leader',
          help: '1 while this persister holds the relay lease (it publishes the decision changes of all persisters)',
          registers: [registry],
        }),
    ),
    relayed: metric(
      registry,
      'banbus_persister_relayed_total',
      () =>
        new Counter({
          name: 'banbus_persister_relayed_total',
          help: 'Decision changes handed to the broker, by path (direct = right after this process committed them; round = read back from decision_log)',
          labelNames: ['path'] as const,
          registers: [registry],
        }),
    ),
    handoff: metric(
      registry,
      'banbus_persister_handoff_reports_total',
      () =>
        new Counter({
          name: 'banbus_persister_handoff_reports_total',
          help: 'Reports handed over by an ingest in this process, by outcome (applied = committed before the broker delivered them; failed, queued = left to their broker copy)',
          labelNames: ['outcome'] as const,
          registers: [registry],
        }),
    ),
    handoffCopies: metric(
      registry,
      'banbus_persister_handoff_copies_total',
      () =>
        new Counter({
          name: 'banbus_persister_handoff_copies_total',
          help: 'Broker copies of reports the handoff took, by result (acked = the handoff committed them, no transaction; applied = its transaction failed)',
          labelNames: ['result'] as const,
          registers: [registry],
        }),
    ),
    preloads: metric(
      registry,
      'banbus_persister_preloads_total',
      () =>
        new Counter({
          name: 'banbus_persister_preloads_total',
          help: 'Batches that loaded their rows while the batch before held the decision lock, by result (used; redone = somebody else committed in between, loaded again under the lock)',
          labelNames: ['result'] as const,
          registers: [registry],
        }),
    ),
    handoffOpen: metric(
      registry,
      'banbus_persister_handoff_open',
      () =>
        new Gauge({
          name: 'banbus_persister_handoff_open',
          help: '1 while reports handed over by an ingest in this process are applied at once (0: left to the queue until it caught up)',
          registers: [registry],
        }),
    ),
    unpublished: metric(
      registry,
      'banbus_persister_unpublished',
      () =>
        new Gauge({
          name: 'banbus_persister_unpublished',
          help: 'Decision log rows not yet confirmed by the broker',
          registers: [registry],
        }),
    ),
  };
}

export async function startPersister(deps: PersisterDeps): Promise<PersisterRunning> {
  const { config, pool, bus, registry } = deps;
  const logger = deps.logger.child({ component: 'persister' });
  const policy = policyFromEnv(config);
  const metrics = createMetrics(registry);
  const relay = new DecisionRelay({
    publish: (changes) => publishChanges(changes),
    round: (publish, after) => store.relay(publish, after),
    saveCursor: (seq) => store.saveRelayCursor(seq),
    connected: () => bus.connected,
    logger,
    relayed: (path, n) => metrics.relayed.inc({ path }, n),
  });
  // The store tells the relay which seqs are this process's own before their COMMIT is answered.
  const store = new DecisionStore(pool, engineRules(policy), {
    logger,
    onLogged: (seq) => relay.logged(seq),
    onPreload: (result) => metrics.preloads.inc({ result }),
  });
  let stopped = false;
  let started = false;

  // A relay round publishes up to 2000 changes; handing them to amqplib at once kept the event loop busy
  // for tens of milliseconds (encoding and one socket write per frame), and the batch holding the decision
  // lock waited that long to send its next statement. Slices with a turn of the event loop in between let
  // PostgreSQL's answers through. One channel keeps them in order, and a call starts handing over its
  // slices only when the call before it handed over its last (so a direct publish cannot slip between the
  // slices of a round); it resolves when every slice was confirmed.
  let handing: Promise<void> | null = null;
  const publishChanges = (changes: DecisionChange[]): Promise<void> => {
    // The common case, one slice with nobody handing over: at once.
    if (handing === null && changes.length <= RELAY_SLICE) return bus.publishDecisionChanges(changes);
    const sends: Promise<void>[] = [];
    const handOver = async (): Promise<void> => {
      for (let i = 0; i < changes.length; i += RELAY_SLICE) {
        if (i > 0) await new Promise<void>((resolve) => setImmediate(resolve));
        const send = bus.publishDecisionChanges(changes.slice(i, i + RELAY_SLICE));
        // Awaited below; until then a rejection must not count as unhandled (that would end the process).
        send.catch(() => undefined);
        sends.push(send);
      }
    };
    const mine = (handing ?? Promise.resolve()).then(handOver);
    handing = mine;
    void mine.then(() => {
      if (handing === mine) handing = null;
    });
    return mine.then(() => Promise.all(sends)).then(() => undefined);
  };
  // Sweeps and lifts log changes the relay has not seen: a round publishes them.
  const onCommitted = (seq: number | null): void => {
    if (seq !== null) relay.notified(seq);
  };
  const sweeper = new CoalescedTask(
    async () => {
      const result = await store.sweep();
      if (result.lastSeq !== null) metrics.lastSeq.set(result.lastSeq);
      if (result.changes > 0) {
        logger.info({ changes: result.changes }, 'expired bans swept');
        onCommitted(result.lastSeq);
      }
      const pruned = await store.pruneLog(config.PERSISTER_LOG_RETENTION);
      if (pruned > 0) logger.info({ rows: pruned }, 'old decision_log rows dropped');
    },
    (err) => logger.warn({ err }, 'sweeping expired bans failed'),
  );
  const lifter = new CoalescedTask(
    async () => {
      const result = await store.liftAllowlisted();
      if (result.lastSeq !== null) metrics.lastSeq.set(result.lastSeq);
      if (result.changes > 0) {
        logger.info({ changes: result.changes }, 'allowlisted decisions lifted');
        onCommitted(result.lastSeq);
      }
    },
    (err) => logger.warn({ err }, 'lifting allowlisted decisions failed'),
  );

  const pipeline = new Pipeline(PIPELINE_DEPTH);
  const applyChunk = async (reports: Report[]): Promise<void> => {
    const end = metrics.batchSeconds.startTimer();
    const result = await store.applyReports(reports);
    end();
    const counts = new Map<string, number>();
    for (const o of result.outcomes) counts.set(o.outcome, (counts.get(o.outcome) ?? 0) + 1);
    for (const [outcome, n] of counts) metrics.reports.inc({ outcome }, n);
    if (result.duplicates > 0) metrics.reports.inc({ outcome: 'duplicate' }, result.duplicates);
    if (result.lastSeq !== null) {
      metrics.lastSeq.set(result.lastSeq);
      // Not awaited: the chunk is committed (so it may be acked); the relay publishes in seq order.
      relay.committed(result.logged);
    }
  };
  // A message carries one report or a packed array (ReportMessageSchema); deliveries are flattened in
  // queue order and applied in transactions of at most PERSISTER_BATCH_SIZE reports. If a later chunk
  // fails, the redelivered earlier ones are recognized by their ids and have no second effect.
  //
  // Transactions overlap (PIPELINE_DEPTH): while one holds the decision lock and PostgreSQL writes it, the
  // next is planned, encoded and connected and waits for the lock in PostgreSQL's queue. The consumer
  // hands over the next batch of messages while earlier ones are still applied (its handlers start in queue
  // order), every chunk joins one FIFO at once and the store grants the lock in call order, so reports
  // still apply in queue order.
  //
  // Copies of reports the local handoff committed are acked without a transaction; copies of reports it is
  // still applying wait for its answer, and so does the rest of the batch behind them (queue order).
  const handler = async (deliveries: Delivery<Report[]>[]): Promise<void> => {
    const sorted = handoff.sort(deliveries.flatMap((d) => d.body));
    let failed = false;
    const chunks: Promise<void>[] = [];
    const queue = (reports: Report[]) => {
      for (let i = 0; i < reports.length; i += config.PERSISTER_BATCH_SIZE) {
        const chunk = reports.slice(i, i + config.PERSISTER_BATCH_SIZE);
        chunks.push(
          pipeline.run(async () => {
            // After a failed chunk the batch is retried message by message: later chunks need not run now.
            if (failed) return;
            try {
              await applyChunk(chunk);
            } catch (err) {
              failed = true;
              throw err;
            }
          }),
        );
      }
    };
    let failedCopies = 0;
    try {
      queue(sorted.apply);
      if (sorted.later) {
        const later = await sorted.later;
        failedCopies = later.failed;
        queue(later.apply);
      }
    } finally {
      sorted.done();
    }
    if (sorted.copies > failedCopies)
      metrics.handoffCopies.inc({ result: 'acked' }, sorted.copies - failedCopies);
    if (failedCopies > 0) metrics.handoffCopies.inc({ result: 'applied' }, failedCopies);
    const results = await Promise.allSettled(chunks);
    const failure = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failure) throw failure.reason;
  };

  // Set once the consumer started: until then the handoff stays closed.
  let consumer: Consumer | undefined = undefined;
  // One transaction at a time, through the same pipeline as the queue's batches (so the two keep their
  // order at the decision lock); what is handed over meanwhile forms the next one.
  const handoff = new LocalHandoff({
    apply: (reports) => pipeline.run(() => applyChunk(reports)),
    caughtUp: async () => consumer !== undefined && !stopped && (await consumer.caughtUp()),
    logger,
    batchSize: config.PERSISTER_BATCH_SIZE,
    counted: (outcome, n) => metrics.handoff.inc({ outcome }, n),
    opened: (open) => metrics.handoffOpen.set(open ? 1 : 0),
  });

  // Lift before consuming: an allowlist entry added while no persister ran must not wait for a timer.
  await lifter.trigger();

  // The relay lease is a session advisory lock held on the connection that LISTENs for other processes'
  // commits: the leader is the one that hears them, and a dropped connection ends both at once. A leader
  // whose broker connection is away gives the lease up, so that a connected persister can relay.
  // One question at a time: the lock counts, and a second grant would outlive the one unlock.
  let asking = false;
  const takeLease = async (query: (text: string) => Promise<pg.QueryResult>): Promise<void> => {
    if (relay.isLeader || stopped || !bus.connected || asking) return;
    asking = true;
    try {
      const { rows } = await query(`SELECT pg_try_advisory_lock(${RELAY_LEASE_KEY}) AS ok`);
      if ((rows[0] as { ok: boolean }).ok) lead(true);
    } finally {
      asking = false;
    }
  };
  const lead = (leader: boolean) => {
    relay.setLeader(leader);
    metrics.leader.set(leader ? 1 : 0);
  };
  const decisionLog = await listenChannel(
    config.DATABASE_URL,
    CHANNELS.decisionLog,
    (payload) => relay.notified(Number(payload)),
    {
      logger,
      onConnect: takeLease,
      onLost: () => lead(false),
      onReconnect: () => void relay.round(),
    },
  );
  const tryLease = () =>
    void takeLease((text) => decisionLog.query(text)).catch((err: unknown) =>
      logger.debug({ err }, 'asking for the relay lease failed'),
    );
  const listeners = [
    decisionLog,
    await listenChannel(config.DATABASE_URL, CHANNELS.allowlist, () => void lifter.trigger(), {
      logger,
      onReconnect: () => void lifter.trigger(),
    }),
  ];
  // Rows a crash left unpublished go out before anything new; the direct path starts after them.
  await relay.round();
  const onConnected = () => {
    tryLease();
    void relay.round();
  };
  const onDisconnected = () => {
    if (!relay.isLeader) return;
    lead(false);
    void decisionLog
      .query('SELECT pg_advisory_unlock_all()')
      .catch((err: unknown) => logger.debug({ err }, 'giving the relay lease up failed'));
  };
  bus.on('connected', onConnected);
  bus.on('disconnected', onDisconnected);

  const reportsConsumer = await bus.consume<Report[]>({
    queue: bus.topology.persisterQueue,
    schema: ReportMessageSchema,
    // In messages: single reports (fail2ban's one-at-a-time path) still fill a whole transaction; packed
    // messages of up to MAX_REPORTS_PER_MESSAGE are chunked by the handler.
    prefetch: config.PERSISTER_PREFETCH,
    batchSize: Math.min(config.PERSISTER_BATCH_SIZE, config.PERSISTER_PREFETCH),
    // The bus counts attempts from 1; 0 in the environment means "dead-letter at the first failure".
    maxRetries: Math.max(1, config.PERSISTER_MAX_RETRIES),
    isTransient: isTransientDbError,
    handler,
    // The next batch is parsed and queued while the previous one is still being written.
    concurrency: 2,
    // Acks go out in groups (after the commits, as always): each is a frame the broker handles.
    ackDelayMs: ACK_DELAY_MS,
  });

  const refreshGauges = async (withDecisions: boolean) => {
    try {
      const [unpublished, lastSeq] = await Promise.all([store.unpublishedCount(), store.lastSeq()]);
      metrics.unpublished.set(unpublished);
      metrics.lastSeq.set(lastSeq);
      // count(*) over a million decisions takes tens of milliseconds: not every 2 s.
      if (withDecisions) metrics.decisions.set(await store.decisionCount());
    } catch (err) {
      logger.debug({ err }, 'reading persister gauges failed');
    }
  };
  const timers = [
    setInterval(() => {
      // A leader that went away (its connection to PostgreSQL dropped) is replaced here.
      tryLease();
      void relay.round();
      void refreshGauges(false);
    }, RELAY_FALLBACK_MS),
    setInterval(() => void sweeper.trigger(), Math.max(10, config.PERSISTER_SWEEP_INTERVAL * 1000)),
    setInterval(() => {
      void lifter.trigger();
      void refreshGauges(true);
    }, LIFT_INTERVAL_MS),
  ];
  for (const t of timers) t.unref();
  consumer = reportsConsumer;
  handoff.start();
  void sweeper.trigger();
  void refreshGauges(true);
  started = true;
  logger.info(
    { queue: bus.topology.persisterQueue, batchSize: config.PERSISTER_BATCH_SIZE },
    'persister started',
  );

  return {
    store,
    ready: () => started && !stopped && bus.connected,
    relay: () => relay.round(),
    sweep: () => sweeper.trigger(),
    handoff,
    async stop() {
      if (stopped) return;
      stopped = true;
      for (const t of timers) clearInterval(t);
      bus.off('connected', onConnected);
      bus.off('disconnected', onDisconnected);
      // What was handed over and not yet applied is left to its broker copy.
      await handoff.stop();
      // Cancelling lets the in-flight batch finish (and commit) before it resolves.
      await reportsConsumer
        .cancel()
        .catch((err: unknown) => logger.warn({ err }, 'cancelling the consumer failed'));
      await Promise.all([sweeper.idle(), lifter.idle()]);
      // Whatever the last batches logged goes out now rather than at the next start, and the cursor says so;
      // then the lease goes with the LISTEN connection.
      await relay.stop();
      await Promise.allSettled(listeners.map((l) => l.close()));
      logger.info('persister stopped');
    },
  };
}
