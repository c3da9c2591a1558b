import type { Report } from '@banbus/core';
import type { ReportPublisher } from './app.js';

interface Pending {
  reports: readonly Report[];
  resolve(): void;
  reject(err: unknown): void;
}

/**
 * Publishes the reports of every request that arrives in the same event-loop turn together: one
 * packed message and one broker confirm for all of them instead of one each. Each request still
 * hears only after the broker confirmed its reports (rule 1), and a failure fails every request of
 * the group — none of them is answered 202. Under load this is what keeps single-report requests
 * from being bound by the broker's confirmed-publish rate; when idle, a group is one request and
 * costs nothing extra (flushing waits for no timer, only for the current turn to end).
 */
export class CoalescingPublisher implements ReportPublisher {
  private pending: Pending[] = [];
  private scheduled = false;

  constructor(
    private readonly target: ReportPublisher,
    /** Largest group; a turn that gathers more is published in several. */
    private readonly maxReports = 5000,
  ) {}

  get connected(): boolean {
    return this.target.connected;
  }

  publishReports(reports: readonly Report[]): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.pending.push({ reports, resolve, reject });
      if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(() => this.flush());
      }
    });
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
    this.target.publishReports(reports).then(
      () => group.forEach((p) => p.resolve()),
      (err: unknown) => group.forEach((p) => p.reject(err)),
    );
  }
}
