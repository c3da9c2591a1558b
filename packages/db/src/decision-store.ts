// The persister's side of PostgreSQL: reports in, decisions and the decision log out. SQL lives here; the
// rules that turn reports into decisions are passed in (services/persister/src/engine.ts), so this file
// only loads state, runs them and writes the result with set-based statements.
//
// Every mutation of decisions first takes the row lock of decision_seq (`SELECT … FOR UPDATE`). That one
// lock serializes all decision changes across any number of persisters, so seqs are allocated gap-free
// and transactions commit in seq order: what the relay has not published yet is always the rows after one
// seq, which is what lets it keep a single cursor (decision_relay) and publish in order.
import { createHash } from 'node:crypto';
import type pg from 'pg';
import { targetFromDb, type Decision, type DecisionChange, type Origin, type Report } from '@banbus/core';
import type { Logger } from '@banbus/runtime';
import { CHANNELS } from './channels.js';

export interface ActiveBan {
  target: string;
  host: string;
  /** '' when the report named no jail. */
  jail: string;
  origin: Origin;
  reportId: string;
  bannedAt: Date;
  expiresAt: Date | null;
}

export interface DecisionRow {
  target: string;
  origin: Origin;
  firstSeen: Date;
  lastSeen: Date;
  expiresAt: Date | null;
  reporters: number;
  banCount: number;
  reason: string | null;
}

export interface OffenderRow {
  target: string;
  banCount: number;
  lastBannedAt: Date;
}

/** The rows of the targets one transaction works on. */
export interface DecisionState {
  activeBans: readonly ActiveBan[];
  decisions: readonly DecisionRow[];
  offenders: readonly OffenderRow[];
}

export interface ChangeDraft {
  op: 'add' | 'del';
  target: string;
  expiresAt: Date | null;
  reason: string | null;
}

export interface ReportOutcome {
  id: string;
  outcome: string;
}

/** Net writes of one transaction; keys never repeat within one list. */
export interface DecisionWrites {
  outcomes: ReportOutcome[];
  activeBanUpserts: ActiveBan[];
  activeBanDeletes: { target: string; host: string; jail: string }[];
  decisionUpserts: DecisionRow[];
  decisionDeletes: string[];
  offenderUpserts: OffenderRow[];
  /** In the order seqs are to be given. */
  changes: ChangeDraft[];
}

/** The decision rules (the persister's engine). Pure functions of the loaded state. */
export interface DecisionRules {
  /** Targets whose rows a batch needs; `networks` also load every target inside them (manual network unbans). */
  plan(reports: readonly Report[]): { targets: string[]; networks: string[] };
  decide(
    reports: readonly Report[],
    state: DecisionState,
    allowlist: readonly string[],
    now: Date,
  ): DecisionWrites;
  /** Ends the bans expired at `now`. */
  expire(state: DecisionState, now: Date): DecisionWrites;
  /** Ends the bans and decisions overlapping the allowlist. */
  lift(state: DecisionState, allowlist: readonly string[], now: Date): DecisionWrites;
}

export interface ApplyResult {
  /** Reports in the batch that were new (duplicates of already stored ids are skipped). */
  applied: number;
  duplicates: number;
  outcomes: ReportOutcome[];
  /** Decision changes logged; their seqs are firstSeq..lastSeq. */
  changes: number;
  lastSeq: number | null;
  /**
   * The changes logged, with their seqs, exactly as the relay reads them back from decision_log: what
   * the persister publishes right after the commit without reading the log (services/persister/src/relay.ts).
   */
  logged: DecisionChange[];
}

/** Where a relay round left the cursor. */
export interface RelayResult {
  /** Changes published by the round. */
  published: number;
  /** Every seq up to here is confirmed published: the last one this round published, or where it started. */
  position: number;
  /** decision_relay.published_seq as the round left it (behind `position` when `after` was further). */
  cursor: number;
}

export interface ChangeResult {
  changes: number;
  lastSeq: number | null;
}

export interface DecisionStoreOptions {
  logger?: Logger;
  /** Rows per relay round (one publish + one UPDATE each). */
  relayBatchSize?: number;
  /** Expired targets handled per sweep transaction. */
  sweepBatchSize?: number;
  /**
   * Called with the last seq a batch will log, just before its write and COMMIT are sent. The NOTIFY of
   * that commit may reach the persister's listener before the COMMIT's answer reaches the batch; this lets
   * it recognize the seq as its own.
   */
  onLogged?: (lastSeq: number) => void;
  /** A batch's preload was current when the lock came (used) or was loaded again under it (redone). */
  onPreload?: (result: 'used' | 'redone') => void;
}

/** A decisions row as selected with `target::text AS target`, before it becomes a DecisionRow. */
export interface DecisionTableRow {
  target: string;
  origin: Origin;
  first_seen: Date;
  last_seen: Date;
  expires_at: Date | null;
  reporters: number;
  ban_count: number;
  reason: string | null;
}
/** A decision_log row as selected with `target::text AS target`. */
export interface LogDbRow {
  seq: string;
  op: 'add' | 'del';
  target: string;
  expires_at: Date | null;
  reason: string | null;
}

const DECISION_COLUMNS =
  'target::text AS target, origin, first_seen, last_seen, expires_at, reporters, ban_count, reason';

/** The DecisionChange a decision_log row stands for, as it travels on the stream. */
export function logRowToChange(r: LogDbRow): DecisionChange {
  const seq = Number(r.seq);
  const target = targetFromDb(r.target);
  if (r.op === 'del') return { seq, op: 'del', target };
  return {
    seq,
    op: 'add',
    target,
    expires_at: r.expires_at ? r.expires_at.toISOString() : null,
    reason: r.reason,
  };
}

/**
 * How decision transactions begin. The planner settings make every statement of these transactions touch
 * only the rows it names, whatever the table statistics say (young tables have none):
 * - `target = ANY($1::cidr[])` (500 targets) was planned as a sequential scan on tables of some ten
 *   thousand rows (5 ms per table per batch, growing with the table), or as a bitmap scan of the
 *   decisions' containment index, which supports `=` too (73 ms instead of 1 ms with GiST). With
 *   sequential and bitmap scans off only a plain index scan is left, and neither GiST nor SP-GiST runs
 *   `= ANY` as one: the btree primary key it is.
 * - `UPDATE … FROM unnest(…)` was planned as a hash join over a sequential scan of the whole table; with
 *   hash and merge joins off it is a nested loop probing the primary key per row.
 * - JIT off: disabled plan types are priced prohibitively, which pushes plan costs over jit_above_cost
 *   and made PostgreSQL spend 40–150 ms compiling each statement.
 * Tables without a usable index (allowlist, a few rows) are still scanned: the settings only penalize.
 */
const DECISION_TX_START =
  'BEGIN; SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off; SET LOCAL enable_hashjoin = off; ' +
  'SET LOCAL enable_mergejoin = off; SET LOCAL jit = off; SET LOCAL standard_conforming_strings = on; ' +
  'SET LOCAL plan_cache_mode = force_generic_plan';
/** Statements in DECISION_TX_START: the lock's answer follows theirs. */
const DECISION_TX_STATEMENTS = DECISION_TX_START.split(';').length;
/**
 * The decision lock (see the top of this file), sent with DECISION_TX_START: one round trip for both. It
 * reads the database clock under the lock as epoch milliseconds (what the Date the engine works with
 * holds) and keeps that value in the transaction's `banbus.now` setting, so that a statement sent in the
 * same round trip can use the same instant (LOCK_NOW). `version` is the xmin of decision_seq's row: every
 * transaction that writes decision state also updates that row (buildWrite), so the version changes with
 * each such commit, and state read earlier is still current while the version is the one it was read at
 * (see the preload in applyReports).
 */
const DECISION_LOCK =
  "SELECT last, set_config('banbus.now', trunc(extract(epoch FROM clock_timestamp()) * 1000)::int8::text, true) AS now, " +
  'xmin::text AS version FROM decision_seq WHERE id = 1 FOR UPDATE';
/** The `now` of DECISION_LOCK, as a timestamptz expression. */
const LOCK_NOW = "('epoch'::timestamptz + current_setting('banbus.now')::int8 * interval '1 millisecond')";

/** What a transaction's work may do besides querying. */
interface Tx {
  /**
   * Sends `sql` (statements without parameters) and COMMIT in one round trip and returns the rows of the
   * last statement of `sql`; the transaction is committed when it resolves. Nothing may be sent after it.
   */
  commitWith<R extends pg.QueryResultRow>(sql: string): Promise<R[]>;
}

/**
 * Runs `work` in a transaction opened by `begin` (which may carry more statements; their results are
 * passed on) and commits it, unless `work` did (Tx.commitWith). `ready`, when given, is awaited after
 * connecting and before `begin` is sent.
 */
async function inTransaction<T, B = unknown>(
  pool: pg.Pool,
  begin: string | ((client: pg.PoolClient) => string),
  work: (client: pg.PoolClient, begun: B, tx: Tx) => Promise<T>,
  ready?: Promise<void>,
): Promise<T> {
  const client = await pool.connect();
  let broken = false;
  let begun = false;
  let committed = false;
  const tx: Tx = {
    async commitWith<R extends pg.QueryResultRow>(sql: string): Promise<R[]> {
      committed = true;
      const results = (await client.query(`${sql}; COMMIT`)) as unknown as pg.QueryResult<R>[];
      return results[results.length - 2]!.rows;
    },
  };
  try {
    await ready;
    begun = true;
    const text = typeof begin === 'string' ? begin : begin(client);
    const result = await work(client, (await client.query(text)) as unknown as B, tx);
    if (!committed) await client.query('COMMIT');
    return result;
  } catch (err) {
    // Which of the statements prepared on this connection exist now is unknown (PREPARE outlives a
    // rolled-back transaction, and a failed round trip may have stopped before it): a new connection
    // starts clean.
    if (PREPARED.forget(client)) broken = true;
    if (begun) {
      try {
        await client.query('ROLLBACK');
      } catch {
        // The connection is gone; do not return it to the pool.
        broken = true;
      }
    }
    throw err;
  } finally {
    client.release(broken);
  }
}

/** DECISION_LOCK's row. */
interface LockRow {
  last: string;
  now: string;
  version: string;
}

/** What a decision transaction learns when it gets the lock. */
interface Locked {
  /** The database clock, read under the lock. */
  now: Date;
  /** The last seq given so far: this transaction's changes get the ones after it. */
  lastSeq: number;
  /** decision_seq's row version when the lock was granted (see DECISION_LOCK). */
  version: string;
  /** The rows of `then`, when one was sent. */
  thenRows?: unknown[];
  tx: Tx;
}

/**
 * Runs `work` in a transaction that holds the decision lock.
 * `ready`, when given, is awaited after connecting and before the lock is asked for (see TurnQueue).
 * `then`, a statement without parameters, is sent in the same round trip and runs once the lock is held
 * (in a statement of its own, so it sees everything committed before); `work` gets its rows.
 */
function inDecisionTransaction<T>(
  pool: pg.Pool,
  work: (client: pg.PoolClient, locked: Locked) => Promise<T>,
  ready?: Promise<void>,
  then?: (client: pg.PoolClient) => string,
): Promise<T> {
  // A multi-statement string answers with one result per statement: the lock's is the last, or the one
  // before `then`'s (which, prepared, may be a PREPARE and an EXECUTE: the EXECUTE answers last).
  return inTransaction<T, pg.QueryResult[]>(
    pool,
    then === undefined
      ? `${DECISION_TX_START}; ${DECISION_LOCK}`
      : (client) => `${DECISION_TX_START}; ${DECISION_LOCK}; ${then(client)}`,
    (client, results, tx) => {
      // BEGIN and the SET LOCALs answer first, then the lock.
      const lock = results[DECISION_TX_STATEMENTS]!.rows[0] as LockRow;
      return work(client, {
        now: new Date(Number(lock.now)),
        lastSeq: Number(lock.last),
        version: lock.version,
        thenRows: then === undefined ? undefined : results[results.length - 1]!.rows,
        tx,
      });
    },
    ready,
  );
}

/**
 * Keeps batches in the order they were handed over while letting them overlap: a batch may connect and
 * prepare while the one before it works, and asks for the decision lock once that one has sent its write
 * and COMMIT (it then waits in PostgreSQL's lock queue and gets the lock the moment the other commits). A
 * batch whose predecessor failed fails with the same error instead of applying: applied, it would overtake
 * reports that come back later (a ban and the unban after it would end up reversed). A predecessor that
 * fails after sending its write (the write refused, the connection lost) released the lock by rolling back,
 * so the batch behind checks, once it holds the lock and before it writes anything, that its predecessor
 * committed (`committed`).
 *
 * A turn also tells the next one what it works on (`claims`) and the versions of decision_seq's row it saw
 * at its lock and left at its commit, for the preload (see applyReports).
 */
class TurnQueue {
  /** The latest turn: `sent` settles when its batch sent its write (null) or failed ({err}), `finished`
   *  when it committed (null) or failed. */
  private last: Turn = {
    sent: Promise.resolve(null),
    finished: Promise.resolve(null),
    done: true,
    claims: { targets: new Set(), ids: new Set() },
    locked: Promise.resolve(null),
    endVersion: null,
  };

  take(claims: Claims): {
    ready: Promise<void>;
    committed(): Promise<void>;
    sent(): void;
    finish(err?: unknown): void;
    /** The turn before this one while it has not finished: what it claims, and its versions. */
    previous: PreviousTurn | null;
    /** This turn holds the lock; `version` as DECISION_LOCK read it. */
    locked(version: string): void;
    /** This turn's write returned decision_seq's new row version (it commits with the write). */
    wrote(version: string): void;
  } {
    const previous = this.last;
    let settleSent!: (outcome: { err: unknown } | null) => void;
    let settleFinished!: (outcome: { err: unknown } | null) => void;
    let settleLocked!: (version: string | null) => void;
    const mine: Turn = {
      sent: new Promise((resolve) => (settleSent = resolve)),
      finished: new Promise((resolve) => (settleFinished = resolve)),
      done: false,
      claims,
      locked: new Promise((resolve) => (settleLocked = resolve)),
      endVersion: null,
    };
    this.last = mine;
    let sent = false;
    let lockVersion: string | null = null;
    const markSent = (outcome: { err: unknown } | null) => {
      if (sent) return; // first call wins: a batch that sent its write released the next one already
      sent = true;
      settleSent(outcome);
    };
    const finish = (outcome: { err: unknown } | null) => {
      if (mine.done) return;
      mine.done = true;
      // Never locked (failed before): whoever waits for the lock learns it will not come.
      settleLocked(null);
      // Committed without a write (every report a duplicate): the row is as the lock found it.
      if (outcome === null && mine.endVersion === null) mine.endVersion = lockVersion;
      markSent(outcome);
      settleFinished(outcome);
    };
    // Only a failure the batch was waiting for is passed on: once a failure is over, new batches (the
    // retries among them) start afresh.
    const passOn = (outcome: Promise<{ err: unknown } | null>) =>
      outcome.then((failed) => {
        if (failed) {
          finish(failed);
          throw failed.err;
        }
      });
    const waiting = !previous.done;
    const ready = waiting ? passOn(previous.sent) : Promise.resolve();
    // Rejections of `ready` are the caller's to handle; the queue itself must not leave one unhandled.
    ready.catch(() => undefined);
    return {
      ready,
      committed: () => (waiting ? passOn(previous.finished) : Promise.resolve()),
      sent: () => markSent(null),
      finish: (err?: unknown) => finish(err === undefined ? null : { err }),
      previous: waiting
        ? { claims: previous.claims, locked: previous.locked, endVersion: () => previous.endVersion }
        : null,
      locked: (version) => {
        lockVersion = version;
        settleLocked(version);
      },
      wrote: (version) => {
        mine.endVersion = version;
      },
    };
  }
}

/**
 * Smallest batch (in targets) that preloads. A small batch's load takes PostgreSQL a fraction of a
 * millisecond, not worth a round trip of its own for both sides; at 500 single reports/s the transactions
 * hold one or two reports each and keep loading with the lock.
 */
const PRELOAD_MIN_TARGETS = 100;

function disjoint(a: Claims, b: Claims): boolean {
  for (const t of a.targets) if (b.targets.has(t)) return false;
  for (const id of a.ids) if (b.ids.has(id)) return false;
  return true;
}

/** The targets and report ids a batch reads and writes. */
interface Claims {
  targets: ReadonlySet<string>;
  ids: ReadonlySet<string>;
}

interface PreviousTurn {
  claims: Claims;
  /** Resolves with the row version its lock read, or null if it finished without taking the lock. */
  locked: Promise<string | null>;
  /** The row version it committed (known once it finished; null before, or if it failed). */
  endVersion(): string | null;
}

interface Turn {
  sent: Promise<{ err: unknown } | null>;
  finished: Promise<{ err: unknown } | null>;
  done: boolean;
  claims: Claims;
  locked: Promise<string | null>;
  endVersion: string | null;
}

async function activeAllowlist(client: pg.PoolClient, now: Date): Promise<string[]> {
  const { rows } = await client.query<{ network: string }>(
    'SELECT network::text AS network FROM allowlist WHERE expires_at IS NULL OR expires_at > $1',
    [now],
  );
  return rows.map((r) => targetFromDb(r.network));
}

/** The rows a decision transaction works on, with their physical addresses (ctid) for the writes. */
interface Loaded {
  state: DecisionState;
  allowlist: string[];
  /** Ids of the batch's reports stored already (only when the load was asked with ids). */
  known: string[];
  /** 'b' + target/host/jail, 'd' + target, 'o' + target → ctid. */
  ctids: Map<string, string>;
}

const banCtidKey = (b: { target: string; host: string; jail: string }) =>
  `b${b.target}\u0000${b.host}\u0000${b.jail}`;

/**
 * The loaded rows travel as one JSON text per table, built by concatenation and string_agg: with
 * json_agg(json_build_array(…)) rendering cost about 2 µs per row on top of reading it (4,000 active bans:
 * ~15 ms against ~5 ms to read them), and a batch of repeat offenders loads a few thousand rows while it
 * holds the decision lock. Only free text goes through to_json (escaping); ctids, targets, uuids and
 * integers need none. Timestamps go as epoch milliseconds (what a Date holds; every stored instant came
 * from one, so rounding the float epoch is exact), which are also cheaper to render than ISO text and to
 * turn into a Date.
 */
const jsonText = (column: string) => `coalesce(to_json(${column})::text, 'null')`;
const epochMs = (column: string) =>
  `coalesce(round(date_part('epoch', ${column}) * 1000)::int8::text, 'null')`;
const jsonRows = (rowText: string) => `coalesce('[' || string_agg(${rowText}, ',') || ']', '[]')`;

/**
 * Loads the rows of `targets` (exact) and of every target inside `networks`, in one round trip (the
 * target array is sent and parsed once), with the active allowlist. Rows are updated and deleted later
 * by ctid: under the decision lock nobody else changes them, so the addresses stay valid, and a TID scan
 * avoids planner trouble (an equality probe planned on the decisions' GiST index cost ~50 µs per row).
 */
async function loadState(
  client: pg.PoolClient,
  now: Date,
  targets: readonly string[],
  networks: readonly string[] = [],
  ids?: readonly string[],
): Promise<Loaded> {
  const all = new Set(targets);
  // Manual unbans of networks are rare: one query per network keeps `<<=` on the primary key's range
  // (PostgreSQL turns `target <<= $1` into a btree range when $1 is known at planning).
  for (const network of networks) {
    const { rows } = await client.query<{ target: string }>(
      `SELECT target::text AS target FROM active_bans WHERE target <<= $1::cidr
       UNION SELECT target::text FROM decisions WHERE target <<= $1::cidr`,
      [network],
    );
    for (const r of rows) all.add(targetFromDb(r.target));
  }
  const { rows } = await client.query<LoadedRow>(
    loadStatement('$1::cidr[]', '$2::timestamptz', ids === undefined ? undefined : '$3::uuid[]'),
    ids === undefined ? [[...all], now] : [[...all], now, ids],
  );
  return parseLoaded(rows[0]!);
}

interface LoadedRow {
  bans: string;
  decisions: string;
  offenders: string;
  allowlist: string[];
  /** A preload's allowlist instead: each entry with its end (epoch ms), or null for none. */
  allowlist_until?: [string, number | null][];
  /** A preload's version of decision_seq's row. */
  version?: string;
  /** Ids of the batch's reports stored already (when the load asked). */
  known?: string[];
}

/**
 * The load of loadState: `targets` and `now` are SQL expressions (parameters, or the inlined values).
 * With `ids` (uuid[]), also which of those reports are stored already (`known`).
 */
function loadStatement(targets: string, now: string, ids?: string, preload = false): string {
  const known =
    ids === undefined
      ? ''
      : `,
       (SELECT coalesce(json_agg(id::text), '[]') FROM reports WHERE id = ANY(${ids})) AS known`;
  // A preload does not know the `now` of its lock yet: the allowlist comes with each entry's end, to be
  // filtered then, and with the version of decision_seq's row its snapshot saw.
  const allowlist = preload
    ? `(SELECT coalesce(json_agg(json_build_array(network::text, round(date_part('epoch', expires_at) * 1000))), '[]')
          FROM allowlist WHERE expires_at IS NULL OR expires_at > ${now}) AS allowlist_until,
       (SELECT xmin::text FROM decision_seq WHERE id = 1) AS version`
    : `(SELECT coalesce(json_agg(network::text), '[]')
          FROM allowlist WHERE expires_at IS NULL OR expires_at > ${now}) AS allowlist`;
  return `SELECT
       (SELECT ${jsonRows(
         `'["' || ctid::text || '","' || target::text || '",' || ${jsonText('host')} || ',' || ${jsonText('jail')}
          || ',' || ${jsonText('origin')} || ',"' || report_id::text || '",' || ${epochMs('banned_at')} || ','
          || ${epochMs('expires_at')} || ']'`,
       )} FROM active_bans WHERE target = ANY(${targets})) AS bans,
       (SELECT ${jsonRows(
         `'["' || ctid::text || '","' || target::text || '",' || ${jsonText('origin')} || ',' || ${epochMs('first_seen')}
          || ',' || ${epochMs('last_seen')} || ',' || ${epochMs('expires_at')} || ',' || reporters::text || ','
          || ban_count::text || ',' || ${jsonText('reason')} || ']'`,
       )} FROM decisions WHERE target = ANY(${targets})) AS decisions,
       (SELECT ${jsonRows(
         `'["' || ctid::text || '","' || target::text || '",' || ban_count::text || ',' || ${epochMs('last_banned_at')}
          || ']'`,
       )} FROM offenders WHERE target = ANY(${targets})) AS offenders,
       ${allowlist}${known}`;
}

/** A preload's allowlist as of `now` (the lock's). */
function allowlistAt(row: LoadedRow, now: Date): string[] {
  const at = now.getTime();
  return (row.allowlist_until ?? [])
    .filter(([, until]) => until === null || until > at)
    .map(([network]) => targetFromDb(network));
}

function parseLoaded(row: LoadedRow): Loaded {
  const ctids = new Map<string, string>();
  const date = (v: number | null) => (v === null ? null : new Date(v));
  const banRows = JSON.parse(row.bans) as [
    string,
    string,
    string,
    string,
    Origin,
    string,
    number,
    number | null,
  ][];
  const activeBans = banRows.map(([ctid, target, host, jail, origin, reportId, bannedAt, expiresAt]) => {
    const ban: ActiveBan = {
      target: targetFromDb(target),
      host,
      jail,
      origin,
      reportId,
      bannedAt: new Date(bannedAt),
      expiresAt: date(expiresAt),
    };
    ctids.set(banCtidKey(ban), ctid);
    return ban;
  });
  const decisionRows = JSON.parse(row.decisions) as [
    string,
    string,
    Origin,
    number,
    number,
    number | null,
    number,
    number,
    string | null,
  ][];
  const decisions = decisionRows.map(
    ([ctid, target, origin, firstSeen, lastSeen, expiresAt, reporters, banCount, reason]): DecisionRow => {
      const t = targetFromDb(target);
      ctids.set(`d${t}`, ctid);
      return {
        target: t,
        origin,
        firstSeen: new Date(firstSeen),
        lastSeen: new Date(lastSeen),
        expiresAt: date(expiresAt),
        reporters,
        banCount,
        reason,
      };
    },
  );
  const offenderRows = JSON.parse(row.offenders) as [string, string, number, number][];
  const offenders = offenderRows.map(([ctid, target, banCount, lastBannedAt]): OffenderRow => {
    const t = targetFromDb(target);
    ctids.set(`o${t}`, ctid);
    return { target: t, banCount, lastBannedAt: new Date(lastBannedAt) };
  });
  return {
    state: { activeBans, decisions, offenders },
    allowlist: row.allowlist.map(targetFromDb),
    known: row.known ?? [],
    ctids,
  };
}

/**
 * The load of a batch's targets, and which of its report ids are stored already, as a statement without
 * parameters, to be sent with the lock (one round trip less while the lock is held); undefined when a
 * target or id is not plain address or uuid text (then the load is sent on its own, with parameters).
 * Targets are canonical addresses and networks and ids uuids (the schemas), so this never happens today.
 */
function inlineLoad(
  targets: readonly string[],
  ids: readonly string[],
  statement = LOAD_STATEMENT,
): ((client: pg.PoolClient) => string) | undefined {
  if (!targets.every((t) => /^[0-9A-Fa-f:./]+$/.test(t))) return undefined;
  if (!ids.every((id) => /^[0-9A-Fa-f-]+$/.test(id))) return undefined;
  const args = [`'{${targets.join(',')}}'`, `'{${ids.join(',')}}'`];
  return (client) => PREPARED.execute(client, statement, args);
}

/** The load with the known-ids check, prepared once per connection (see PreparedStatements). */
const LOAD_STATEMENT = loadStatement('$1::cidr[]', LOCK_NOW, '$2::uuid[]');
/** The same load before the lock (see applyReports). */
const PRELOAD_STATEMENT = loadStatement('$1::cidr[]', 'clock_timestamp()', '$2::uuid[]', true);

/**
 * Statements that decision transactions run by EXECUTE, each PREPAREd on a connection the first time it
 * is used there. Inside a multi-statement round trip (the lock's, the write's with its COMMIT) a statement
 * cannot have parameters, and planning the load and the write anew each time cost PostgreSQL about half a
 * millisecond each, a quarter of a core at a few hundred transactions a second. With plan_cache_mode =
 * force_generic_plan (DECISION_TX_START) each is planned once per connection. Write statements differ
 * by which of their parts a batch needs, so they are named by their text.
 */
class PreparedStatements {
  private readonly byClient = new WeakMap<pg.ClientBase, Set<string>>();
  private readonly names = new Map<string, string>();

  /** `EXECUTE` of `text` with `args` (SQL literals), preceded by its PREPARE if this connection lacks it. */
  execute(client: pg.ClientBase, text: string, args: readonly string[]): string {
    let name = this.names.get(text);
    if (name === undefined) {
      name = `banbus_${createHash('sha1').update(text).digest('hex').slice(0, 20)}`;
      // Texts depend only on the shape of a write, not on its values: a few dozen at most.
      if (this.names.size < MAX_PREPARED) this.names.set(text, name);
    }
    let prepared = this.byClient.get(client);
    if (prepared === undefined) {
      prepared = new Set();
      this.byClient.set(client, prepared);
    }
    const call = args.length > 0 ? `EXECUTE ${name}(${args.join(', ')})` : `EXECUTE ${name}`;
    if (prepared.has(name)) return call;
    prepared.add(name);
    return `PREPARE ${name} AS ${text}; ${call}`;
  }

  /** Forgets what was prepared on `client`; true when something was. */
  forget(client: pg.ClientBase): boolean {
    return this.byClient.delete(client);
  }
}

const MAX_PREPARED = 200;
const PREPARED = new PreparedStatements();

/**
 * The parameters of one statement. Rows go as one array parameter per column, built here as PostgreSQL
 * array text: pg's own array encoding (two regular expressions per element, each Date formatted in the
 * local time zone) took half the node time of a write. Every element is quoted, so commas in tids, spaces
 * or braces need no thought.
 *
 * Timestamps are the exception: parsing timestamptz text costs PostgreSQL ~0.8 µs per element at bind time,
 * five times an int, and a batch carries eight timestamp columns whose values are mostly the same few
 * instants (now, now + bantime). They go as a dictionary instead: one timestamptz[] parameter of the
 * distinct values (`ts`) and per column an int[] of positions in it, read back with `ts[i]` (O(1): the
 * element type has a fixed width).
 */
class Statement {
  readonly values: unknown[] = [null];
  private readonly timePositions = new Map<string | number, number>();
  private readonly timeTexts: string[] = [];

  add(value: unknown, type: string): string {
    this.values.push(value);
    return `$${this.values.length}::${type}`;
  }

  /** One column of `rows` as an array parameter of `type`. */
  col<T>(rows: readonly T[], pick: (row: T) => string | number | null | undefined, type: string): string {
    const parts = new Array<string>(rows.length);
    for (let i = 0; i < rows.length; i++) {
      const v = pick(rows[i]!);
      if (v === null || v === undefined) parts[i] = 'NULL';
      else if (typeof v === 'number') parts[i] = String(v);
      else if (v.includes('"') || v.includes('\\')) parts[i] = `"${v.replace(/["\\]/g, '\\$&')}"`;
      else parts[i] = `"${v}"`;
    }
    return this.add(`{${parts.join(',')}}`, `${type}[]`);
  }

  /** A timestamp column: an int[] parameter of positions in `ts`; read each value with `at(column)`. */
  times<T>(rows: readonly T[], pick: (row: T) => Date | string | null | undefined): string {
    const parts = new Array<string>(rows.length);
    for (let i = 0; i < rows.length; i++) {
      const v = pick(rows[i]!);
      if (v === null || v === undefined) {
        parts[i] = 'NULL';
        continue;
      }
      const key = typeof v === 'string' ? v : v.getTime();
      let position = this.timePositions.get(key);
      if (position === undefined) {
        this.timeTexts.push(typeof v === 'string' ? v : v.toISOString());
        position = this.timeTexts.length;
        this.timePositions.set(key, position);
      }
      parts[i] = String(position);
    }
    return this.add(`{${parts.join(',')}}`, 'int[]');
  }

  /** The timestamp at position `expr` of the dictionary. */
  at(expr: string): string {
    return `($1::timestamptz[])[${expr}]`;
  }

  /** The parameter values, the dictionary (always $1) filled in. */
  finish(): unknown[] {
    this.values[0] = `{${this.timeTexts.map((t) => `"${t}"`).join(',')}}`;
    return this.values;
  }
}

/** A batch's reports, encoded before the decision lock is taken (all but the outcome, known only after). */
interface EncodedReports {
  count: number;
  ids: string[];
  /** The parameter holding the ids (uuid[]), and each id's position in it. */
  idsParam: string;
  positions: Map<string, number>;
  /** The statement the write continues; holds the reports' columns. */
  statement: Statement;
  /** The unnest arguments before outcome, ending with a comma. */
  columns: string;
}

function encodeReports(reports: readonly Report[]): EncodedReports {
  const st = new Statement();
  const r = reports;
  const ids = st.col(r, (x) => x.id, 'uuid');
  return {
    count: r.length,
    ids: r.map((x) => x.id),
    idsParam: ids,
    positions: new Map(r.map((x, i) => [x.id, i + 1])),
    statement: st,
    columns: `${ids}, ${st.col(r, (x) => x.action, 'text')}, ${st.col(r, (x) => x.target, 'cidr')},
        ${st.col(r, (x) => x.host, 'text')}, ${st.col(r, (x) => x.origin, 'text')}, ${st.col(r, (x) => x.jail, 'text')},
        ${st.col(r, (x) => x.reason, 'text')}, ${st.col(r, (x) => x.bantime, 'int')},
        ${st.col(r, (x) => x.failures, 'int')}, ${st.col(r, (x) => x.matches, 'text')},
        ${st.times(r, (x) => x.time)},`,
  };
}

/**
 * Writes the engine's result — and, for a batch, its reports — in ONE statement of data-modifying CTEs:
 * one round trip and one plan per transaction whatever the batch size. Rows known to exist (they were
 * loaded under the decision lock, and nothing changes them without it) are updated, the others inserted,
 * which is cheaper than ON CONFLICT. Logs the changes with fresh seqs and notifies; returns the last seq.
 */
async function writeResult(
  client: pg.PoolClient,
  w: DecisionWrites,
  loaded: Loaded,
): Promise<{ lastSeq: number | null }> {
  const write = buildWrite(w, loaded);
  if (write === null) return { lastSeq: null };
  const { rows } = await client.query<{ last: string | null }>(write.text, write.values);
  const last = rows[0]?.last;
  return { lastSeq: last === null || last === undefined ? null : Number(last) };
}

/** The statement of writeResult; null when there is nothing to write (never with reports to store). */
function buildWrite(
  w: DecisionWrites,
  loaded: Loaded,
  reports?: { encoded: EncodedReports; outcomes: ReadonlyMap<string, string> },
): { text: string; values: unknown[] } | null {
  // A batch continues the statement its reports were encoded into (before the lock).
  const p = reports?.encoded.statement ?? new Statement();
  const ctes: string[] = [];
  const col = p.col.bind(p);
  const times = p.times.bind(p);
  const at = p.at.bind(p);

  if (reports && reports.encoded.count > 0) {
    const { encoded, outcomes } = reports;
    ctes.push(`new_reports AS (
      INSERT INTO reports (id, action, target, host, origin, jail, reason, bantime, failures, matches, reported_at, outcome)
      SELECT u.id, u.action, u.target, u.host, u.origin, u.jail, u.reason, u.bantime, u.failures, u.matches,
        ${at('u.reported_at')}, u.outcome
      FROM unnest(${encoded.columns} ${col(encoded.ids, (id) => outcomes.get(id) ?? null, 'text')})
        AS u(id, action, target, host, origin, jail, reason, bantime, failures, matches, reported_at, outcome))`);
  }

  const { ctids } = loaded;
  const ctidOf = (key: string) => {
    const ctid = ctids.get(key);
    // Only rows loaded in this transaction are updated or deleted; anything else is a bug in the rules.
    if (ctid === undefined) throw new Error(`decision store: no loaded row for ${key.slice(1)}`);
    return ctid;
  };
  const deletes = w.activeBanDeletes.map((d) => ctidOf(banCtidKey(d)));
  if (deletes.length > 0)
    ctes.push(`ban_deletes AS (DELETE FROM active_bans WHERE ctid = ANY(${col(deletes, (x) => x, 'tid')}))`);
  const [banUpdates, banInserts] = partition(w.activeBanUpserts, (b) => ctids.has(banCtidKey(b)));
  // A ban's report is one of the batch's (uuid input costs PostgreSQL ~0.9 µs per element): its position in
  // the ids parameter is sent instead. Bans written without a batch (none today) carry their own uuid.
  const positions = reports?.encoded.positions;
  const byPosition = (b: readonly ActiveBan[]) =>
    positions !== undefined && b.every((x) => positions.has(x.reportId));
  const reportIdColumn = (b: readonly ActiveBan[]) =>
    byPosition(b) ? col(b, (x) => positions!.get(x.reportId), 'int') : col(b, (x) => x.reportId, 'uuid');
  const reportId = (b: readonly ActiveBan[]) =>
    byPosition(b) ? `(${reports!.encoded.idsParam})[u.report_id]` : 'u.report_id';
  if (banInserts.length > 0) {
    const b = banInserts;
    ctes.push(`ban_inserts AS (
      INSERT INTO active_bans (target, host, jail, origin, report_id, banned_at, expires_at)
      SELECT u.target, u.host, u.jail, u.origin, ${reportId(b)}, ${at('u.banned_at')}, ${at('u.expires_at')}
      FROM unnest(${col(b, (x) => x.target, 'cidr')}, ${col(b, (x) => x.host, 'text')}, ${col(b, (x) => x.jail, 'text')},
        ${col(b, (x) => x.origin, 'text')}, ${reportIdColumn(b)}, ${times(b, (x) => x.bannedAt)},
        ${times(b, (x) => x.expiresAt)}) AS u(target, host, jail, origin, report_id, banned_at, expires_at))`);
  }
  if (banUpdates.length > 0) {
    const b = banUpdates;
    ctes.push(`ban_updates AS (
      UPDATE active_bans a SET origin = u.origin, report_id = ${reportId(b)}, banned_at = ${at('u.banned_at')},
        expires_at = ${at('u.expires_at')}
      FROM unnest(${col(b, (x) => ctidOf(banCtidKey(x)), 'tid')}, ${col(b, (x) => x.origin, 'text')},
        ${reportIdColumn(b)}, ${times(b, (x) => x.bannedAt)},
        ${times(b, (x) => x.expiresAt)}) AS u(ctid, origin, report_id, banned_at, expires_at)
      WHERE a.ctid = u.ctid)`);
  }

  if (w.decisionDeletes.length > 0) {
    const d = w.decisionDeletes.map((t) => ctidOf(`d${t}`));
    ctes.push(`decision_deletes AS (DELETE FROM decisions WHERE ctid = ANY(${col(d, (x) => x, 'tid')}))`);
  }
  const [decisionUpdates, decisionInserts] = partition(w.decisionUpserts, (d) => ctids.has(`d${d.target}`));
  if (decisionInserts.length > 0) {
    const d = decisionInserts;
    ctes.push(`decision_inserts AS (
      INSERT INTO decisions (target, origin, first_seen, last_seen, expires_at, reporters, ban_count, reason)
      SELECT u.target, u.origin, ${at('u.first_seen')}, ${at('u.last_seen')}, ${at('u.expires_at')}, u.reporters,
        u.ban_count, u.reason
      FROM unnest(${col(d, (x) => x.target, 'cidr')}, ${col(d, (x) => x.origin, 'text')},
        ${times(d, (x) => x.firstSeen)}, ${times(d, (x) => x.lastSeen)},
        ${times(d, (x) => x.expiresAt)}, ${col(d, (x) => x.reporters, 'int')},
        ${col(d, (x) => x.banCount, 'int')}, ${col(d, (x) => x.reason, 'text')})
        AS u(target, origin, first_seen, last_seen, expires_at, reporters, ban_count, reason))`);
  }
  if (decisionUpdates.length > 0) {
    const d = decisionUpdates;
    ctes.push(`decision_updates AS (
      UPDATE decisions d SET origin = u.origin, first_seen = ${at('u.first_seen')}, last_seen = ${at('u.last_seen')},
        expires_at = ${at('u.expires_at')}, reporters = u.reporters, ban_count = u.ban_count, reason = u.reason
      FROM unnest(${col(d, (x) => ctidOf(`d${x.target}`), 'tid')}, ${col(d, (x) => x.origin, 'text')},
        ${times(d, (x) => x.firstSeen)}, ${times(d, (x) => x.lastSeen)},
        ${times(d, (x) => x.expiresAt)}, ${col(d, (x) => x.reporters, 'int')},
        ${col(d, (x) => x.banCount, 'int')}, ${col(d, (x) => x.reason, 'text')})
        AS u(ctid, origin, first_seen, last_seen, expires_at, reporters, ban_count, reason)
      WHERE d.ctid = u.ctid)`);
  }

  const [offenderUpdates, offenderInserts] = partition(w.offenderUpserts, (o) => ctids.has(`o${o.target}`));
  if (offenderInserts.length > 0) {
    const o = offenderInserts;
    ctes.push(`offender_inserts AS (
      INSERT INTO offenders (target, ban_count, last_banned_at)
      SELECT u.target, u.ban_count, ${at('u.last_banned_at')}
      FROM unnest(${col(o, (x) => x.target, 'cidr')}, ${col(o, (x) => x.banCount, 'int')},
        ${times(o, (x) => x.lastBannedAt)}) AS u(target, ban_count, last_banned_at))`);
  }
  if (offenderUpdates.length > 0) {
    const o = offenderUpdates;
    ctes.push(`offender_updates AS (
      UPDATE offenders o SET ban_count = u.ban_count, last_banned_at = ${at('u.last_banned_at')}
      FROM unnest(${col(o, (x) => ctidOf(`o${x.target}`), 'tid')}, ${col(o, (x) => x.banCount, 'int')},
        ${times(o, (x) => x.lastBannedAt)}) AS u(ctid, ban_count, last_banned_at)
      WHERE o.ctid = u.ctid)`);
  }

  if (ctes.length === 0 && w.changes.length === 0) return null;
  // Names the dictionary's type even when no column read it (PostgreSQL must know every parameter's type).
  const typed = '$1::timestamptz[] IS NULL AS no_times';
  // Seqs come from the row this transaction already locked: nobody else can take any until we commit. The
  // row is updated also when no change is logged: its new version (xmin) says that decision state changed.
  const n = p.add(w.changes.length, 'bigint');
  ctes.push(
    `seq AS (UPDATE decision_seq SET last = last + ${n} WHERE id = 1 RETURNING last, xmin::text AS version)`,
  );
  let select = `SELECT NULL::bigint AS last, version, ${typed} FROM seq`;
  if (w.changes.length > 0) {
    const c = w.changes;
    ctes.push(`logged AS (
      INSERT INTO decision_log (seq, op, target, expires_at, reason)
      SELECT (SELECT last FROM seq) - ${n} + u.n, u.op, u.target, ${at('u.expires_at')}, u.reason
      FROM unnest(${col(c, (x) => x.op, 'text')}, ${col(c, (x) => x.target, 'cidr')},
        ${times(c, (x) => x.expiresAt)}, ${col(c, (x) => x.reason, 'text')})
        WITH ORDINALITY AS u(op, target, expires_at, reason, n))`);
    select = `SELECT last, version, pg_notify(${p.add(CHANNELS.decisionLog, 'text')}, last::text), ${typed} FROM seq`;
  }
  return { text: `WITH ${ctes.join(',\n')}\n${select}`, values: p.finish() };
}

/**
 * A parameter value as an SQL literal, for an EXECUTE in a round trip that also carries COMMIT (a statement
 * with parameters must travel alone). Values are the Statement's: numbers, null and text, the text quoted
 * as a standard string literal (the decision transaction sets standard_conforming_strings: only the quote
 * itself is special).
 */
function literal(v: unknown): string {
  if (v === null || v === undefined) return 'NULL';
  if (typeof v === 'number') return String(v);
  if (typeof v !== 'string') throw new Error(`decision store: cannot inline a ${typeof v} parameter`);
  return `'${v.replaceAll("'", "''")}'`;
}

/** The decision_log rows a write inserted, as logRowToChange reads them (seqs end at lastSeq). */
function loggedChanges(changes: readonly ChangeDraft[], lastSeq: number): DecisionChange[] {
  const first = lastSeq - changes.length + 1;
  return changes.map((c, i) =>
    c.op === 'del'
      ? { seq: first + i, op: 'del', target: c.target }
      : {
          seq: first + i,
          op: 'add',
          target: c.target,
          expires_at: c.expiresAt ? c.expiresAt.toISOString() : null,
          reason: c.reason,
        },
  );
}

function partition<T>(items: readonly T[], test: (item: T) => boolean): [T[], T[]] {
  const yes: T[] = [];
  const no: T[] = [];
  for (const item of items) (test(item) ? yes : no).push(item);
  return [yes, no];
}

/** Stores reports, turns them into decisions and relays the decision log to the bus. */
export class DecisionStore {
  private readonly relayBatchSize: number;
  private readonly sweepBatchSize: number;
  private readonly turns: TurnQueue;

  constructor(
    private readonly pool: pg.Pool,
    private readonly rules: DecisionRules,
    private readonly options: DecisionStoreOptions = {},
  ) {
    this.relayBatchSize = options.relayBatchSize ?? 2000;
    this.turns = new TurnQueue();
    this.sweepBatchSize = options.sweepBatchSize ?? 5000;
  }

  /**
   * One transaction per batch: stores the reports (a stored id is skipped, so redeliveries have one effect),
   * applies the new ones in batch order under the decision lock and logs the resulting decision changes.
   *
   * The preload: while the batch before this one holds the lock, a batch of at least PRELOAD_MIN_TARGETS
   * targets that shares no target and no report id with it loads its rows already, and only asks for the
   * lock afterwards; the load (a third of the time under the lock for a batch of repeat offenders) is then
   * off the path every batch waits on. The preloaded state is used if the version of decision_seq's row
   * shows that exactly the batch before committed in between (it wrote other rows); if anybody else did
   * (another persister, a sweep), the batch loads again under the lock.
   */
  async applyReports(batch: readonly Report[]): Promise<ApplyResult> {
    // The same id twice in one batch counts once (the first one).
    const unique = new Map<string, Report>();
    for (const r of batch) if (!unique.has(r.id)) unique.set(r.id, r);
    const all = [...unique.values()];
    // Everything that does not depend on the stored state is done before waiting for the lock.
    const allPlan = this.rules.plan(all);
    const allEncoded = encodeReports(all);
    const ids = all.map((r) => r.id);
    const claims: Claims = { targets: new Set(allPlan.targets), ids: new Set(ids) };
    const turn = this.turns.take(claims);
    const previous = turn.previous;
    // The load and the check for stored ids go with the lock (one round trip), or before it (the preload).
    // Manual unbans of networks look up the targets inside their networks first, in round trips of their
    // own, under the lock.
    const plain = allPlan.networks.length === 0;
    const preload =
      plain &&
      previous !== null &&
      allPlan.targets.length >= PRELOAD_MIN_TARGETS &&
      disjoint(claims, previous.claims)
        ? inlineLoad(allPlan.targets, ids, PRELOAD_STATEMENT)
        : undefined;
    let failure: unknown;
    try {
      if (preload && previous) {
        return await inTransaction<ApplyResult, pg.QueryResult[]>(
          this.pool,
          (client) => `${DECISION_TX_START}; ${preload(client)}`,
          async (client, results, tx) => {
            const pre = results[results.length - 1]!.rows[0] as LoadedRow;
            // Parsed while the batch before still holds the lock; only the allowlist waits for `now`.
            const preloaded = parseLoaded({ ...pre, allowlist: [] });
            await turn.ready;
            const lock = (await client.query<LockRow>(DECISION_LOCK)).rows[0]!;
            turn.locked(lock.version);
            const now = new Date(Number(lock.now));
            await turn.committed();
            const previousLock = await previous.locked; // settled before the preload was sent
            // Nobody committed since the preload (the batch before may have done so already before it), or
            // only the batch before did: its lock read the preload's version and its commit left the one
            // this lock read.
            const current =
              pre.version === lock.version ||
              (pre.version === previousLock && lock.version === previous.endVersion());
            this.options.onPreload?.(current ? 'used' : 'redone');
            const loaded = current
              ? { ...preloaded, allowlist: allowlistAt(pre, now) }
              : await loadState(client, now, allPlan.targets, [], ids);
            return this.decideAndWrite(
              client,
              batch,
              all,
              allEncoded,
              loaded,
              now,
              Number(lock.last),
              tx,
              turn,
            );
          },
          // Loaded once the batch before holds the lock: then nobody else can commit before it does.
          previous.locked.then(() => undefined),
        );
      }
      const then = plain ? inlineLoad(allPlan.targets, ids) : undefined;
      return await inDecisionTransaction(
        this.pool,
        async (client, { now, lastSeq: before, version, thenRows, tx }) => {
          turn.locked(version);
          const loaded = thenRows
            ? parseLoaded(thenRows[0] as LoadedRow)
            : await loadState(client, now, allPlan.targets, allPlan.networks, ids);
          // The lock is ours: the batch before this one committed, or failed and rolled back.
          await turn.committed();
          return this.decideAndWrite(client, batch, all, allEncoded, loaded, now, before, tx, turn);
        },
        turn.ready,
        then,
      );
    } catch (err) {
      failure = err;
      throw err;
    } finally {
      turn.finish(failure);
    }
  }

  /**
   * The part of applyReports under the lock once the state is loaded: skips stored reports, runs the rules,
   * and sends the write with COMMIT.
   */
  private async decideAndWrite(
    client: pg.PoolClient,
    batch: readonly Report[],
    all: Report[],
    allEncoded: EncodedReports,
    loaded: Loaded,
    now: Date,
    before: number,
    tx: Tx,
    turn: { sent(): void; wrote(version: string): void },
  ): Promise<ApplyResult> {
    // Reports are only ever stored under the decision lock, so the check is race-free: a redelivery
    // another persister is applying right now is visible once we hold the lock. The load covered the
    // whole batch, so it covers what is left of it.
    let reports = all;
    let encoded = allEncoded;
    if (loaded.known.length > 0) {
      const stored = new Set(loaded.known);
      reports = all.filter((r) => !stored.has(r.id));
      encoded = encodeReports(reports);
    }
    const duplicates = batch.length - reports.length;
    if (reports.length === 0) {
      turn.sent();
      return { applied: 0, duplicates, outcomes: [], changes: 0, lastSeq: null, logged: [] };
    }
    const writes = this.rules.decide(reports, loaded.state, loaded.allowlist, now);
    const outcomes = new Map(writes.outcomes.map((o) => [o.id, o.outcome]));
    const write = buildWrite(writes, loaded, { encoded, outcomes });
    if (write === null) throw new Error('decision store: a batch of new reports wrote nothing');
    // The seqs follow the last one given, read under the lock: known before the write is sent.
    const lastSeq = writes.changes.length > 0 ? before + writes.changes.length : null;
    if (lastSeq !== null) this.options.onLogged?.(lastSeq);
    // The write and COMMIT go in one round trip, and the next batch may queue for the lock now: it gets
    // it the moment this one commits.
    turn.sent();
    const rows = await tx.commitWith<{ last: string | null; version: string }>(
      PREPARED.execute(client, write.text, write.values.map(literal)),
    );
    const { last: written, version } = rows[0]!;
    turn.wrote(version);
    if (lastSeq !== null && Number(written) !== lastSeq) {
      // Only a bug gets here (every seq is given under the lock this transaction holds).
      throw new Error(`decision store: logged up to seq ${written}, expected ${lastSeq}`);
    }
    return {
      applied: reports.length,
      duplicates,
      outcomes: writes.outcomes,
      changes: writes.changes.length,
      lastSeq,
      logged: lastSeq === null ? [] : loggedChanges(writes.changes, lastSeq),
    };
  }

  /**
   * Publishes unpublished decision_log rows in seq order through `publish` (which must resolve only once
   * the broker confirmed them) and moves the decision_relay cursor past them; repeats until none is left.
   * One relay round at a time across all processes (the cursor's row lock). A crash between publish and
   * commit republishes: consumers apply each seq once.
   *
   * `after`: a seq up to which the caller knows every change is confirmed published (it published them
   * itself and saves the cursor later, see saveRelayCursor); the round starts after it or after the cursor,
   * whichever is further, instead of publishing those again.
   */
  async relay(publish: (changes: DecisionChange[]) => Promise<void>, after = 0): Promise<RelayResult> {
    let published = 0;
    let position = after;
    for (;;) {
      // The cursor's row lock is the relay lock: a second relay waits here, then starts after our rows.
      // One round trip for BEGIN, the lock and the rows: the read is a statement of its own, so it runs
      // once the lock is held and sees what the round before ours committed.
      const begin = `BEGIN; SELECT published_seq FROM decision_relay WHERE id = 1 FOR UPDATE;
        SELECT seq, op, target::text AS target, expires_at, reason FROM decision_log
          WHERE seq > GREATEST((SELECT published_seq FROM decision_relay WHERE id = 1), ${Math.trunc(position)})
          ORDER BY seq LIMIT ${Math.trunc(this.relayBatchSize)}`;
      type Begun = [unknown, pg.QueryResult<{ published_seq: string }>, pg.QueryResult<LogDbRow>];
      const round = await inTransaction<{ n: number; last: number; cursor: number }, Begun>(
        this.pool,
        begin,
        async (client, [, locked, log]) => {
          const cursor = Number(locked.rows[0]!.published_seq);
          const rows = log.rows;
          if (rows.length === 0) return { n: 0, last: Math.max(cursor, position), cursor };
          await publish(rows.map(logRowToChange));
          const last = Number(rows[rows.length - 1]!.seq);
          await client.query('UPDATE decision_relay SET published_seq = $1 WHERE id = 1', [last]);
          return { n: rows.length, last, cursor: last };
        },
      );
      published += round.n;
      position = round.last;
      if (round.n < this.relayBatchSize) return { published, position, cursor: round.cursor };
    }
  }

  /**
   * Moves the relay cursor forward to `seq` (never back), for changes the caller published and saw
   * confirmed outside a relay round. Waits while a relay round of another process holds the cursor.
   */
  async saveRelayCursor(seq: number): Promise<void> {
    await this.pool.query(
      'UPDATE decision_relay SET published_seq = $1 WHERE id = 1 AND published_seq < $1',
      [seq],
    );
  }

  /** Ends the bans expired by the database clock and logs the resulting changes. */
  async sweep(): Promise<ChangeResult> {
    let changes = 0;
    let lastSeq: number | null = null;
    // Most sweeps find nothing: look without the decision lock first, so they never queue behind batches.
    const { rowCount } = await this.pool.query(
      'SELECT 1 FROM active_bans WHERE expires_at <= clock_timestamp() LIMIT 1',
    );
    if (!rowCount) return { changes, lastSeq };
    for (;;) {
      const round = await inDecisionTransaction(this.pool, async (client, { now }) => {
        const { rows } = await client.query<{ target: string }>(
          `SELECT DISTINCT target::text AS target FROM active_bans WHERE expires_at <= $1 LIMIT $2`,
          [now, this.sweepBatchSize],
        );
        if (rows.length === 0) return { changes: 0, lastSeq: null, more: false };
        const loaded = await loadState(
          client,
          now,
          rows.map((r) => targetFromDb(r.target)),
        );
        const writes = this.rules.expire(loaded.state, now);
        const { lastSeq: seq } = await writeResult(client, writes, loaded);
        return { changes: writes.changes.length, lastSeq: seq, more: rows.length === this.sweepBatchSize };
      });
      changes += round.changes;
      if (round.lastSeq !== null) lastSeq = round.lastSeq;
      if (!round.more) return { changes, lastSeq };
    }
  }

  /**
   * Drops decision_log rows older than `retentionSeconds` that the relay already published (an unpublished
   * row is never dropped). Deltas from before the oldest kept row answer 410 and the applier takes a
   * snapshot, so the log only has to reach back as far as an applier may be away. Returns the rows dropped.
   */
  async pruneLog(retentionSeconds: number, chunk = 10_000): Promise<number> {
    // Nearly always the oldest row is young: one index probe, and the sweep is done.
    const { rowCount: due } = await this.pool.query(
      `SELECT 1 FROM (SELECT created_at FROM decision_log ORDER BY seq LIMIT 1) oldest
       WHERE created_at < clock_timestamp() - make_interval(secs => $1)`,
      [retentionSeconds],
    );
    if (!due) return 0;
    let dropped = 0;
    for (;;) {
      // Oldest first, a chunk at a time: created_at grows with seq, so the first chunk holding a row that
      // is still young ends the round.
      const { rowCount } = await this.pool.query(
        `WITH old AS (
           SELECT seq FROM decision_log
           WHERE seq <= (SELECT published_seq FROM decision_relay WHERE id = 1)
           ORDER BY seq LIMIT $2)
         DELETE FROM decision_log d USING old
         WHERE d.seq = old.seq AND d.created_at < clock_timestamp() - make_interval(secs => $1)`,
        [retentionSeconds, chunk],
      );
      dropped += rowCount ?? 0;
      if ((rowCount ?? 0) < chunk) return dropped;
    }
  }

  /** Lifts every ban and decision overlapping an active allowlist entry (an entry was added). */
  async liftAllowlisted(): Promise<ChangeResult> {
    // Usually nothing is covered: look without the decision lock first, so the check never queues behind batches.
    const { rowCount } = await this.pool.query(
      `SELECT 1 FROM allowlist n JOIN decisions d ON d.target && n.network
       WHERE n.expires_at IS NULL OR n.expires_at > clock_timestamp() LIMIT 1`,
    );
    if (!rowCount) return { changes: 0, lastSeq: null };
    return inDecisionTransaction(this.pool, async (client, { now }) => {
      const allowlist = await activeAllowlist(client, now);
      if (allowlist.length === 0) return { changes: 0, lastSeq: null };
      const { rows } = await client.query<{ target: string }>(
        // Allowlists are short and decisions many: one SP-GiST probe per allowlist entry.
        `SELECT d.target::text AS target FROM unnest($1::cidr[]) AS n(network) JOIN decisions d ON d.target && n.network
         UNION
         SELECT a.target::text FROM unnest($1::cidr[]) AS n(network) JOIN active_bans a ON a.target && n.network`,
        [allowlist],
      );
      if (rows.length === 0) return { changes: 0, lastSeq: null };
      const loaded = await loadState(
        client,
        now,
        rows.map((r) => targetFromDb(r.target)),
      );
      const writes = this.rules.lift(loaded.state, allowlist, now);
      const { lastSeq } = await writeResult(client, writes, loaded);
      return { changes: writes.changes.length, lastSeq };
    });
  }

  /** The decision set and the seq it reflects (read in one snapshot). */
  async snapshot(): Promise<{ seq: number; decisions: Decision[] }> {
    const client = await this.pool.connect();
    try {
      await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
      const { rows: seqRows } = await client.query<{ last: string }>(
        'SELECT last FROM decision_seq WHERE id = 1',
      );
      const { rows } = await client.query<DecisionTableRow>(
        `SELECT ${DECISION_COLUMNS} FROM decisions ORDER BY target`,
      );
      await client.query('COMMIT');
      return {
        seq: Number(seqRows[0]!.last),
        decisions: rows.map((r) => ({
          target: targetFromDb(r.target),
          origin: r.origin,
          first_seen: r.first_seen.toISOString(),
          last_seen: r.last_seen.toISOString(),
          expires_at: r.expires_at ? r.expires_at.toISOString() : null,
          reporters: r.reporters,
          ban_count: r.ban_count,
          reason: r.reason,
        })),
      };
    } catch (err) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw err;
    } finally {
      client.release();
    }
  }

  /** Logged changes after `seq`, in order. */
  async logSince(seq: number, limit = 100_000): Promise<DecisionChange[]> {
    const { rows } = await this.pool.query<LogDbRow>(
      `SELECT seq, op, target::text AS target, expires_at, reason FROM decision_log
       WHERE seq > $1 ORDER BY seq LIMIT $2`,
      [seq, limit],
    );
    return rows.map(logRowToChange);
  }

  async lastSeq(): Promise<number> {
    const { rows } = await this.pool.query<{ last: string }>('SELECT last FROM decision_seq WHERE id = 1');
    return Number(rows[0]!.last);
  }

  /** Logged changes the relay has not published yet. */
  async unpublishedCount(): Promise<number> {
    const { rows } = await this.pool.query<{ n: string }>(
      `SELECT (SELECT last FROM decision_seq WHERE id = 1) - (SELECT published_seq FROM decision_relay WHERE id = 1) AS n`,
    );
    return Number(rows[0]!.n);
  }

  async decisionCount(): Promise<number> {
    const { rows } = await this.pool.query<{ n: string }>('SELECT count(*) AS n FROM decisions');
    return Number(rows[0]!.n);
  }
}
