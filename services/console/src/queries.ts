// What the console reads: the decision list (filters, sort, keyset pages), one target's detail with the
// reports behind it, and the overview figures. Read-only SQL; changes go through actions.ts.
import type pg from 'pg';
import { ORIGINS, parseTarget, targetFromDb, type Origin } from '@banbus/core';
import { HttpError } from '@banbus/runtime';
import type { DecisionTableRow } from '@banbus/db';
import type { DecisionQuery, Order, Sort } from './schemas.js';

export interface DecisionItem {
  target: string;
  origin: Origin;
  first_seen: string;
  last_seen: string;
  expires_at: string | null;
  reporters: number;
  ban_count: number;
  reason: string | null;
  /** Jails and hosts of the active bans behind the decision. */
  jails: string[];
  hosts: string[];
}

export interface DecisionPage {
  items: DecisionItem[];
  /** Pass as `cursor` for the next page; null on the last page. */
  next: string | null;
  sort: Sort;
  order: Order;
}

export interface ActiveBanItem {
  host: string;
  jail: string | null;
  origin: Origin;
  report_id: string;
  banned_at: string;
  expires_at: string | null;
}

export interface ReportItem {
  id: string;
  action: 'ban' | 'unban';
  host: string;
  origin: Origin;
  jail: string | null;
  reason: string | null;
  bantime: number | null;
  failures: number | null;
  matches: string | null;
  reported_at: string;
  received_at: string;
  outcome: string | null;
  /** True when this report holds one of the decision's active bans. */
  active: boolean;
}

export interface DecisionDetail {
  target: string;
  /** The decision on exactly this target, if any. */
  decision: DecisionItem | null;
  /** Decisions on networks that contain the target. */
  covering: DecisionItem[];
  /** Decisions inside the target (a network), counted up to INSIDE_LIMIT. */
  inside: number;
  active_bans: ActiveBanItem[];
  /** Newest first, at most REPORT_LIMIT. */
  reports: ReportItem[];
  more_reports: boolean;
  /** Allowlist entries overlapping the target. */
  allowlisted_by: string[];
}

export interface ApplierItem {
  applier: string;
  seq: number;
  /** Published seqs the applier has not applied yet. */
  lag_seqs: number;
  lag_seconds: number | null;
  backend: string | null;
  entries: number | null;
  ready: boolean | null;
  reported_by: string;
  first_seen: string;
  reported_at: string;
  /** No heartbeat for longer than CONSOLE_APPLIER_STALE. */
  stale: boolean;
}

export interface Overview {
  at: string;
  /** Last seq allocated (decision_seq) and last seq the relay published to the stream. */
  seq: number;
  published_seq: number;
  active_bans: number;
  active_bans_v4: number;
  active_bans_v6: number;
  /** New decisions per hour (reports whose outcome was `banned`), the last 24 hours, oldest first. */
  bans_per_hour: { hour: string; bans: number }[];
  top_jails: { jail: string | null; bans: number }[];
  top_hosts: { host: string; bans: number }[];
  appliers: ApplierItem[];
  allowlist: number;
  hosts: number;
}

export const REPORT_LIMIT = 500;
export const INSIDE_LIMIT = 10_000;

const iso = (d: Date | null): string | null => (d === null ? null : d.toISOString());

interface DecisionDbRow extends DecisionTableRow {
  jails: string[];
  hosts: string[];
  /** last_seen in microseconds since the epoch, for the cursor (timestamptz has microseconds, Date not). */
  key: string;
}

function toItem(row: DecisionDbRow): DecisionItem {
  return {
    target: targetFromDb(row.target),
    origin: row.origin,
    first_seen: row.first_seen.toISOString(),
    last_seen: row.last_seen.toISOString(),
    expires_at: iso(row.expires_at),
    reporters: row.reporters,
    ban_count: row.ban_count,
    reason: row.reason,
    jails: row.jails,
    hosts: row.hosts,
  };
}

/** Columns of a decision row plus the jails and hosts of its active bans (one primary-key probe). */
const ITEM_COLUMNS = `d.target::text AS target, d.origin, d.first_seen, d.last_seen, d.expires_at, d.reporters,
  d.ban_count, d.reason, (extract(epoch FROM d.last_seen) * 1000000)::bigint::text AS key,
  coalesce((SELECT array_agg(DISTINCT a.jail ORDER BY a.jail) FROM active_bans a
             WHERE a.target = d.target AND a.jail <> ''), '{}') AS jails,
  coalesce((SELECT array_agg(DISTINCT a.host ORDER BY a.host) FROM active_bans a
             WHERE a.target = d.target), '{}') AS hosts`;

interface Cursor {
  s: Sort;
  o: Order;
  /** last_seen in microseconds (sort last_seen only). */
  k?: string;
  t: string;
}

export function encodeCursor(cursor: Cursor): string {
  return Buffer.from(JSON.stringify(cursor)).toString('base64url');
}

function decodeCursor(text: string, sort: Sort, order: Order): Cursor {
  const bad = (why: string) => new HttpError(400, `cursor ${why}; start again without it`, 'cursor');
  let value: unknown;
  try {
    value = JSON.parse(Buffer.from(text, 'base64url').toString('utf8'));
  } catch {
    throw bad('is not one this API gave out');
  }
  const c = value as Partial<Cursor> | null;
  if (!c || typeof c !== 'object' || typeof c.t !== 'string') throw bad('is not one this API gave out');
  if (c.s !== sort || c.o !== order) throw bad('belongs to another sort order');
  try {
    parseTarget(c.t);
  } catch {
    throw bad('is not one this API gave out');
  }
  if (sort === 'last_seen' && (typeof c.k !== 'string' || !/^-?\d{1,19}$/.test(c.k)))
    throw bad('is not one this API gave out');
  return c as Cursor;
}

/** Positional parameters for one statement. */
class Params {
  readonly values: unknown[] = [];
  add(value: unknown, type?: string): string {
    this.values.push(value);
    return `$${this.values.length}${type ? `::${type}` : ''}`;
  }
}

export class ConsoleQueries {
  private overviewCache: { at: number; value: Promise<Overview> } | undefined;

  constructor(
    private readonly pool: pg.Pool,
    private readonly options: { applierStaleSeconds: number; overviewTtlMs?: number } = {
      applierStaleSeconds: 120,
    },
  ) {}

  /**
   * One page of decisions. Keyset pagination: the cursor holds the sort key of the last row, and the next
   * page is `(key, target) < (that)` in index order — the same cost on page 1 and page 20,000.
   */
  async decisions(q: DecisionQuery): Promise<DecisionPage> {
    const order: Order = q.order ?? (q.sort === 'target' ? 'asc' : 'desc');
    const p = new Params();
    const where: string[] = [];
    if (q.target !== undefined) {
      const target = parseTarget(q.target);
      // An address finds the networks covering it (and itself); a network also finds what lies inside.
      // Both are answered by the SP-GiST index on decisions.target.
      where.push(
        target.isHost
          ? `d.target >>= ${p.add(target.text, 'inet')}`
          : `d.target && ${p.add(target.text, 'cidr')}`,
      );
    }
    if (q.origin !== undefined) {
      // Written as a literal (it is one of ORIGINS, checked by the schema and again here) so that the planner
      // can match the partial index on the origins other than fail2ban; a parameter would hide the value.
      if (!ORIGINS.includes(q.origin)) throw new HttpError(400, 'unknown origin', 'origin');
      where.push(`d.origin = '${q.origin}'`);
    }
    if (q.since !== undefined) where.push(`d.last_seen >= ${p.add(q.since, 'timestamptz')}`);
    if (q.until !== undefined) where.push(`d.last_seen < ${p.add(q.until, 'timestamptz')}`);
    if (q.jail !== undefined || q.host !== undefined) {
      const conditions = ['a.target = d.target'];
      if (q.jail !== undefined) conditions.push(`a.jail = ${p.add(q.jail)}`);
      if (q.host !== undefined) conditions.push(`a.host = ${p.add(q.host)}`);
      where.push(`EXISTS (SELECT 1 FROM active_bans a WHERE ${conditions.join(' AND ')})`);
    }
    const cmp = order === 'desc' ? '<' : '>';
    const dir = order === 'desc' ? 'DESC' : 'ASC';
    if (q.cursor !== undefined) {
      const c = decodeCursor(q.cursor, q.sort, order);
      if (q.sort === 'last_seen') {
        // Microseconds back to a timestamptz exactly (below 2^53, so the float arithmetic is exact).
        const at = `('epoch'::timestamptz + ${p.add(c.k, 'bigint')} * interval '1 microsecond')`;
        where.push(`(d.last_seen, d.target) ${cmp} (${at}, ${p.add(c.t, 'cidr')})`);
      } else {
        where.push(`d.target ${cmp} ${p.add(c.t, 'cidr')}`);
      }
    }
    const orderBy = q.sort === 'last_seen' ? `d.last_seen ${dir}, d.target ${dir}` : `d.target ${dir}`;
    const sql = `SELECT ${ITEM_COLUMNS} FROM decisions d
      ${where.length ? `WHERE ${where.join(' AND ')}` : ''}
      ORDER BY ${orderBy} LIMIT ${p.add(q.limit + 1, 'int')}`;
    const { rows } = await this.pool.query<DecisionDbRow>(sql, p.values);
    const more = rows.length > q.limit;
    const page = more ? rows.slice(0, q.limit) : rows;
    const last = page[page.length - 1];
    const next =
      more && last
        ? encodeCursor({
            s: q.sort,
            o: order,
            t: targetFromDb(last.target),
            ...(q.sort === 'last_seen' ? { k: last.key } : {}),
          })
        : null;
    return { items: page.map(toItem), next, sort: q.sort, order };
  }

  /** Everything known about one target; throws 400 for an invalid one. */
  async detail(input: string): Promise<DecisionDetail> {
    let target;
    try {
      target = parseTarget(input);
    } catch (err) {
      throw new HttpError(400, (err as Error).message, 'target');
    }
    const t = target.text;
    const [own, covering, inside, bans, reports, allow] = await Promise.all([
      this.pool.query<DecisionDbRow>(`SELECT ${ITEM_COLUMNS} FROM decisions d WHERE d.target = $1::cidr`, [
        t,
      ]),
      this.pool.query<DecisionDbRow>(
        `SELECT ${ITEM_COLUMNS} FROM decisions d WHERE d.target >> $1::cidr ORDER BY masklen(d.target) DESC`,
        [t],
      ),
      target.isHost
        ? Promise.resolve({ rows: [{ n: 0 }] })
        : this.pool.query<{ n: number }>(
            `SELECT count(*)::int AS n FROM (SELECT 1 FROM decisions WHERE target << $1::cidr LIMIT ${INSIDE_LIMIT}) x`,
            [t],
          ),
      this.pool.query<{
        host: string;
        jail: string;
        origin: Origin;
        report_id: string;
        banned_at: Date;
        expires_at: Date | null;
      }>(
        `SELECT host, jail, origin, report_id, banned_at, expires_at FROM active_bans
          WHERE target = $1::cidr ORDER BY banned_at DESC, host, jail`,
        [t],
      ),
      this.pool.query<
        Omit<ReportItem, 'reported_at' | 'received_at'> & {
          reported_at: Date;
          received_at: Date;
          outcome: string | null;
        }
      >(
        `SELECT id, action, host, origin, jail, reason, bantime, failures, matches, reported_at, received_at, outcome
           FROM reports WHERE target = $1::cidr ORDER BY received_at DESC, id LIMIT ${REPORT_LIMIT + 1}`,
        [t],
      ),
      this.pool.query<{ network: string }>(
        'SELECT network::text AS network FROM allowlist WHERE network && $1::cidr ORDER BY network',
        [t],
      ),
    ]);
    const activeIds = new Set(bans.rows.map((b) => b.report_id));
    return {
      target: t,
      decision: own.rows[0] ? toItem(own.rows[0]) : null,
      covering: covering.rows.map(toItem),
      inside: inside.rows[0]?.n ?? 0,
      active_bans: bans.rows.map((b) => ({
        host: b.host,
        jail: b.jail === '' ? null : b.jail,
        origin: b.origin,
        report_id: b.report_id,
        banned_at: b.banned_at.toISOString(),
        expires_at: iso(b.expires_at),
      })),
      reports: reports.rows.slice(0, REPORT_LIMIT).map((r) => ({
        id: r.id,
        action: r.action,
        host: r.host,
        origin: r.origin,
        jail: r.jail,
        reason: r.reason,
        bantime: r.bantime,
        failures: r.failures,
        matches: r.matches,
        reported_at: r.reported_at.toISOString(),
        received_at: r.received_at.toISOString(),
        outcome: r.outcome,
        active: activeIds.has(r.id),
      })),
      more_reports: reports.rows.length > REPORT_LIMIT,
      allowlisted_by: allow.rows.map((r) => targetFromDb(r.network)),
    };
  }

  /** Decisions overlapping a network: what an allowlist entry for it lifts. */
  async overlapping(network: string, limit = 1000): Promise<{ targets: string[]; total: number }> {
    const { rows } = await this.pool.query<{ target: string; total: number }>(
      `SELECT target::text AS target, count(*) OVER ()::int AS total FROM decisions
        WHERE target && $1::cidr ORDER BY target LIMIT $2`,
      [network, limit],
    );
    return { targets: rows.map((r) => targetFromDb(r.target)), total: rows[0]?.total ?? 0 };
  }

  /** Decisions on the target or inside it: what a manual unban of it ends. */
  async within(target: string, limit = 1000): Promise<string[]> {
    const { rows } = await this.pool.query<{ target: string }>(
      'SELECT target::text AS target FROM decisions WHERE target <<= $1::cidr ORDER BY target LIMIT $2',
      [target, limit],
    );
    return rows.map((r) => targetFromDb(r.target));
  }

  /** Where the decision stream is: last seq allocated, last seq published. */
  async seq(): Promise<{ seq: number; published_seq: number }> {
    const { rows } = await this.pool.query<{ seq: string; published: string }>(
      'SELECT (SELECT last FROM decision_seq) AS seq, (SELECT published_seq FROM decision_relay) AS published',
    );
    return { seq: Number(rows[0]!.seq), published_seq: Number(rows[0]!.published) };
  }

  async appliers(): Promise<ApplierItem[]> {
    const { rows } = await this.pool.query<{
      applier: string;
      seq: string;
      lag_seqs: string;
      lag_seconds: number | null;
      backend: string | null;
      entries: string | null;
      ready: boolean | null;
      reported_by: string;
      first_seen: Date;
      reported_at: Date;
      stale: boolean;
    }>(
      `SELECT s.applier, s.seq, greatest(0, r.published_seq - s.seq) AS lag_seqs, s.lag_seconds, s.backend,
              s.entries, s.ready, s.reported_by, s.first_seen, s.reported_at,
              s.reported_at < now() - make_interval(secs => $1) AS stale
         FROM applier_status s CROSS JOIN decision_relay r ORDER BY s.applier`,
      [this.options.applierStaleSeconds],
    );
    return rows.map((r) => ({
      applier: r.applier,
      seq: Number(r.seq),
      lag_seqs: Number(r.lag_seqs),
      lag_seconds: r.lag_seconds,
      backend: r.backend,
      entries: r.entries === null ? null : Number(r.entries),
      ready: r.ready,
      reported_by: r.reported_by,
      first_seen: r.first_seen.toISOString(),
      reported_at: r.reported_at.toISOString(),
      stale: r.stale,
    }));
  }

  /**
   * The overview figures. Counting a million decisions and grouping a million active bans takes a few
   * hundred milliseconds, so one computation is shared by every viewer for `overviewTtlMs`.
   */
  overview(): Promise<Overview> {
    const ttl = this.options.overviewTtlMs ?? 1_000;
    const cached = this.overviewCache;
    if (cached && Date.now() - cached.at < ttl) return cached.value;
    const value = this.computeOverview();
    this.overviewCache = { at: Date.now(), value };
    value.catch(() => {
      if (this.overviewCache?.value === value) this.overviewCache = undefined;
    });
    return value;
  }

  /** Forget the cached overview (after a change made here, so the next view shows it). */
  invalidate(): void {
    this.overviewCache = undefined;
  }

  private async computeOverview(): Promise<Overview> {
    const [counts, hourly, jails, hosts, appliers] = await Promise.all([
      this.pool.query<{
        at: Date;
        seq: string;
        published: string;
        v4: number;
        v6: number;
        allowlist: number;
        hosts: number;
      }>(
        `SELECT now() AS at, (SELECT last FROM decision_seq) AS seq, (SELECT published_seq FROM decision_relay) AS published,
                d.v4, d.v6,
                (SELECT count(*)::int FROM allowlist WHERE expires_at IS NULL OR expires_at > now()) AS allowlist,
                (SELECT count(*)::int FROM hosts WHERE revoked_at IS NULL) AS hosts
           FROM (SELECT count(*) FILTER (WHERE family(target) = 4)::int AS v4,
                        count(*) FILTER (WHERE family(target) = 6)::int AS v6 FROM decisions) d`,
      ),
      // reports.received_at has a BRIN index: the last day is a small range of the table.
      this.pool.query<{ hour: Date; bans: number }>(
        `WITH hours AS (
           SELECT generate_series(date_trunc('hour', now()) - interval '23 hours', date_trunc('hour', now()),
                                  interval '1 hour') AS hour)
         SELECT h.hour, coalesce(c.bans, 0)::int AS bans FROM hours h LEFT JOIN (
           SELECT date_trunc('hour', received_at) AS hour, count(*) AS bans FROM reports
            WHERE received_at >= date_trunc('hour', now()) - interval '23 hours' AND outcome = 'banned'
            GROUP BY 1) c USING (hour)
         ORDER BY h.hour`,
      ),
      this.pool.query<{ jail: string; bans: number }>(
        'SELECT jail, count(*)::int AS bans FROM active_bans GROUP BY jail ORDER BY bans DESC, jail LIMIT 10',
      ),
      this.pool.query<{ host: string; bans: number }>(
        'SELECT host, count(*)::int AS bans FROM active_bans GROUP BY host ORDER BY bans DESC, host LIMIT 10',
      ),
      this.appliers(),
    ]);
    const c = counts.rows[0]!;
    return {
      at: c.at.toISOString(),
      seq: Number(c.seq),
      published_seq: Number(c.published),
      active_bans: c.v4 + c.v6,
      active_bans_v4: c.v4,
      active_bans_v6: c.v6,
      bans_per_hour: hourly.rows.map((r) => ({ hour: r.hour.toISOString(), bans: r.bans })),
      top_jails: jails.rows.map((r) => ({ jail: r.jail === '' ? null : r.jail, bans: r.bans })),
      top_hosts: hosts.rows,
      appliers,
      allowlist: c.allowlist,
      hosts: c.hosts,
    };
  }
}
