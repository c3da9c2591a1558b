// Per-host rate limit on reports (design rule 4): a broken or hijacked host must not flood the fleet.
import { RateLimiterMemory, RateLimiterRes } from 'rate-limiter-flexible';
import { HttpError } from '@banbus/runtime';

export class ReportRateLimiter {
  private readonly limiter: RateLimiterMemory;
  /** Most points one window holds. */
  readonly capacity: number;

  /**
   * `rate` reports per second sustained, `burst` at once. rate-limiter-flexible counts in fixed windows,
   * so this is a window of burst/rate seconds holding `burst` points: a quiet host may send its burst at
   * once, and over any longer stretch it averages `rate` per second.
   */
  constructor(rate: number, burst: number) {
    const duration = Math.max(1, Math.ceil(burst / rate));
    this.capacity = Math.max(burst, rate * duration);
    this.limiter = new RateLimiterMemory({ keyPrefix: 'ingest', points: this.capacity, duration });
  }

  /**
   * Takes `reports` points from the host's window, or throws 429 with Retry-After. A batch larger than
   * a whole window costs the whole window (it could never pass otherwise, as INGEST_MAX_BATCH may
   * exceed the burst): such a batch needs a full window and leaves nothing for the rest of it.
   */
  async consume(host: string, reports: number): Promise<void> {
    try {
      await this.limiter.consume(host, Math.min(reports, this.capacity));
    } catch (err) {
      if (err instanceof RateLimiterRes) {
        const seconds = Math.max(1, Math.ceil(err.msBeforeNext / 1000));
        throw new HttpError(429, `rate limit exceeded for host ${host}, retry in ${seconds} s`, undefined, {
          'Retry-After': String(seconds),
        });
      }
      throw err;
    }
  }
}
