// The aggregator's copy of the decision set: a snapshot read from PostgreSQL, then the decision stream
// applied on top in seq order. Gaps (a purged queue, messages lost before the queue was bound) are filled
// from decision_log; when the log no longer holds them, the snapshot is read again.
//
// Held in columns, not objects or strings: at 1M decisions an object and a string per decision (plus the
// copies a merge worker got) cost the service over a gigabyte. Here a decision is a slot in typed arrays
// (address words, prefix, expiry), a shared reason string, and an entry in an open-addressing hash table
// keyed by the address itself — about 30 bytes. Target texts are written again from the words on demand.
import type pg from 'pg';
import { logRowToChange, type LogDbRow } from '@banbus/db';
import { rangeText, scanTarget, TARGET_V6, type DecisionChange, type FamilyRanges } from '@banbus/core';

/** Rows fetched per round trip when reading the snapshot or the log (bounded memory at 1M decisions). */
const FETCH_ROWS = 5_000;
/** prefixes[slot] of a slot that holds no decision. */
const FREE = 255;
const EMPTY = -1;
/** Distinct reason texts held before the unused ones are dropped. */
const MAX_REASONS = 100_000;

/**
 * One family's decisions: columns of slots, and a linear-probing hash table from (address, prefix) to slot
 * (deletion by backward shift, so there are no tombstones). Hand-written: no library keys a hash table
 * by a 32- or 128-bit address without an object or a string per entry, which is what this avoids.
 */
class FamilyPool {
  words: Uint32Array;
  prefixes: Uint8Array;
  /** Epoch milliseconds; NaN = permanent. */
  expires: Float64Array;
  /** Index into the set's reason texts; -1 = none. */
  reasons: Int32Array;
  /** Slots ever used: every live slot is below it. */
  high = 0;
  size = 0;
  private readonly free: number[] = [];
  private table: Int32Array;
  private mask: number;

  constructor(
    readonly wordsPer: 1 | 4,
    capacity = 1024,
  ) {
    this.words = new Uint32Array(capacity * wordsPer);
    this.prefixes = new Uint8Array(capacity).fill(FREE);
    this.expires = new Float64Array(capacity);
    this.reasons = new Int32Array(capacity).fill(-1);
    this.table = new Int32Array(capacity * 2).fill(EMPTY);
    this.mask = this.table.length - 1;
  }

  private hash(key: Uint32Array, at: number, prefix: number): number {
    let h = Math.imul(key[at]! ^ (prefix << 24), 0x9e3779b1);
    if (this.wordsPer === 4) {
      h = Math.imul(h ^ key[at + 1]!, 0x85ebca6b);
      h = Math.imul(h ^ key[at + 2]!, 0xc2b2ae35);
      h = Math.imul(h ^ key[at + 3]!, 0x9e3779b1);
    }
    return (h ^ (h >>> 15)) & this.mask;
  }

  private equals(slot: number, key: Uint32Array, prefix: number): boolean {
    if (this.prefixes[slot] !== prefix) return false;
    const at = slot * this.wordsPer;
    for (let w = 0; w < this.wordsPer; w++) if (this.words[at + w] !== key[w]) return false;
    return true;
  }

  /** Table position holding the slot of (key, prefix), or the empty position where it would go. */
  private position(key: Uint32Array, prefix: number): number {
    let i = this.hash(key, 0, prefix);
    for (;;) {
      const slot = this.table[i]!;
      if (slot === EMPTY || this.equals(slot, key, prefix)) return i;
      i = (i + 1) & this.mask;
    }
  }

  /** The slot of (key, prefix), a new one when it is not held. */
  slotFor(key: Uint32Array, prefix: number): number {
    const i = this.position(key, prefix);
    const found = this.table[i]!;
    if (found !== EMPTY) return found;
    const slot = this.free.pop() ?? this.high++;
    if (slot >= this.prefixes.length) this.growSlots();
    for (let w = 0; w < this.wordsPer; w++) this.words[slot * this.wordsPer + w] = key[w]!;
    this.prefixes[slot] = prefix;
    this.table[i] = slot;
    this.size++;
    if (this.size * 2 > this.table.length) this.rehash(this.table.length * 2);
    return slot;
  }

  delete(key: Uint32Array, prefix: number): void {
    let i = this.position(key, prefix);
    const slot = this.table[i]!;
    if (slot === EMPTY) return;
    this.prefixes[slot] = FREE;
    this.reasons[slot] = -1;
    this.free.push(slot);
    this.size--;
    // Backward shift: move later entries of the probe run into the hole when their home allows it.
    let j = i;
    for (;;) {
      j = (j + 1) & this.mask;
      const next = this.table[j]!;
      if (next === EMPTY) break;
      const home = this.hash(this.words, next * this.wordsPer, this.prefixes[next]!);
      // `next` may move to i unless its home lies cyclically in (i, j].
      if (i <= j ? home <= i || home > j : home <= i && home > j) {
        this.table[i] = next;
        i = j;
      }
    }
    this.table[i] = EMPTY;
  }

  private growSlots(): void {
    // ×1.5, not ×2: at a million decisions the next doubling alone would be tens of megabytes idle.
    const capacity = Math.ceil(this.prefixes.length * 1.5);
    const words = new Uint32Array(capacity * this.wordsPer);
    words.set(this.words);
    this.words = words;
    const prefixes = new Uint8Array(capacity).fill(FREE);
    prefixes.set(this.prefixes);
    this.prefixes = prefixes;
    const expires = new Float64Array(capacity);
    expires.set(this.expires);
    this.expires = expires;
    const reasons = new Int32Array(capacity).fill(-1);
    reasons.set(this.reasons);
    this.reasons = reasons;
  }

  private rehash(capacity: number): void {
    this.table = new Int32Array(capacity).fill(EMPTY);
    this.mask = capacity - 1;
    for (let slot = 0; slot < this.high; slot++) {
      const prefix = this.prefixes[slot]!;
      if (prefix === FREE) continue;
      let i = this.hash(this.words, slot * this.wordsPer, prefix);
      while (this.table[i] !== EMPTY) i = (i + 1) & this.mask;
      this.table[i] = slot;
    }
  }

  /** The live slots' addresses, compacted (what a blocklist build needs), into `into` when given. */
  columns(into?: ColumnBuffers): FamilyRanges {
    return this.copy(false, into);
  }

  /** The live slots with their expiry and reason, compacted into new arrays. */
  snapshot(): PoolSnapshot {
    return this.copy(true);
  }

  private copy(details: true): PoolSnapshot;
  private copy(details: false, into?: ColumnBuffers): FamilyRanges;
  private copy(details: boolean, into?: ColumnBuffers): FamilyRanges | PoolSnapshot {
    const n = this.size;
    const words = into
      ? into.words(this.wordsPer === 1 ? 4 : 6, n * this.wordsPer)
      : new Uint32Array(n * this.wordsPer);
    const prefixes = into ? into.prefixes(this.wordsPer === 1 ? 4 : 6, n) : new Uint8Array(n);
    const expires = new Float64Array(details ? n : 0);
    const reasons = new Int32Array(details ? n : 0);
    let k = 0;
    for (let slot = 0; slot < this.high; slot++) {
      const prefix = this.prefixes[slot]!;
      if (prefix === FREE) continue;
      if (this.wordsPer === 1) words[k] = this.words[slot]!;
      else words.set(this.words.subarray(4 * slot, 4 * slot + 4), 4 * k);
      prefixes[k] = prefix;
      if (details) {
        expires[k] = this.expires[slot]!;
        reasons[k] = this.reasons[slot]!;
      }
      k++;
    }
    return details ? { size: k, words, prefixes, expires, reasons } : { size: k, words, prefixes };
  }
}

/** Where a build's columns are written: arrays of at least the asked length, reused between builds. */
export interface ColumnBuffers {
  words(family: 4 | 6, length: number): Uint32Array;
  prefixes(family: 4 | 6, length: number): Uint8Array;
}

interface PoolSnapshot extends FamilyRanges {
  expires: Float64Array;
  reasons: Int32Array;
}

/** One decision as /v1/decisions lists it. */
export interface DecisionEntry {
  target: string;
  /** Epoch milliseconds; null = permanent. */
  expiresAt: number | null;
  reason: string | null;
}

/** The decision set at one seq, frozen: streamed to appliers while the live set moves on. */
export class DecisionSnapshot {
  constructor(
    readonly seq: number,
    private readonly v4: PoolSnapshot,
    private readonly v6: PoolSnapshot,
    /** The reason texts the snapshot's ids point into (the set only ever appends to it). */
    private readonly reasonTexts: readonly string[],
  ) {}

  get size(): number {
    return this.v4.size + this.v6.size;
  }

  /**
   * The decisions as JSON objects (`{"target","expires_at","reason"}`), `per` to a string joined by
   * commas. Written by hand rather than through JSON.stringify of an object per decision: at 1M decisions
   * those objects were most of the garbage a snapshot made. Targets and timestamps need no escaping;
   * reasons are escaped once per distinct text.
   */
  *jsonChunks(per = 2000): Generator<string> {
    const reasonJson = new Map<number, string>();
    let lastMs = NaN;
    let lastIso = 'null';
    let parts: string[] = [];
    for (const [family, pool] of [
      [4, this.v4],
      [6, this.v6],
    ] as const) {
      for (let i = 0; i < pool.size; i++) {
        const ms = pool.expires[i]!;
        if (ms !== lastMs) {
          lastMs = ms;
          lastIso = Number.isNaN(ms) ? 'null' : `"${new Date(ms).toISOString()}"`;
        }
        const id = pool.reasons[i]!;
        let reason = reasonJson.get(id);
        if (reason === undefined) {
          reason = id < 0 ? 'null' : JSON.stringify(this.reasonTexts[id]);
          reasonJson.set(id, reason);
        }
        parts.push(`{"target":"${rangeText(pool, family, i)}","expires_at":${lastIso},"reason":${reason}}`);
        if (parts.length === per) {
          yield parts.join(',');
          parts = [];
        }
      }
    }
    if (parts.length > 0) yield parts.join(',');
  }

  *entries(): Generator<DecisionEntry> {
    for (const [family, pool] of [
      [4, this.v4],
      [6, this.v6],
    ] as const) {
      for (let i = 0; i < pool.size; i++) {
        const expires = pool.expires[i]!;
        yield {
          target: rangeText(pool, family, i),
          expiresAt: Number.isNaN(expires) ? null : expires,
          reason: pool.reasons[i]! < 0 ? null : this.reasonTexts[pool.reasons[i]!]!,
        };
      }
    }
  }
}

export class DecisionSet {
  seq = 0;
  private v4 = new FamilyPool(1);
  private v6 = new FamilyPool(4, 256);
  // Reasons repeat (jail names): each distinct text is stored once and slots hold its index.
  private reasonTexts: string[] = [];
  private reasonIds = new Map<string, number>();
  private readonly key = new Uint32Array(4);

  get size(): number {
    return this.v4.size + this.v6.size;
  }

  private reasonId(reason: string | null | undefined): number {
    if (reason === null || reason === undefined) return -1;
    let id = this.reasonIds.get(reason);
    if (id === undefined) {
      if (this.reasonTexts.length >= MAX_REASONS) this.compactReasons();
      id = this.reasonTexts.length;
      this.reasonTexts.push(reason);
      this.reasonIds.set(reason, id);
    }
    return id;
  }

  /**
   * Drops the texts no decision uses any more, into a new array (a snapshot being streamed keeps the old
   * one). Only reached when reasons are mostly unique, which fail2ban's jail names are not.
   */
  private compactReasons(): void {
    const texts: string[] = [];
    const ids = new Map<string, number>();
    for (const pool of [this.v4, this.v6]) {
      for (let slot = 0; slot < pool.high; slot++) {
        const old = pool.reasons[slot]!;
        if (old < 0 || pool.prefixes[slot] === FREE) continue;
        const text = this.reasonTexts[old]!;
        let id = ids.get(text);
        if (id === undefined) {
          id = texts.push(text) - 1;
          ids.set(text, id);
        }
        pool.reasons[slot] = id;
      }
    }
    this.reasonTexts = texts;
    this.reasonIds = ids;
  }

  /** The pool of `target` with its address in this.key; returns the prefix. Throws TargetError. */
  private locate(target: string): [FamilyPool, number] {
    const scanned = scanTarget(target, this.key, 0);
    return [scanned & TARGET_V6 ? this.v6 : this.v4, scanned & 0xff];
  }

  /** Adds or replaces the decision on `target`. Throws TargetError on a bad target. */
  put(target: string, expiresAt: number | null, reason: string | null | undefined): void {
    const [pool, prefix] = this.locate(target);
    const slot = pool.slotFor(this.key, prefix);
    pool.expires[slot] = expiresAt ?? NaN;
    pool.reasons[slot] = this.reasonId(reason);
  }

  delete(target: string): void {
    const [pool, prefix] = this.locate(target);
    pool.delete(this.key, prefix);
  }

  /** Applies one change whose seq is exactly the next one (the caller checks order). */
  apply(change: DecisionChange): void {
    if (change.op === 'add') {
      const expires = change.expires_at ? Date.parse(change.expires_at) : null;
      this.put(change.target, expires, change.reason);
    } else {
      this.delete(change.target);
    }
    this.seq = change.seq;
  }

  replace(other: DecisionSet): void {
    this.v4 = other.v4;
    this.v6 = other.v6;
    this.reasonTexts = other.reasonTexts;
    this.reasonIds = other.reasonIds;
    this.seq = other.seq;
  }

  /** Both families' targets as compact columns, for a blocklist build. */
  columns(into?: ColumnBuffers): { seq: number; v4: FamilyRanges; v6: FamilyRanges } {
    return { seq: this.seq, v4: this.v4.columns(into), v6: this.v6.columns(into) };
  }

  snapshot(): DecisionSnapshot {
    return new DecisionSnapshot(this.seq, this.v4.snapshot(), this.v6.snapshot(), this.reasonTexts);
  }
}

/**
 * Every decision and the seq they are complete up to, in one REPEATABLE READ transaction: seq N and the
 * decisions table as of N, with nothing in between. Read through a cursor so 1M rows never sit in memory
 * twice.
 */
export async function loadSnapshot(pool: pg.Pool): Promise<DecisionSet> {
  const state = new DecisionSet();
  const client = await pool.connect();
  try {
    await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
    const { rows } = await client.query<{ last: string }>('SELECT last FROM decision_seq WHERE id = 1');
    state.seq = Number(rows[0]?.last ?? 0);
    await client.query(
      // A single address comes as host() ("192.0.2.1", not "192.0.2.1/32"): the canonical text, read
      // without a parse per row.
      `DECLARE aggregator_snapshot NO SCROLL CURSOR FOR
       SELECT CASE WHEN masklen(target) = CASE family(target) WHEN 4 THEN 32 ELSE 128 END
                   THEN host(target) ELSE target::text END AS target,
              (extract(epoch FROM expires_at) * 1000)::float8 AS expires_ms, reason
       FROM decisions`,
    );
    for (;;) {
      // Rows as arrays and the expiry as a number: a million row objects and Dates would be garbage
      // that grows the heap while the snapshot loads.
      const page = await client.query<[string, number | null, string | null]>({
        text: `FETCH ${FETCH_ROWS} FROM aggregator_snapshot`,
        rowMode: 'array',
      });
      for (const [target, expiresMs, reason] of page.rows) state.put(target, expiresMs, reason);
      if (page.rows.length < FETCH_ROWS) break;
    }
    await client.query('COMMIT');
    return state;
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  } finally {
    client.release();
  }
}

/** Logged changes with after < seq ≤ upTo, in seq order, page by page. */
export async function* readLog(
  db: pg.Pool | pg.PoolClient,
  after: number,
  upTo: number,
): AsyncGenerator<DecisionChange[]> {
  let from = after;
  for (;;) {
    const { rows } = await db.query<LogDbRow>(
      `SELECT seq, op, target::text AS target, expires_at, reason FROM decision_log
       WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT ${FETCH_ROWS}`,
      [from, upTo],
    );
    if (rows.length === 0) return;
    const changes = rows.map(logRowToChange);
    yield changes;
    from = changes[changes.length - 1]!.seq;
    if (rows.length < FETCH_ROWS) return;
  }
}

export async function currentSeq(pool: pg.Pool): Promise<number> {
  const { rows } = await pool.query<{ last: string }>('SELECT last FROM decision_seq WHERE id = 1');
  return Number(rows[0]?.last ?? 0);
}
