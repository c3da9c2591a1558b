import type { Report } from '@banbus/core';
import type { ReportPublisher } from './app.js';

interface Pending {
  reports: readonly Report[];
  resolve(): void;
  reject(err: unknown): void;
}

/**
 * Publishes the reports of concurrent requests together: one packed message and one broker confirm
 * for all of them instead of one each (group commit). A group is what arrived during the current
 * event-loop turn, or — while `maxInFlight` groups already wait for their confirm — everything that
 * arrives until one of them is confirmed. Each request still hears only after the broker confirmed
 * its reports (rule 1), and a failure fails every request of the group: none is answered 202.
 * Under load this keeps single-report requests from being bound by the broker's confirmed-publish
 * rate and leaves the broker's share of the CPU to ingest; when idle, a group is one request and
 * costs nothing extra (flushing waits for no timer, only for the current turn to end).
 */
export interface CoalescingOptions {
  /** Largest group; a turn that gathers more is published in several. */
  maxReports?: number;
  /** Groups waiting for their confirm at once; requests arriving beyond that join the next group. */
  maxInFlight?: number;
  /**
   * Longest wait for a group's confirm before its requests are failed (answered 503). One timer per
   * group, not per request: a timer per request cost ingest measurable CPU per report.
   */
  timeoutMs?: number;
}

/** A group that neither confirmed nor failed in time. */
export class ConfirmTimeoutError extends Error {
  constructor(ms: number) {
    super(`no broker confirm within ${ms} ms`);
    this.name = 'ConfirmTimeoutError';
  }
}

export class CoalescingPublisher implements ReportPublisher {
  private pending: Pending[] = [];
  private scheduled = false;
  private inFlight = 0;

  private readonly maxReports: number;
  private readonly maxInFlight: number;
  private readonly timeoutMs: number;

  constructor(
    private readonly target: ReportPublisher,
    options: CoalescingOptions = {},
  ) {
    this.maxReports = options.maxReports ?? 5000;
    this.maxInFlight = options.maxInFlight ?? 2;
    this.timeoutMs = options.timeoutMs ?? 10_000;
  }

  get connected(): boolean {
    return this.target.connected;
  }

  publishReports(reports: readonly Report[]): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.pending.push({ reports, resolve, reject });
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.scheduled || this.pending.length === 0 || this.inFlight >= this.maxInFlight) return;
    this.scheduled = true;
    setImmediate(() => this.flush());
  }

  private flush(): void {
    this.scheduled = false;
    const pending = this.pending;
    this.pending = [];
    let group: Pending[] = [];
    let size = 0;
    for (const p of pending) {
      if (size > 0 && size + p.reports.length > this.maxReports) {
        this.publish(group);
        group = [];
        size = 0;
      }
      group.push(p);
      size += p.reports.length;
    }
    if (group.length > 0) this.publish(group);
  }

  private publish(group: Pending[]): void {
    const reports = group.length === 1 ? group[0]!.reports : group.flatMap((p) => p.reports);
    this.inFlight += 1;
    let settled = false;
    // The first of confirm, failure or deadline answers the group; a confirm arriving after the
    // deadline changes nothing (the clients already heard 503 and will retry: report ids keep that
    // idempotent).
    const settle = (err: unknown) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (err === undefined) for (const p of group) p.resolve();
      else for (const p of group) p.reject(err);
      this.inFlight -= 1;
      this.schedule();
    };
    const timer = setTimeout(() => settle(new ConfirmTimeoutError(this.timeoutMs)), this.timeoutMs);
    this.target.publishReports(reports).then(
      () => settle(undefined),
      (err: unknown) => settle(err ?? new Error('publish failed')),
    );
  }
}
