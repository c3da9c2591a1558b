// The aggregator's copy of the decision set: a snapshot read from PostgreSQL, then the decision stream
// applied on top in seq order. Gaps (a purged queue, messages lost before the queue was bound) are filled
// from decision_log; when the log no longer holds them, the snapshot is read again.
import type pg from 'pg';
import { logRowToChange, type LogDbRow } from '@banbus/db';
import { targetFromDb, type DecisionChange } from '@banbus/core';

export interface DecisionEntry {
  readonly target: string;
  /** Epoch milliseconds; null = permanent. */
  readonly expiresAt: number | null;
  readonly reason: string | null;
}

/** Rows fetched per round trip when reading the snapshot or the log (bounded memory at 1M decisions). */
const FETCH_ROWS = 10_000;

export class DecisionState {
  entries = new Map<string, DecisionEntry>();
  seq = 0;
  // Reasons repeat (jail names): one string per distinct reason instead of one per decision.
  private readonly reasons = new Map<string, string>();

  private intern(reason: string | null | undefined): string | null {
    if (reason === null || reason === undefined) return null;
    let kept = this.reasons.get(reason);
    if (kept === undefined) {
      if (this.reasons.size > 100_000) this.reasons.clear();
      kept = reason;
      this.reasons.set(reason, kept);
    }
    return kept;
  }

  put(target: string, expiresAt: number | null, reason: string | null | undefined): void {
    this.entries.set(target, { target, expiresAt, reason: this.intern(reason) });
  }

  /** Applies one change whose seq is exactly the next one (the caller checks order). */
  apply(change: DecisionChange): void {
    if (change.op === 'add') {
      const expires = change.expires_at ? Date.parse(change.expires_at) : null;
      this.put(change.target, expires, change.reason);
    } else {
      this.entries.delete(change.target);
    }
    this.seq = change.seq;
  }

  replace(other: DecisionState): void {
    this.entries = other.entries;
    this.seq = other.seq;
  }
}

interface DecisionDbRow {
  target: string;
  expires_at: Date | null;
  reason: string | null;
}

/**
 * Every decision and the seq they are complete up to, in one REPEATABLE READ transaction: seq N and the
 * decisions table as of N, with nothing in between. Read through a cursor so 1M rows never sit in memory
 * twice.
 */
export async function loadSnapshot(pool: pg.Pool): Promise<DecisionState> {
  const state = new DecisionState();
  const client = await pool.connect();
  try {
    await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
    const { rows } = await client.query<{ last: string }>('SELECT last FROM decision_seq WHERE id = 1');
    state.seq = Number(rows[0]?.last ?? 0);
    await client.query(
      'DECLARE aggregator_snapshot NO SCROLL CURSOR FOR SELECT target::text AS target, expires_at, reason FROM decisions',
    );
    for (;;) {
      const page = await client.query<DecisionDbRow>(`FETCH ${FETCH_ROWS} FROM aggregator_snapshot`);
      for (const r of page.rows) {
        state.put(targetFromDb(r.target), r.expires_at ? r.expires_at.getTime() : null, r.reason);
      }
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
