// The poll loop: read a batch of events after the cursor, turn them into reports, hand them to ingest,
// and only then move the cursor. A crash between ingest's 202 and the cursor write re-sends the same
// events with the same report ids, which the persister stores once. A dependency that is away (the 3CX
// database, ingest, the cursor's disk) is waited for with backoff; nothing is skipped meanwhile.
import { setTimeout as sleep } from 'node:timers/promises';
import pRetry from 'p-retry';
import type { Logger } from '@banbus/runtime';
import { Cursor, type CursorState } from './cursor.js';
import type { CursorStore } from './cursor-file.js';
import { eventToReports, type EventRow, type ReportBody } from './events.js';
import { IngestUnavailableError, type SendResult } from './ingest-client.js';
import type { Importer3cxMetrics } from './metrics.js';
import type { EventSource } from './source.js';

export type Dependency = 'database' | 'ingest' | 'cursor';

/** What the importer needs of the ingest client (tests may fake it). */
export interface ReportSender {
  send(reports: readonly object[], signal?: AbortSignal): Promise<SendResult>;
}

export interface ImporterOptions {
  source: EventSource & { reset?(): void };
  sender: ReportSender;
  store: CursorStore;
  /** The cursor loaded at start, if any (and if it belongs to this source). */
  saved: CursorState | null;
  logger: Logger;
  metrics: Importer3cxMetrics;
  batchSize: number;
  pollIntervalMs: number;
  lookbackSeconds: number;
  overlapSeconds: number;
  bantime?: number | undefined;
  /** Reports per request to ingest. */
  chunkSize?: number;
  /** Backoff between retries while a dependency is away. */
  retry: { minMs: number; maxMs: number };
}

export class Importer3cx {
  private cursor: Cursor | null;
  private readonly abort = new AbortController();
  private loop: Promise<void> | null = null;
  private readonly healthy: Record<Dependency, boolean> = { database: false, ingest: true, cursor: true };
  private readonly chunkSize: number;

  constructor(private readonly options: ImporterOptions) {
    const { saved, source, overlapSeconds } = options;
    this.cursor =
      saved === null
        ? null
        : saved.keys === source.keyScheme
          ? Cursor.from(saved, overlapSeconds)
          : Cursor.rekey(saved, source.keyScheme, overlapSeconds);
    this.chunkSize = options.chunkSize ?? 500;
    if (this.cursor?.watermark != null) options.metrics.watermark.set(this.cursor.watermark);
  }

  /** True while the last attempt on every dependency succeeded. */
  ready(): boolean {
    return this.loop !== null && Object.values(this.healthy).every(Boolean);
  }

  dependencies(): Readonly<Record<Dependency, boolean>> {
    return { ...this.healthy };
  }

  /** The cursor as it stands (for tests and diagnostics). */
  position(): CursorState | null {
    return this.cursor?.toJSON() ?? null;
  }

  start(): void {
    this.loop ??= this.run();
  }

  async stop(): Promise<void> {
    this.abort.abort();
    await this.loop;
  }

  private get signal(): AbortSignal {
    return this.abort.signal;
  }

  private async run(): Promise<void> {
    const { logger, batchSize, pollIntervalMs } = this.options;
    while (!this.signal.aborted) {
      let read = 0;
      try {
        read = await this.pollOnce();
      } catch (err) {
        if (this.signal.aborted) break;
        // pollOnce retries its dependencies itself; anything arriving here is a bug, not an outage.
        logger.error({ err }, 'poll failed');
      }
      // A full batch means more is waiting: go on at once instead of falling behind by a batch per poll.
      if (read >= batchSize) continue;
      try {
        await sleep(pollIntervalMs, undefined, { signal: this.signal });
      } catch {
        break;
      }
    }
  }

  /** Reads, reports and records one batch; returns how many events it read. */
  async pollOnce(): Promise<number> {
    const { source, metrics, logger, batchSize } = this.options;
    const cursor = await this.ensureCursor();
    const rows = await this.retry('database', () =>
      source.read(cursor.lowerBound(), cursor.seenKeys(), batchSize),
    );
    metrics.polls.inc();
    metrics.lastPoll.setToCurrentTime();
    if (rows.length === 0) return 0;

    const reports: ReportBody[] = [];
    const batch = new Set<string>();
    for (const row of rows) {
      // The query skips seen keys; a key twice in one batch (id column not unique) is reported once.
      if (batch.has(row.key)) continue;
      batch.add(row.key);
      const outcome = eventToReports(row, { source: source.identity, bantime: this.options.bantime });
      if (outcome.kind === 'reports') {
        metrics.events.inc({ outcome: 'reported' });
        reports.push(...outcome.reports);
      } else if (outcome.kind === 'no-address') {
        metrics.events.inc({ outcome: 'no-address' });
        logger.warn(
          { key: row.key, eventId: row.eventId, text: row.text?.slice(0, 200) },
          'event without an address',
        );
      } else {
        this.unreadable(row, outcome.error);
      }
    }

    await this.deliver(reports);
    cursor.advance(rows);
    await this.retry('cursor', () => this.options.store.save(cursor.toJSON()));
    if (cursor.watermark !== null) metrics.watermark.set(cursor.watermark);
    logger.debug({ events: rows.length, reports: reports.length }, 'batch imported');
    return rows.length;
  }

  private unreadable(row: EventRow, error: string): void {
    this.options.metrics.events.inc({ outcome: 'unreadable' });
    this.options.logger.warn({ key: row.key, eventId: row.eventId, error }, 'unreadable event skipped');
  }

  private async ensureCursor(): Promise<Cursor> {
    if (this.cursor) return this.cursor;
    const { source, lookbackSeconds, overlapSeconds, logger } = this.options;
    const newest = await this.retry('database', () => source.newestEpoch());
    const floor = newest === null ? null : newest - lookbackSeconds;
    const cursor = Cursor.start(source.identity, source.keyScheme, floor, overlapSeconds);
    // Saved at once: a restart before the first batch must start from the same point.
    await this.retry('cursor', () => this.options.store.save(cursor.toJSON()));
    logger.info(
      { from: floor === null ? 'the first event' : new Date(floor * 1000).toISOString() },
      'no cursor yet: starting THREECX_LOOKBACK before the newest event',
    );
    this.cursor = cursor;
    return cursor;
  }

  /** Sends in chunks; a report ingest refuses is logged, counted and dropped, the rest still go. */
  private async deliver(reports: ReportBody[]): Promise<void> {
    const { metrics, logger } = this.options;
    for (let i = 0; i < reports.length; i += this.chunkSize) {
      const pending = reports.slice(i, i + this.chunkSize);
      while (pending.length > 0) {
        const result = await this.retry('ingest', () => this.options.sender.send(pending, this.signal));
        if (result.kind === 'accepted') {
          metrics.reports.inc({ outcome: 'accepted' }, pending.length);
          break;
        }
        const [refused] = pending.splice(result.index, 1);
        metrics.reports.inc({ outcome: 'rejected' });
        logger.warn(
          { ip: refused?.ip, status: result.status, reason: result.reason, error: result.error },
          'ingest refused a report; it is dropped',
        );
      }
    }
  }

  /** Retries `fn` with exponential backoff until it succeeds or the importer stops. */
  private async retry<T>(dependency: Dependency, fn: () => Promise<T>): Promise<T> {
    const { logger, metrics, retry } = this.options;
    const result = await pRetry(fn, {
      retries: Number.POSITIVE_INFINITY,
      factor: 2,
      minTimeout: retry.minMs,
      maxTimeout: retry.maxMs,
      randomize: true,
      signal: this.signal,
      // p-retry gives up on TypeErrors it does not know as network errors; here every failure is
      // worth waiting out, only stopping ends the wait.
      shouldRetry: () => !this.signal.aborted,
      onFailedAttempt: async ({ error, attemptNumber }) => {
        this.healthy[dependency] = false;
        metrics.retries.inc({ dependency });
        if (dependency === 'database') this.options.source.reset?.();
        // The first failure and every tenth are worth a line; the ones between only add noise.
        const loud = attemptNumber === 1 || attemptNumber % 10 === 0;
        (loud ? logger.warn : logger.debug).call(
          logger,
          { dependency, attempt: attemptNumber, err: error.message },
          `${dependency} unavailable, retrying`,
        );
        if (error instanceof IngestUnavailableError && error.retryAfterMs !== null) {
          // Ingest said how long (rate limit, broker away): wait that long, within the backoff's ceiling.
          await sleep(Math.min(error.retryAfterMs, retry.maxMs), undefined, { signal: this.signal }).catch(
            () => undefined,
          );
        }
      },
    });
    this.healthy[dependency] = true;
    return result;
  }
}
