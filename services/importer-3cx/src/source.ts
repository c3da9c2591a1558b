// The 3CX database, read-only. The PBX owns it: the importer only SELECTs, never writes or locks.
import pg from 'pg';
import type { Importer3cxEnv } from '@banbus/core';
import type { Logger } from '@banbus/runtime';
import type { EventRow } from './events.js';

export interface SourceConfig {
  url: string;
  table: string;
  timeColumn: string;
  eventColumn: string;
  eventIds: readonly number[];
  /** Unset: every text column of the row. */
  textColumn?: string | undefined;
  /** Unset: the row is known by md5 of its text form. */
  idColumn?: string | undefined;
}

/** The THREECX_* settings as a SourceConfig. */
export function sourceConfig(config: Importer3cxEnv): SourceConfig {
  return {
    url: config.THREECX_DATABASE_URL,
    table: config.THREECX_TABLE,
    timeColumn: config.THREECX_TIME_COLUMN,
    eventColumn: config.THREECX_EVENT_COLUMN,
    eventIds: config.THREECX_EVENT_IDS,
    textColumn: config.THREECX_TEXT_COLUMN,
    idColumn: config.THREECX_ID_COLUMN,
  };
}

/** What the importer needs of the event log (tests may fake it). */
export interface EventSource {
  /** "host:port/database/table": names the cursor and goes into report ids. */
  readonly identity: string;
  /** How rows are told apart: "row-md5" or "column:<name>" (a cursor's keys only mean something under it). */
  readonly keyScheme: string;
  /** Time of the newest matching event, or null when there is none. */
  newestEpoch(): Promise<number | null>;
  /** Matching events at or after `from` (null: all), minus `skip` keys, oldest first, at most `limit`. */
  read(from: number | null, skip: readonly string[], limit: number): Promise<EventRow[]>;
  close(): Promise<void>;
}

/** The table or a column is missing or of the wrong type: the operator's configuration, not an outage. */
export class SourceShapeError extends Error {
  override name = 'SourceShapeError';
}

function quote(identifier: string): string {
  return identifier
    .split('.')
    .map((part) => `"${part.replace(/"/g, '""')}"`)
    .join('.');
}

export function sourceIdentity(url: string, table: string): string {
  try {
    const u = new URL(url);
    return `${u.hostname}:${u.port || '5432'}${u.pathname}/${table}`;
  } catch {
    return `${url.replace(/\/\/[^@/]*@/, '//')}/${table}`;
  }
}

interface RawRow {
  epoch: string | null;
  at: Date | null;
  key: string | null;
  event_id: string | number | null;
  text?: string | null;
  row?: Record<string, unknown> | null;
}

export class PgEventSource implements EventSource {
  readonly identity: string;
  readonly keyScheme: string;
  private readonly pool: pg.Pool;
  private statement: { read: string; newest: string } | null = null;

  constructor(
    private readonly config: SourceConfig,
    private readonly logger: Logger,
  ) {
    this.identity = sourceIdentity(config.url, config.table);
    this.keyScheme = config.idColumn === undefined ? 'row-md5' : `column:${config.idColumn}`;
    this.pool = new pg.Pool({
      connectionString: config.url,
      max: 1,
      connectionTimeoutMillis: 5_000,
      idleTimeoutMillis: 30_000,
      application_name: 'banbus-importer-3cx',
      // A runaway query must not hold the PBX's database: a poll reads at most a batch.
      statement_timeout: 30_000,
    });
    // An idle connection dropped by the server (3CX restarting) must not crash the process; the next
    // query reconnects.
    this.pool.on('error', (err) => this.logger.warn({ err: err.message }, '3CX database connection lost'));
  }

  /** Checks the table and columns once per connection lifetime and builds the statements. */
  private async statements(): Promise<{ read: string; newest: string }> {
    if (this.statement) return this.statement;
    const { table, timeColumn, eventColumn, textColumn, idColumn } = this.config;
    const { rows } = await this.pool.query<{ column_name: string; data_type: string }>(
      `SELECT a.attname AS column_name, format_type(a.atttypid, a.atttypmod) AS data_type
         FROM pg_attribute a
        WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped`,
      [quote(table)],
    );
    if (rows.length === 0) throw new SourceShapeError(`THREECX_TABLE: no table ${table} in the 3CX database`);
    const types = new Map(rows.map((r) => [r.column_name, r.data_type]));
    const need = (name: string, variable: string) => {
      if (!types.has(name)) throw new SourceShapeError(`${variable}: table ${table} has no column ${name}`);
      return types.get(name)!;
    };
    const timeType = need(timeColumn, 'THREECX_TIME_COLUMN');
    const zoned = timeType.startsWith('timestamp') && timeType.includes('with time zone');
    if (!timeType.startsWith('timestamp')) {
      throw new SourceShapeError(`THREECX_TIME_COLUMN: ${timeColumn} is ${timeType}, not a timestamp column`);
    }
    need(eventColumn, 'THREECX_EVENT_COLUMN');
    if (textColumn !== undefined) need(textColumn, 'THREECX_TEXT_COLUMN');
    if (idColumn !== undefined) need(idColumn, 'THREECX_ID_COLUMN');

    const t = `t.${quote(timeColumn)}`;
    // A row without an id (NULL) still needs a key of its own, or every such row would count as one.
    const key =
      idColumn !== undefined ? `coalesce(t.${quote(idColumn)}::text, md5(t::text))` : 'md5(t::text)';
    const text = textColumn !== undefined ? `t.${quote(textColumn)}::text AS text` : 'to_jsonb(t) AS row';
    // extract(epoch) of a timestamp without time zone reads it as UTC; the bound is built the same way, so
    // comparisons stay in the column's own terms (and can use an index on it).
    const bound = zoned ? 'to_timestamp($2::float8)' : "(to_timestamp($2::float8) AT TIME ZONE 'UTC')";
    this.statement = {
      read: `SELECT extract(epoch FROM ${t})::text AS epoch, ${t}::timestamptz AS at, ${key} AS key,
                    t.${quote(eventColumn)} AS event_id, ${text}
               FROM ${quote(table)} t
              WHERE t.${quote(eventColumn)} = ANY($1)
                AND ${t} IS NOT NULL
                AND ($2::float8 IS NULL OR ${t} >= ${bound})
                AND NOT (${key} = ANY($3::text[]))
              ORDER BY ${t}, ${key}
              LIMIT $4`,
      newest: `SELECT extract(epoch FROM max(${t}))::text AS epoch
                 FROM ${quote(table)} t WHERE t.${quote(eventColumn)} = ANY($1)`,
    };
    return this.statement;
  }

  async newestEpoch(): Promise<number | null> {
    const { newest } = await this.statements();
    const { rows } = await this.pool.query<{ epoch: string | null }>(newest, [this.config.eventIds]);
    const epoch = rows[0]?.epoch;
    return epoch === null || epoch === undefined ? null : Number(epoch);
  }

  async read(from: number | null, skip: readonly string[], limit: number): Promise<EventRow[]> {
    const { read } = await this.statements();
    const { rows } = await this.pool.query<RawRow>(read, [this.config.eventIds, from, skip, limit]);
    return rows.map((r) => this.toEvent(r));
  }

  private toEvent(r: RawRow): EventRow {
    let text: string | null;
    if ('row' in r) {
      // Every text value of the row except the time, joined: the old script searched the whole row too.
      const values: string[] = [];
      for (const [column, value] of Object.entries(r.row ?? {})) {
        if (column !== this.config.timeColumn && typeof value === 'string') values.push(value);
      }
      text = values.length > 0 ? values.join(' ') : null;
    } else {
      text = r.text ?? null;
    }
    const eventId = r.event_id === null ? null : Number(r.event_id);
    return {
      key: r.key ?? '',
      epoch: Number(r.epoch),
      at: r.at,
      eventId: Number.isFinite(eventId) ? eventId : null,
      text,
    };
  }

  /** Forget the checked shape (after a failure the table may have been changed or recreated). */
  reset(): void {
    this.statement = null;
  }

  async close(): Promise<void> {
    await this.pool.end();
  }
}
