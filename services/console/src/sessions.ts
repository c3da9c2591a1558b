// Console sessions, kept in PostgreSQL so that several console processes (and restarts) share them. The
// cookie carries 256 random bits; the table holds only their sha256.
import { createHash, randomBytes } from 'node:crypto';
import type pg from 'pg';
import type { Scope } from '@banbus/core';

export interface Session {
  actor: string;
  scopes: Scope[];
  csrf: string;
  expiresAt: Date;
}

const hashId = (id: string) => createHash('sha256').update(id, 'utf8').digest();

/** Password users act with every scope; a host's session has its token's scopes, read at every request. */
const USER_SCOPES: Scope[] = ['read', 'admin'];

export class SessionStore {
  constructor(
    private readonly pool: pg.Pool,
    private readonly ttlSeconds: number,
  ) {}

  /** Opens a session for a password user or a token's host; returns the cookie value and the CSRF token. */
  async create(
    owner: { user: string } | { hostId: number; actor: string },
  ): Promise<{ id: string; session: Session }> {
    const id = randomBytes(32).toString('base64url');
    const csrf = randomBytes(32).toString('base64url');
    const actor = 'user' in owner ? owner.user : owner.actor;
    await this.pool.query(
      `INSERT INTO console_sessions (id_hash, actor, user_name, host_id, csrf, expires_at)
       VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))`,
      [
        hashId(id),
        actor,
        'user' in owner ? owner.user : null,
        'hostId' in owner ? owner.hostId : null,
        csrf,
        this.ttlSeconds,
      ],
    );
    const session = await this.lookup(id);
    if (!session) throw new Error('the session just created cannot be read back');
    return { id, session };
  }

  /** The live session for a cookie value: null when unknown, expired, or its host was revoked. */
  async lookup(id: string): Promise<Session | null> {
    if (id.length < 16 || id.length > 128) return null;
    const { rows } = await this.pool.query<{
      actor: string;
      csrf: string;
      expires_at: Date;
      user_name: string | null;
      host_scopes: Scope[] | null;
    }>(
      `SELECT s.actor, s.csrf, s.expires_at, s.user_name, h.scopes AS host_scopes
         FROM console_sessions s LEFT JOIN hosts h ON h.id = s.host_id
        WHERE s.id_hash = $1 AND s.expires_at > now()
          AND (s.host_id IS NULL OR h.revoked_at IS NULL)`,
      [hashId(id)],
    );
    const row = rows[0];
    if (!row) return null;
    return {
      actor: row.actor,
      scopes: row.user_name !== null ? USER_SCOPES : (row.host_scopes ?? []),
      csrf: row.csrf,
      expiresAt: row.expires_at,
    };
  }

  async destroy(id: string): Promise<void> {
    await this.pool.query('DELETE FROM console_sessions WHERE id_hash = $1', [hashId(id)]);
  }

  /** Deletes expired sessions; returns how many. */
  async sweep(): Promise<number> {
    const { rowCount } = await this.pool.query('DELETE FROM console_sessions WHERE expires_at <= now()');
    return rowCount ?? 0;
  }
}
