// One 3CX event → the reports it makes. Pure: the reader hands rows in, the ingest client takes reports out.
import { v5 as uuidv5 } from 'uuid';
import { extractAddresses } from './extract.js';

/** An event row as the reader delivers it. */
export interface EventRow {
  /** The row's identity: the id column's value, or a hash of the whole row. */
  key: string;
  /** Event time in seconds since the epoch (what the cursor orders by). */
  epoch: number;
  /** Event time as an instant, for the report's `time`; null when it could not be read. */
  at: Date | null;
  eventId: number | null;
  /** The parameter text (or every text column of the row); null when the row has none. */
  text: string | null;
}

/** The body of one report for POST /v1/reports. */
export interface ReportBody {
  id: string;
  ip: string;
  action: 'ban';
  origin: '3cx';
  jail: '3cx';
  reason: string;
  time?: string;
  bantime?: number;
}

export type EventOutcome =
  { kind: 'reports'; reports: ReportBody[] } | { kind: 'no-address' } | { kind: 'unreadable'; error: string };

/** Fixed namespace of the importer's report ids (UUID v5): the same event always gives the same ids. */
export const REPORT_ID_NAMESPACE = '5d0b6c52-3c1e-4f0a-9a3c-3cb0b5e11a5e';

const REASON_MAX = 200;
// ingest refuses control characters in a reason; event texts may hold newlines and tabs.
// eslint-disable-next-line no-control-regex
const CONTROL_OR_SPACE = /[\u0000-\u001f\u007f-\u009f\s]+/g;

/** "3CX event 12290: <the event's text>", one line, at most 200 characters. */
export function reasonOf(eventId: number | null, text: string | null): string {
  const head = `3CX event ${eventId ?? '?'}`;
  const body = (text ?? '').replace(CONTROL_OR_SPACE, ' ').trim();
  const reason = body === '' ? head : `${head}: ${body}`;
  return reason.length <= REASON_MAX ? reason : `${reason.slice(0, REASON_MAX - 1)}…`;
}

/**
 * The id of the report for `target` out of event `key` of `source`: a retry after a crash sends the same
 * ids, and ingest/the persister store a report id once, so nothing is counted twice.
 */
export function reportId(source: string, key: string, target: string): string {
  return uuidv5(`${source}\u0000${key}\u0000${target}`, REPORT_ID_NAMESPACE);
}

export interface EventOptions {
  /** Identity of the database and table ("host:port/database/table"). */
  source: string;
  bantime?: number | undefined;
}

/** Never throws: anything it cannot make sense of is an outcome, so one bad row cannot stop the importer. */
export function eventToReports(row: EventRow, options: EventOptions): EventOutcome {
  try {
    if (typeof row.text !== 'string') return { kind: 'unreadable', error: 'the event has no text' };
    const addresses = extractAddresses(row.text);
    if (addresses.length === 0) return { kind: 'no-address' };
    const reason = reasonOf(row.eventId, row.text);
    const time = row.at !== null && Number.isFinite(row.at.getTime()) ? row.at.toISOString() : undefined;
    const reports = addresses.map((ip): ReportBody => {
      const report: ReportBody = {
        id: reportId(options.source, row.key, ip),
        ip,
        action: 'ban',
        origin: '3cx',
        jail: '3cx',
        reason,
      };
      if (time !== undefined) report.time = time;
      if (options.bantime !== undefined) report.bantime = options.bantime;
      return report;
    });
    return { kind: 'reports', reports };
  } catch (err) {
    return { kind: 'unreadable', error: (err as Error).message };
  }
}
