// The local handoff: when ingest runs in the persister's process (`banbus run all`), every report it
// accepts is handed to the persister at the moment it is published, and applied without waiting for the
// broker to deliver it back. The broker's copy is still what makes the report durable (rule 1: ingest
// answers 202 only after the broker's confirm). When that copy arrives, the consumer acks it without a
// second transaction if the handoff committed it; if the handoff failed, the copy is applied as any other
// message. The store recognizes report ids it already holds, so a copy applied twice (by another
// persister, or after a crash) has no second effect.
//
// Order: reports of one source must apply in the order they were sent (a ban followed by an unban of the
// same address). The handoff applies what it is handed in order, one transaction at a time, so what
// arrives while a transaction runs forms the next one. It only takes reports while nothing older is still
// on its way through the queue:
// - it starts closed, and opens once the consumer is caught up (the queue empty, every delivery handed to
//   the handler): a backlog left by a stopped persister goes first;
// - a failed transaction closes it. The reports that failed, and every report handed over while it is
//   closed, are left to their broker copies. It opens again once the copies of all of them were seen (or
//   expired: another persister consumed them) and the consumer is caught up.
import type { Report } from '@banbus/core';
import type { Logger } from '@banbus/runtime';

export type HandoffOutcome = 'applied' | 'failed' | 'queued';

export interface HandoffDeps {
  /** Applies reports in one transaction (the persister's pipeline); rejects if nothing was committed. */
  apply(reports: Report[]): Promise<void>;
  /** The consumer holds nothing older than now (Consumer.caughtUp). */
  caughtUp(): Promise<boolean>;
  logger: Logger;
  /** Most reports in one transaction. */
  batchSize: number;
  /** Reports tracked until their broker copy is seen; beyond this the handoff closes. Default 100,000. */
  maxTracked?: number;
  /** How long a report waits for its copy before it is forgotten (another persister took it). Default 60 s. */
  expiryMs?: number;
  /** How often a closed handoff asks whether it can open. Default 1 s. */
  retryMs?: number;
  /** Reports by what the handoff did with them. */
  counted?(outcome: HandoffOutcome, n: number): void;
  /** The handoff opened (true) or closed (false). */
  opened?(open: boolean): void;
  now?(): number;
}

type State =
  /** Handed over, waiting for or in its transaction. */
  | 'applying'
  /** Committed by the handoff: its copy is acked without a transaction. */
  | 'applied'
  /** Left to its broker copy (failed, or handed over while closed). */
  | 'queued';

interface Waiting {
  report: Report;
  entry: Entry;
}

interface Entry {
  state: State;
  at: number;
  /** While applying: resolves true when committed, false when the copy must be applied. */
  settled?: Promise<boolean>;
  settle?(committed: boolean): void;
}

/** What the queue path must do with a batch of delivered reports. */
export interface Sorted {
  /** Reports the handoff never had or left to the queue: apply them now, in this order. */
  apply: Report[];
  /**
   * The rest of the batch from the first copy whose handoff transaction is still running: resolves, once
   * the handoff answered, to the reports of it that must be applied, in queue order (the others, and the
   * copies whose transaction failed: `failed` of them). Null when no copy waits for an answer. Call `done`
   * once they were handed to the pipeline.
   */
  later: Promise<{ apply: Report[]; failed: number }> | null;
  done(): void;
  /** How many of the batch were reports the handoff committed or is applying (broker copies). */
  copies: number;
}

export class LocalHandoff {
  private isOpen = false;
  private stopped = false;
  /** Handed over, not yet in a transaction. */
  private waiting: Waiting[] = [];
  private applying = false;
  /** Report id → what happened to it, in the order handed over (Map keeps insertion order). */
  private readonly tracked = new Map<string, Entry>();
  /** Entries in state 'queued': the handoff stays closed while any is left. */
  private queued = 0;
  /** Batches whose `later` copies are not yet back in the pipeline. */
  private sorting = 0;
  private opening = false;
  private timer: NodeJS.Timeout | null = null;
  private idle: Promise<void> = Promise.resolve();
  private readonly maxTracked: number;
  private readonly expiryMs: number;
  private readonly retryMs: number;
  private readonly now: () => number;

  constructor(private readonly deps: HandoffDeps) {
    this.maxTracked = deps.maxTracked ?? 100_000;
    this.expiryMs = deps.expiryMs ?? 60_000;
    this.retryMs = deps.retryMs ?? 1_000;
    this.now = deps.now ?? (() => performance.now());
  }

  get open(): boolean {
    return this.isOpen;
  }

  /** Starts trying to open (after the consumer started). */
  start(): void {
    this.scheduleOpen(0);
  }

  /**
   * Ingest published these reports (or is about to): apply them now if open. Never throws and never waits:
   * the broker's copy is the report's way in whatever happens here.
   */
  submit(reports: readonly Report[]): void {
    if (reports.length === 0) return;
    this.expire();
    const at = this.now();
    if (this.isOpen && this.tracked.size + reports.length > this.maxTracked) {
      this.deps.logger.warn(
        { tracked: this.tracked.size },
        'local handoff: too many reports waiting for their broker copy; leaving reports to the queue',
      );
      this.close();
    }
    if (!this.isOpen) {
      for (const r of reports) this.track(r.id, { state: 'queued', at });
      this.deps.counted?.('queued', reports.length);
      return;
    }
    for (const r of reports) {
      let settle!: (committed: boolean) => void;
      const settled = new Promise<boolean>((resolve) => (settle = resolve));
      const entry: Entry = { state: 'applying', at, settled, settle };
      this.track(r.id, entry);
      this.waiting.push({ report: r, entry });
    }
    this.pump();
  }

  /** Ingest could not publish these reports: no copy will come, nothing waits for one. */
  unpublished(ids: readonly string[]): void {
    for (const id of ids) {
      const entry = this.tracked.get(id);
      if (entry && entry.state !== 'applying') this.untrack(id, entry);
    }
    this.scheduleOpen(0);
  }

  /**
   * Sorts a batch of delivered reports (the broker's copies among them) for the queue path. Synchronous for
   * `apply`, so the caller hands those to the pipeline in queue order before anything else runs. Queue order
   * is kept: from the first copy whose handoff transaction is still running, the rest of the batch waits in
   * `later` with it (were that transaction to fail, its reports must still apply before what came after).
   */
  sort(reports: readonly Report[]): Sorted {
    if (this.tracked.size === 0)
      return { apply: [...reports], later: null, done: () => undefined, copies: 0 };
    const apply: Report[] = [];
    /** From the first copy still applying on: each report, with the handoff's answer where it has one. */
    const rest: { report: Report; settled?: Promise<boolean> }[] = [];
    let copies = 0;
    for (const report of reports) {
      const entry = this.tracked.get(report.id);
      if (entry) this.untrack(report.id, entry);
      if (entry?.state === 'applying') {
        copies += 1;
        rest.push({ report, settled: entry.settled! });
      } else if (entry?.state === 'applied') {
        copies += 1;
      } else if (rest.length > 0) {
        rest.push({ report });
      } else {
        apply.push(report);
      }
    }
    if (this.queued === 0 && !this.isOpen) this.scheduleOpen(0);
    if (rest.length === 0) return { apply, later: null, done: () => undefined, copies };
    this.sorting += 1;
    let finished = false;
    const later = Promise.all(rest.map((r) => r.settled ?? false)).then((committed) => ({
      apply: rest.filter((_, i) => !committed[i]).map((r) => r.report),
      failed: rest.filter((r, i) => r.settled !== undefined && !committed[i]).length,
    }));
    return {
      apply,
      later,
      copies,
      done: () => {
        if (finished) return;
        finished = true;
        this.sorting -= 1;
        this.scheduleOpen(0);
      },
    };
  }

  /** Closes and waits for the transaction running now; what waits for one is left to the queue. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.close();
    await this.idle;
  }

  private track(id: string, entry: Entry): void {
    const previous = this.tracked.get(id);
    if (previous) this.untrack(id, previous);
    this.tracked.set(id, entry);
    if (entry.state === 'queued') this.queued += 1;
  }

  private untrack(id: string, entry: Entry): void {
    this.tracked.delete(id);
    if (entry.state === 'queued') this.queued -= 1;
  }

  private setState(id: string, entry: Entry, state: State): void {
    if (this.tracked.get(id) !== entry) return; // its copy was sorted already
    if (entry.state === 'queued') this.queued -= 1;
    entry.state = state;
    if (state === 'queued') this.queued += 1;
  }

  private pump(): void {
    if (this.applying || this.waiting.length === 0) return;
    const chunk = this.waiting.splice(0, this.deps.batchSize);
    this.applying = true;
    this.idle = this.deps.apply(chunk.map((w) => w.report)).then(
      () => this.finished(chunk, true),
      (err: unknown) => {
        this.deps.logger.warn(
          { err, reports: chunk.length },
          'local handoff: applying reports failed; their broker copies will be applied',
        );
        this.finished(chunk, false);
      },
    );
  }

  private finished(chunk: Waiting[], committed: boolean): void {
    this.applying = false;
    for (const { report, entry } of chunk) {
      this.setState(report.id, entry, committed ? 'applied' : 'queued');
      // Also when its copy was sorted already: the queue path waits for this answer.
      entry.settle?.(committed);
    }
    if (committed) {
      this.deps.counted?.('applied', chunk.length);
    } else {
      this.deps.counted?.('failed', chunk.length);
      this.close();
    }
    this.pump();
  }

  /** Stops taking reports; those handed over and not yet in a transaction go to the queue. */
  private close(): void {
    if (this.waiting.length > 0) {
      const left = this.waiting.splice(0);
      for (const { report, entry } of left) {
        this.setState(report.id, entry, 'queued');
        entry.settle?.(false);
      }
      this.deps.counted?.('queued', left.length);
    }
    if (!this.isOpen) return;
    this.isOpen = false;
    this.deps.opened?.(false);
    this.scheduleOpen(this.retryMs);
  }

  private scheduleOpen(delayMs: number): void {
    if (this.isOpen || this.stopped || this.opening) return;
    if (this.timer && delayMs > 0) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = null;
      void this.tryOpen();
    }, delayMs);
    this.timer.unref();
  }

  private blocked(): boolean {
    this.expire();
    return this.queued > 0 || this.sorting > 0 || this.applying || this.waiting.length > 0;
  }

  private async tryOpen(): Promise<void> {
    if (this.isOpen || this.stopped || this.opening) return;
    if (this.blocked()) {
      this.scheduleOpen(this.retryMs);
      return;
    }
    this.opening = true;
    let caughtUp = false;
    try {
      caughtUp = await this.deps.caughtUp();
    } catch (err) {
      this.deps.logger.debug({ err }, 'local handoff: asking whether the queue is caught up failed');
    } finally {
      this.opening = false;
    }
    // Checked again: a report may have been left to the queue while the broker answered.
    if (caughtUp && !this.stopped && !this.isOpen && !this.blocked()) {
      this.isOpen = true;
      this.deps.opened?.(true);
      return;
    }
    this.scheduleOpen(this.retryMs);
  }

  /** Forgets reports whose copy did not come in time: another persister consumed it. */
  private expire(): void {
    const before = this.now() - this.expiryMs;
    for (const [id, entry] of this.tracked) {
      if (entry.at > before) break; // in the order handed over: the rest are younger
      if (entry.state !== 'applying') this.untrack(id, entry);
    }
  }
}
