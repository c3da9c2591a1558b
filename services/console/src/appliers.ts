// How far each applier applied the decision stream. Two ways in: the console reads the route-appliers
// listed in CONSOLE_APPLIERS (their GET /v1/status), and any applier or script may push the same object to
// POST /v1/admin/appliers/heartbeat with a read token (one behind NAT the console cannot reach). The
// console shows each one's seq, its lag behind the published seq, and when it last reported.
import type pg from 'pg';
import { HeartbeatSchema, type Heartbeat } from './schemas.js';

export class ApplierStatusRepository {
  constructor(private readonly pool: pg.Pool) {}

  /** Upserts the applier's row; `reportedBy` is the host whose token sent it. */
  async record(heartbeat: Heartbeat, reportedBy: string): Promise<void> {
    await this.pool.query(
      `INSERT INTO applier_status (applier, seq, backend, entries, ready, lag_seconds, reported_by)
       VALUES ($1, $2, $3, $4, $5, $6, $7)
       ON CONFLICT (applier) DO UPDATE SET seq = EXCLUDED.seq, backend = EXCLUDED.backend,
         entries = EXCLUDED.entries, ready = EXCLUDED.ready, lag_seconds = EXCLUDED.lag_seconds,
         reported_by = EXCLUDED.reported_by, reported_at = now()`,
      [
        heartbeat.host,
        heartbeat.seq,
        heartbeat.backend ?? null,
        heartbeat.entries ?? null,
        heartbeat.ready ?? null,
        heartbeat.lag?.seconds ?? null,
        reportedBy,
      ],
    );
  }

  /** Forgets an applier (a retired host). */
  async remove(applier: string): Promise<boolean> {
    const { rowCount } = await this.pool.query('DELETE FROM applier_status WHERE applier = $1', [applier]);
    return (rowCount ?? 0) > 0;
  }
}

/** What one read of an applier gave: its status, or why there was none. */
export type PollResult = { url: string; heartbeat: Heartbeat } | { url: string; error: string };

/**
 * Reads the status of the route-appliers in CONSOLE_APPLIERS (their GET /v1/status on APPLIER_PORT) and
 * records it like a heartbeat. Pulling, not waiting for pushes: the route-applier knows nothing of the
 * console and needs no token for it. An applier that does not answer keeps its last row, which turns
 * stale after CONSOLE_APPLIER_STALE — that is how the overview shows a host gone quiet.
 */
export class ApplierPoller {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<PollResult[]> | undefined;
  /** Per URL: the last error logged, so a host that stays down is logged once, not every poll. */
  private readonly failing = new Map<string, string>();

  constructor(
    private readonly options: {
      urls: readonly string[];
      intervalMs: number;
      repository: ApplierStatusRepository;
      logger: { warn(obj: object, msg: string): void; info(obj: object, msg: string): void };
      /** Called after each applier's status was recorded. */
      onStatus?: (heartbeat: Heartbeat) => void;
      timeoutMs?: number;
      fetch?: typeof fetch;
    },
  ) {}

  start(): void {
    if (this.options.urls.length === 0) return;
    void this.poll();
    this.timer = setInterval(() => void this.poll(), this.options.intervalMs);
    this.timer.unref();
  }

  /** Reads every applier once; a read still under way is joined rather than doubled. */
  poll(): Promise<PollResult[]> {
    this.running ??= Promise.all(this.options.urls.map((url) => this.pollOne(url))).finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  private async pollOne(url: string): Promise<PollResult> {
    const statusUrl = `${url}/v1/status`;
    try {
      const res = await (this.options.fetch ?? fetch)(statusUrl, {
        headers: { accept: 'application/json' },
        signal: AbortSignal.timeout(this.options.timeoutMs ?? 5_000),
      });
      if (!res.ok) throw new Error(`answered ${res.status}`);
      const parsed = HeartbeatSchema.safeParse(await res.json());
      if (!parsed.success) throw new Error(`answered no applier status (${parsed.error.issues[0]!.message})`);
      await this.options.repository.record(parsed.data, url.slice(0, 200));
      if (this.failing.delete(url)) this.options.logger.info({ url }, 'applier answers again');
      this.options.onStatus?.(parsed.data);
      return { url, heartbeat: parsed.data };
    } catch (err) {
      const cause = (err as { cause?: { code?: string } }).cause?.code;
      const error = cause ?? (err as Error).message;
      if (this.failing.get(url) !== error) {
        this.failing.set(url, error);
        this.options.logger.warn({ url: statusUrl, err: error }, 'cannot read the applier status');
      }
      return { url, error };
    }
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.running?.catch(() => undefined);
  }
}
