// The outbox relay: gets every decision change onto `<ns>.decisions` in seq order, at least once.
//
// One persister process relays at a time: the one holding the relay lease (a PostgreSQL advisory lock on
// its LISTEN connection, see index.ts). The others only write; the leader hears of their commits by
// NOTIFY and publishes them with a round. A single publisher keeps the stream free of duplicates, and
// lets the leader publish its own commits without reading them back.
//
// Two paths. The direct one: the changes a batch of this process just committed are handed to the bus at
// once, as long as they continue exactly what this process handed over last (one channel keeps them in
// order behind it). No read of decision_log, no lock, no waiting for the confirm before the next batch's
// changes go out; the cursor (decision_relay.published_seq) is saved afterwards, every CURSOR_SAVE_MS.
// The round: lock the cursor, read decision_log after it, publish, wait for the confirm, move the cursor.
// It runs whenever the direct path cannot: at start, for another process's commits (NOTIFY), for sweeps
// and allowlist lifts, after a failed publish, and every few seconds as a fallback.
//
// Why consumers never see a gap: a change goes out directly only when the seq before it was handed to the
// same channel earlier; a round starts after a seq that is confirmed. Both paths may send a change twice
// (a round reading what was just sent directly, a crash before the cursor was saved): consumers apply
// each seq once.
import type { DecisionChange } from '@banbus/core';
import type { RelayResult } from '@banbus/db';
import { CoalescedTask, type Logger } from '@banbus/runtime';

export interface RelayDeps {
  /** Hands changes to the bus in order; resolves once the broker confirmed them. */
  publish(changes: DecisionChange[]): Promise<void>;
  /** One locked round from max(cursor, after), publishing through `publish` (DecisionStore.relay). */
  round(publish: (changes: DecisionChange[]) => Promise<void>, after: number): Promise<RelayResult>;
  /** Moves the cursor forward to seq (DecisionStore.saveRelayCursor). */
  saveCursor(seq: number): Promise<void>;
  /** False while the bus is away: the round then waits for the 'connected' trigger. */
  connected(): boolean;
  logger: Logger;
  /** Counts relayed changes by path. */
  relayed?(path: 'direct' | 'round', n: number): void;
}

export interface RelayOptions {
  /** How long a confirmed direct publish may wait before the cursor is saved (ms). */
  cursorSaveMs?: number;
}

const CURSOR_SAVE_MS = 200;

interface InFlight {
  last: number;
  confirmed: boolean;
}

export class DecisionRelay {
  /** Every seq up to here was handed to the bus in order (or confirmed); null until a round started the line. */
  private handed: number | null = null;
  /** Every seq up to here is confirmed by the broker. */
  private confirmed = 0;
  /** The cursor as last saved or read by a round. */
  private saved = 0;
  /** Direct publishes waiting for their confirm, in the order they were handed over. */
  private inFlight: InFlight[] = [];
  /** Every direct publish not settled yet, of any generation (a round waits for them). */
  private readonly unsettled = new Set<Promise<void>>();
  /** Own seqs written but maybe not committed yet: their NOTIFY needs no round. */
  private ownSeq = 0;
  private readonly rounds: CoalescedTask;
  private readonly cursorSaver: CoalescedTask;
  private saveTimer: NodeJS.Timeout | undefined;
  private readonly cursorSaveMs: number;
  private stopped = false;
  private leader = false;
  /** A round is reading and publishing: changes committed meanwhile go with it, not directly. */
  private inRound = false;

  constructor(
    private readonly deps: RelayDeps,
    options: RelayOptions = {},
  ) {
    this.cursorSaveMs = options.cursorSaveMs ?? CURSOR_SAVE_MS;
    this.rounds = new CoalescedTask(
      () => this.runRound(),
      (err) => deps.logger.warn({ err }, 'relaying decision changes failed; retrying on the next trigger'),
    );
    this.cursorSaver = new CoalescedTask(
      () => this.saveCursor(),
      (err) => deps.logger.debug({ err }, 'saving the relay cursor failed; saved with the next change'),
    );
  }

  /** The highest seq handed to the bus (tests, metrics). */
  get handedSeq(): number {
    return this.handed ?? 0;
  }

  /** The highest seq up to which the broker confirmed everything. */
  get confirmedSeq(): number {
    return this.confirmed;
  }

  /** Whether this process holds the relay lease. */
  get isLeader(): boolean {
    return this.leader;
  }

  /**
   * This process got (true) or lost (false) the relay lease. Getting it runs a round; the direct path
   * resumes after it. After losing it, another process may publish: nothing goes out from here, and what
   * is in flight no longer moves the line on.
   */
  setLeader(leader: boolean): void {
    if (leader === this.leader) return;
    this.leader = leader;
    this.inFlight = [];
    this.handed = null;
    this.deps.logger.info(
      { leader },
      leader ? 'relaying decision changes' : 'no longer relaying decision changes',
    );
    if (leader) void this.rounds.trigger();
  }

  /** This process wrote changes up to seq (not committed yet): a NOTIFY for it is ours. */
  logged(seq: number): void {
    if (seq > this.ownSeq) this.ownSeq = seq;
  }

  /** This process committed these changes (consecutive seqs, as DecisionStore returns them). */
  committed(changes: readonly DecisionChange[]): void {
    if (changes.length === 0 || this.stopped || !this.leader) return;
    const first = changes[0]!.seq;
    const last = changes[changes.length - 1]!.seq;
    if (last > this.ownSeq) this.ownSeq = last;
    if (this.handed !== null && last <= this.handed) return; // a round already sent them
    // While a round runs, its read may already hold these changes: sent directly as well, they would go
    // out twice. The round runs once more after this one and takes them (CoalescedTask).
    if (!this.inRound && this.handed !== null && first === this.handed + 1 && this.deps.connected()) {
      this.hand([...changes]);
      return;
    }
    void this.rounds.trigger();
  }

  /** Someone committed up to seq (NOTIFY payload, or a sweep of our own): a round unless we sent it. */
  notified(seq: number): void {
    if (!this.leader) return;
    if (Number.isFinite(seq) && seq > 0 && (seq <= (this.handed ?? 0) || seq <= this.ownSeq)) return;
    void this.rounds.trigger();
  }

  /** Runs a round now (coalesced with one in progress); resolves when it finished. */
  round(): Promise<void> {
    return this.rounds.trigger();
  }

  /** No more direct publishes; waits for what is in flight, runs a last round and saves the cursor. */
  async stop(): Promise<void> {
    this.stopped = true;
    await this.settle();
    await this.rounds.trigger();
    await this.rounds.stop();
    clearTimeout(this.saveTimer);
    await this.cursorSaver.trigger();
    await this.cursorSaver.stop();
  }

  private hand(changes: DecisionChange[]): void {
    const entry: InFlight = { last: changes[changes.length - 1]!.seq, confirmed: false };
    this.handed = entry.last;
    const generation = this.inFlight;
    generation.push(entry);
    const sent = this.deps.publish(changes);
    this.unsettled.add(sent);
    this.deps.relayed?.('direct', changes.length);
    sent.then(
      () => {
        this.unsettled.delete(sent);
        if (generation !== this.inFlight) return; // a failure before it reset the line
        entry.confirmed = true;
        while (generation[0]?.confirmed) {
          const done = generation.shift()!;
          if (done.last > this.confirmed) this.confirmed = done.last;
        }
        this.scheduleCursorSave();
      },
      (err: unknown) => {
        this.unsettled.delete(sent);
        if (generation !== this.inFlight) return;
        // What follows the last confirmed seq is unknown now: a round starts the line again from there.
        this.inFlight = [];
        this.handed = null;
        this.deps.logger.warn(
          { err, from: this.confirmed + 1 },
          'publishing decision changes failed; a relay round sends them again',
        );
        void this.rounds.trigger();
      },
    );
  }

  private async settle(): Promise<void> {
    while (this.unsettled.size > 0) await Promise.allSettled([...this.unsettled]);
  }

  private async runRound(): Promise<void> {
    if (!this.leader) return;
    if (!this.deps.connected()) return; // the 'connected' event triggers the next round
    // Direct publishes still in flight end first: the round then starts after what they confirmed and
    // does not send them again.
    this.inRound = true;
    let result: RelayResult;
    try {
      await this.settle();
      result = await this.deps.round(async (changes) => {
        await this.deps.publish(changes);
        this.deps.relayed?.('round', changes.length);
      }, this.confirmed);
    } finally {
      this.inRound = false;
    }
    // Everything up to the round's position is confirmed.
    if (result.cursor > this.saved) this.saved = result.cursor;
    if (!this.leader) return; // lost the lease meanwhile: the line starts again with the next lease
    if (result.position > this.confirmed) this.confirmed = result.position;
    if (this.handed === null || result.position > this.handed) {
      // Direct publishes handed during the round were all below it; the line continues after it.
      this.inFlight = [];
      this.handed = result.position;
    }
    if (result.published > 0)
      this.deps.logger.debug({ published: result.published }, 'relayed decision changes');
    this.scheduleCursorSave();
  }

  private scheduleCursorSave(): void {
    if (this.saveTimer !== undefined || this.confirmed <= this.saved) return;
    this.saveTimer = setTimeout(() => {
      this.saveTimer = undefined;
      void this.cursorSaver.trigger();
    }, this.cursorSaveMs);
    this.saveTimer.unref();
  }

  private async saveCursor(): Promise<void> {
    const seq = this.confirmed;
    if (seq <= this.saved) return;
    await this.deps.saveCursor(seq);
    if (seq > this.saved) this.saved = seq;
  }
}
