// The applier's state machine: snapshot → reconcile the kernel by diff → apply the stream in seq order,
// healing gaps with a delta and a 410 or a wide gap with a new snapshot. It talks to the world only
// through its DecisionSource and KernelBackend, so tests drive it with fakes and the dry-run backend.
//
// Every mutation (a batch from the queue, a gap fill, a snapshot, the periodic check) runs one at a time
// through `serial`, so changes reach the kernel strictly in seq order.
import { setTimeout as sleep } from 'node:timers/promises';
import { parseTarget, type DecisionChange, type Target } from '@banbus/core';
import type { Logger } from '@banbus/runtime';
import {
  consecutiveRun,
  diffSets,
  KernelOps,
  netEffect,
  pendingAfter,
  suspiciousSnapshot,
  type SnapshotGuard,
} from './changes.js';
import { Coverage } from './coverage.js';
import type { NeverBlock } from './never-block.js';
import { SourceError, type DecisionSource, type SourceFailure } from './source.js';
import { BackendError, type KernelBackend, type WriteFailure } from './backends/types.js';
import { formatV4, TargetList, TargetSet, type TargetCollection } from './target-set.js';

/** What the applier reports; metrics.ts turns it into Prometheus series. */
export interface ApplierObserver {
  snapshot(result: 'applied' | SourceFailure | 'backend'): void;
  delta(): void;
  written(adds: number, dels: number, seconds: number): void;
  failed(kind: 'kernel' | 'backend' | 'source', count: number): void;
  refused(count: number): void;
  skipped(count: number): void;
}

export interface ApplierOptions {
  source: DecisionSource;
  backend: KernelBackend;
  neverBlock: NeverBlock;
  logger: Logger;
  guard: SnapshotGuard;
  /** A gap wider than this is healed with a snapshot, not a delta. */
  deltaMax: number;
  /** Backoff between snapshot attempts before the first one succeeded. */
  retry: { minMs: number; maxMs: number };
  observer?: ApplierObserver;
}

/** Writes at least this large take the backend's bulk path even outside a snapshot. */
const BULK_WRITE = 2_000;
/** Refused targets named in one log line. */
const LOG_EXAMPLES = 10;

export class Applier {
  /** The seq the kernel reflects; -1 before the first snapshot. */
  private heldSeq = -1;
  /** Every decision target this host enforces (refused ones excluded). */
  private desired = new TargetSet();
  /** Decisions the never-block list keeps out of the kernel. */
  private refused = new Set<string>();
  private readonly coverage: Coverage | undefined;
  /** A write broke half-way: the kernel is compared with `desired` before anything else. */
  private dirty = false;
  private serialTail: Promise<unknown> = Promise.resolve();
  private stopped = false;
  private readonly abort = new AbortController();
  private readyFlag = false;
  private readonly readyPromise: Promise<void>;
  private resolveReady!: () => void;
  private readonly observer: ApplierObserver | undefined;
  private readonly logger: Logger;
  /** Highest seq seen anywhere (stream, delta, snapshot), and since when the kernel lags behind it. */
  private maxSeen = -1;
  private behindSince: number | undefined;
  /** Why the last snapshot attempt failed (for /readyz and logs), undefined after a good one. */
  lastSnapshotError: string | undefined;
  snapshots = 0;
  deltas = 0;

  constructor(private readonly options: ApplierOptions) {
    this.readyPromise = new Promise((resolve) => (this.resolveReady = resolve));
    this.coverage = options.backend.disjoint ? new Coverage() : undefined;
    this.observer = options.observer;
    this.logger = options.logger;
  }

  get seq(): number {
    return this.heldSeq;
  }

  get ready(): boolean {
    return this.readyFlag;
  }

  /** The decision targets this host enforces. */
  get decisions(): TargetCollection {
    return this.desired;
  }

  /** What the kernel should hold now (the maximal decisions on a disjoint backend). */
  get kernelView(): TargetCollection {
    return this.coverage ? this.coverage.kernel : this.desired;
  }

  get refusedCount(): number {
    return this.refused.size;
  }

  /** Seqs seen but not applied yet, and for how long the oldest of them has waited (0 when none). */
  lag(now = Date.now()): { seqs: number; seconds: number } {
    const seqs = Math.max(0, this.maxSeen - this.heldSeq);
    if (seqs === 0 || this.behindSince === undefined) return { seqs, seconds: 0 };
    return { seqs, seconds: (now - this.behindSince) / 1000 };
  }

  /** Resolves once the first snapshot is applied (or the applier stopped). */
  whenReady(): Promise<void> {
    return this.readyPromise;
  }

  /** Takes the first snapshot in the background, retrying with backoff until one is usable. */
  start(): void {
    void this.loadWithRetry();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.abort.abort();
    this.resolveReady();
    await this.serialTail.catch(() => undefined);
  }

  private serial<T>(task: () => Promise<T>): Promise<T> {
    const next = this.serialTail.then(task, task);
    this.serialTail = next.catch(() => undefined);
    return next;
  }

  private async loadWithRetry(): Promise<void> {
    let delay = this.options.retry.minMs;
    while (!this.stopped) {
      try {
        await this.serial(() => this.resync('start'));
        this.readyFlag = true;
        this.resolveReady();
        return;
      } catch (err) {
        if (this.stopped) return;
        this.logger.warn(
          { err: describe(err), reason: failureOf(err), retryMs: delay, holding: this.kernelView.size },
          'no usable decision snapshot yet; keeping what the host holds and retrying',
        );
        try {
          await sleep(delay, undefined, { signal: this.abort.signal });
        } catch {
          return; // stopped
        }
        delay = Math.min(delay * 2, this.options.retry.maxMs);
      }
    }
  }

  /**
   * Applies a batch of changes from the stream (any order, duplicates allowed). Waits for the first
   * snapshot; resolves once the kernel reflects them, so the caller may ack.
   */
  async receive(changes: readonly DecisionChange[]): Promise<void> {
    if (changes.length === 0) return;
    let highest = 0;
    for (const c of changes) if (c.seq > highest) highest = c.seq;
    this.saw(highest);
    await this.readyPromise;
    if (this.stopped) return;
    await this.serial(async () => {
      await this.reconcileIfDirty();
      let pending = pendingAfter(changes, this.heldSeq);
      if (pending.length < changes.length) this.observer?.skipped(changes.length - pending.length);
      while (pending.length > 0 && !this.stopped) {
        const run = consecutiveRun(pending, this.heldSeq);
        if (run > 0) {
          await this.applyRun(pending.slice(0, run));
          pending = pending.slice(run);
          continue;
        }
        await this.fillGap(pending[0]!.seq - 1);
        pending = pendingAfter(pending, this.heldSeq);
      }
    });
    this.caughtUp();
  }

  /** Asks the aggregator for changes the stream did not bring (a lost tail, a purged queue). */
  async check(): Promise<void> {
    if (!this.readyFlag || this.stopped) return;
    try {
      await this.serial(async () => {
        await this.reconcileIfDirty();
        const delta = await this.options.source.delta(this.heldSeq);
        if (delta === 'gone') {
          this.logger.info(
            { seq: this.heldSeq },
            'the aggregator has no delta from our seq; taking a snapshot',
          );
          await this.resync('gone');
          return;
        }
        this.saw(delta.seq);
        const pending = pendingAfter(delta.changes, this.heldSeq);
        const run = consecutiveRun(pending, this.heldSeq);
        if (run > 0) {
          this.deltas += 1;
          this.observer?.delta();
          this.logger.info({ from: this.heldSeq, to: pending[run - 1]!.seq }, 'caught up from a delta');
          await this.applyRun(pending.slice(0, run));
        }
      });
      this.caughtUp();
    } catch (err) {
      this.logger.warn({ err: describe(err) }, 'checking the aggregator for missed changes failed');
    }
  }

  /** Takes a new snapshot now (used by tests and the periodic check's 410). */
  resyncNow(): Promise<void> {
    return this.serial(() => this.resync('requested'));
  }

  private saw(seq: number): void {
    if (seq > this.maxSeen) this.maxSeen = seq;
    if (this.maxSeen > this.heldSeq && this.behindSince === undefined) this.behindSince = Date.now();
  }

  private caughtUp(): void {
    if (this.heldSeq >= this.maxSeen) this.behindSince = undefined;
  }

  /** Brings the kernel from `heldSeq` to at least `upTo`: a delta, or a snapshot when that is better. */
  private async fillGap(upTo: number): Promise<void> {
    const from = this.heldSeq;
    if (upTo - from > this.options.deltaMax) {
      this.logger.warn(
        { from, upTo },
        'wide gap in the decision stream (queue overflowed?); taking a snapshot',
      );
      await this.resync('gap');
    } else {
      const delta = await this.options.source.delta(from);
      if (delta === 'gone') {
        this.logger.info(
          { from, upTo },
          'the aggregator no longer has the missing changes; taking a snapshot',
        );
        await this.resync('gone');
      } else {
        this.saw(delta.seq);
        const pending = pendingAfter(delta.changes, from);
        const run = consecutiveRun(pending, from);
        if (run < pending.length) {
          this.logger.warn({ from, upTo }, 'the delta itself has a gap; taking a snapshot');
          await this.resync('gap');
        } else {
          this.deltas += 1;
          this.observer?.delta();
          await this.applyRun(pending);
          this.logger.info(
            { from, to: this.heldSeq, upTo },
            'filled a gap in the decision stream from a delta',
          );
        }
      }
    }
    if (this.heldSeq < upTo) {
      // The stream already carried seqs the aggregator does not know: it lags behind (or reads another
      // database). Try again later rather than loop.
      throw new SourceError(
        'unavailable',
        `the aggregator is at seq ${this.heldSeq}, behind the stream (${upTo})`,
      );
    }
  }

  /** Applies consecutive changes (seq order, starting right after heldSeq). */
  private async applyRun(run: readonly DecisionChange[]): Promise<void> {
    if (run.length === 0) return;
    const ops = new KernelOps();
    const refusedNow: string[] = [];
    for (const [text, op] of netEffect(run)) {
      const t = parseTarget(text);
      if (op === 'add') {
        if (this.desired.has(t.text) || this.refused.has(t.text)) continue;
        const protectedBy = this.options.neverBlock.protects(t);
        if (protectedBy) {
          this.refused.add(t.text);
          refusedNow.push(`${t.text} (overlaps ${protectedBy})`);
          continue;
        }
        this.desired.add(t.text);
        if (this.coverage) this.coverage.add(t, ops);
        else ops.push(t.text, 'add');
      } else {
        if (this.refused.delete(t.text)) continue;
        if (!this.desired.delete(t.text)) continue;
        if (this.coverage) this.coverage.del(t, this.desired, ops);
        else ops.push(t.text, 'del');
      }
    }
    this.reportRefused(refusedNow);
    const { adds, dels } = ops.split();
    await this.write(adds, dels, adds.length + dels.length >= BULK_WRITE);
    this.heldSeq = run[run.length - 1]!.seq;
  }

  private async write(adds: string[], dels: string[], bulk: boolean): Promise<void> {
    if (adds.length === 0 && dels.length === 0) return;
    const started = performance.now();
    let failures: WriteFailure[];
    try {
      failures = await this.options.backend.write(adds, dels, bulk);
    } catch (err) {
      this.dirty = true;
      this.observer?.failed('backend', 1);
      throw err instanceof BackendError ? err : new BackendError(describe(err), { cause: err });
    }
    this.observer?.written(adds.length, dels.length, (performance.now() - started) / 1000);
    if (failures.length > 0) {
      this.observer?.failed('kernel', failures.length);
      this.logger.warn(
        { failed: failures.length, examples: failures.slice(0, LOG_EXAMPLES) },
        'the kernel refused some entries',
      );
    }
  }

  private reportRefused(refused: string[]): void {
    if (refused.length === 0) return;
    this.observer?.refused(refused.length);
    this.logger.warn(
      { count: refused.length, examples: refused.slice(0, LOG_EXAMPLES) },
      'decisions refused by the never-block list (not applied)',
    );
  }

  /** After a broken write: make the kernel match what we hold before going on. */
  private async reconcileIfDirty(): Promise<void> {
    if (!this.dirty) return;
    const kernel = await this.options.backend.list();
    const { adds, dels } = diffSets(kernel, this.kernelView);
    await this.write(adds, dels, true);
    this.dirty = false;
    this.logger.info(
      { added: adds.length, removed: dels.length },
      'reconciled the kernel after a failed write',
    );
  }

  /**
   * Replaces what the host holds with a snapshot, by diff. A snapshot that cannot be read completely,
   * has an entry that does not parse, or would shrink the host's set suspiciously is refused and the
   * kernel stays as it is.
   */
  private async resync(why: string): Promise<void> {
    const started = performance.now();
    const { backend, source, neverBlock } = this.options;
    let snapshot;
    try {
      snapshot = await source.snapshot();
    } catch (err) {
      this.noteSnapshotFailure(err);
      throw err;
    }
    const desired = new TargetSet();
    const refused = new Set<string>();
    const targets: Target[] = [];
    const refusedNow: string[] = [];
    try {
      const list = snapshot.targets;
      let texts: Iterable<string> = list;
      if (list instanceof TargetList && !this.coverage) {
        // Single IPv4 addresses, nearly all of a snapshot, arrive as numbers: no string, no parse, no
        // object per entry. The protected ones take the general path below, which names them.
        const protectedV4: string[] = [];
        for (const v of list.v4Values()) {
          if (neverBlock.protectsV4(v)) protectedV4.push(formatV4(v));
          else desired.addV4(v);
        }
        texts = protectedV4.length > 0 ? [...protectedV4, ...list.others()] : list.others();
      }
      for (const raw of texts) {
        let t: Target;
        try {
          t = parseTarget(raw);
        } catch (err) {
          throw new SourceError('invalid', `snapshot entry ${JSON.stringify(raw)}: ${describe(err)}`);
        }
        const protectedBy = neverBlock.protects(t);
        if (protectedBy) {
          if (!refused.has(t.text)) refusedNow.push(`${t.text} (overlaps ${protectedBy})`);
          refused.add(t.text);
          continue;
        }
        desired.add(t.text);
        if (this.coverage) targets.push(t);
      }
      const kernel = await backend.list();
      const suspicious = suspiciousSnapshot(
        Math.max(kernel.size, this.kernelView.size),
        desired.size,
        this.options.guard,
      );
      if (suspicious) throw new SourceError('suspicious', suspicious);
      const view = this.coverage ? this.coverage.reset(targets) : desired;
      const dels: string[] = [];
      for (const t of kernel) if (!view.has(t)) dels.push(t);
      this.desired = desired;
      this.refused = refused;
      // From here on the new set is what we hold: if a write breaks, the next turn reconciles to it.
      this.heldSeq = snapshot.seq;
      this.dirty = false;
      // Adds first: while the diff is written the host never holds less than both old and new sets share.
      // In slices where the backend allows: the texts of 100k adds at once are some 10 MB of heap that
      // the host keeps reserved long after the snapshot.
      const sliceSize = backend.bulkSlice ?? Infinity;
      let added = 0;
      let slice: string[] = [];
      for (const t of view) {
        if (kernel.has(t)) continue;
        slice.push(t);
        if (slice.length >= sliceSize) {
          await this.write(slice, [], true);
          added += slice.length;
          slice = [];
        }
      }
      await this.write(slice, [], true);
      added += slice.length;
      await this.write([], dels, true);
      this.saw(snapshot.seq);
      this.caughtUp();
      this.snapshots += 1;
      this.lastSnapshotError = undefined;
      this.observer?.snapshot('applied');
      this.reportRefused(refusedNow);
      this.logger.info(
        {
          why,
          seq: snapshot.seq,
          decisions: snapshot.targets.length,
          held: view.size,
          added,
          removed: dels.length,
          refused: refused.size,
          ms: Math.round(performance.now() - started),
        },
        'decision snapshot applied',
      );
    } catch (err) {
      this.noteSnapshotFailure(err);
      throw err;
    }
  }

  private noteSnapshotFailure(err: unknown): void {
    this.lastSnapshotError = describe(err);
    const reason = failureOf(err);
    this.observer?.snapshot(reason);
    if (reason === 'suspicious') {
      this.logger.error(
        { reason: describe(err) },
        'refused a suspicious decision snapshot; the host keeps its bans',
      );
    }
  }
}

function failureOf(err: unknown): SourceFailure | 'backend' {
  return err instanceof SourceError ? err.reason : 'backend';
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
