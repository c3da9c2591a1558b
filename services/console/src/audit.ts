// Who changed what: every change made through the console, its API or the CLI is recorded here.
import type pg from 'pg';

export const AUDIT_ACTIONS = [
  'login',
  'login-failed',
  'logout',
  'ban',
  'unban',
  'allowlist-add',
  'allowlist-remove',
  'host-add',
  'host-revoke',
  'applier-forget',
] as const;
export type AuditAction = (typeof AUDIT_ACTIONS)[number];

export interface AuditEntry {
  id: number;
  at: string;
  actor: string;
  action: AuditAction;
  target: string | null;
  detail: Record<string, unknown>;
  client: string | null;
}

export interface Actor {
  name: string;
  /** The client's address when the change came over HTTP. */
  client?: string | undefined;
}

export class AuditLog {
  private readonly listeners = new Set<(entry: AuditEntry) => void>();

  constructor(private readonly pool: pg.Pool) {}

  async record(
    actor: Actor,
    action: AuditAction,
    target: string | null,
    detail: Record<string, unknown> = {},
  ): Promise<AuditEntry> {
    const { rows } = await this.pool.query<{ id: string; at: Date }>(
      `INSERT INTO audit_log (actor, action, target, detail, client) VALUES ($1, $2, $3, $4, $5) RETURNING id, at`,
      [actor.name, action, target, JSON.stringify(detail), actor.client ?? null],
    );
    const entry: AuditEntry = {
      id: Number(rows[0]!.id),
      at: rows[0]!.at.toISOString(),
      actor: actor.name,
      action,
      target,
      detail,
      client: actor.client ?? null,
    };
    for (const listener of this.listeners) listener(entry);
    return entry;
  }

  /** Newest first; `before` is the id of the last entry of the previous page. */
  async list(
    options: { limit?: number; before?: number } = {},
  ): Promise<{ items: AuditEntry[]; next: number | null }> {
    const limit = options.limit ?? 100;
    const { rows } = await this.pool.query<{
      id: string;
      at: Date;
      actor: string;
      action: AuditAction;
      target: string | null;
      detail: Record<string, unknown>;
      client: string | null;
    }>(
      `SELECT id, at, actor, action, target, detail, client FROM audit_log
        ${options.before !== undefined ? 'WHERE id < $2' : ''} ORDER BY id DESC LIMIT $1`,
      options.before !== undefined ? [limit + 1, options.before] : [limit + 1],
    );
    const items = rows.slice(0, limit).map((r) => ({ ...r, id: Number(r.id), at: r.at.toISOString() }));
    return { items, next: rows.length > limit ? items[items.length - 1]!.id : null };
  }

  /** Called after each entry is recorded in this process (the live view). */
  onRecord(listener: (entry: AuditEntry) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
}
