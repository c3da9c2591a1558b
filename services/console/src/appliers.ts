// Appliers report in with a heartbeat: how far they applied the decision stream. The console shows each
// one's seq, its lag behind the published seq, and when it last reported.
import type pg from 'pg';
import type { Heartbeat } from './schemas.js';

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
