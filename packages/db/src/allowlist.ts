import type pg from 'pg';
import { normalizeTarget, targetFromDb } from '@banbus/core';
import { CHANNELS } from './channels.js';

export interface AllowlistEntry {
  id: number;
  /** Canonical text ("10.0.0.0/8", "192.0.2.1"). */
  network: string;
  comment: string | null;
  createdBy: string | null;
  createdAt: Date;
  expiresAt: Date | null;
}

/** What a banbus_allowlist notification carries. Listeners usually just re-read active(). */
export interface AllowlistNotification {
  op: 'add' | 'remove';
  network: string;
}

interface AllowlistRow {
  id: string;
  network: string;
  comment: string | null;
  created_by: string | null;
  created_at: Date;
  expires_at: Date | null;
}

const COLUMNS = 'id, network::text AS network, comment, created_by, created_at, expires_at';

function toEntry(row: AllowlistRow): AllowlistEntry {
  return {
    id: Number(row.id),
    network: targetFromDb(row.network),
    comment: row.comment,
    createdBy: row.created_by,
    createdAt: row.created_at,
    expiresAt: row.expires_at,
  };
}

/**
 * Networks that are never banned. Every change notifies banbus_allowlist in the same statement, so a
 * listener is told exactly when the change is committed, never before and never for a rolled-back one.
 */
export class AllowlistRepository {
  constructor(private readonly pool: pg.Pool) {}

  /**
   * Adds a network (any accepted spelling; stored canonical). Adding a network that is already listed
   * replaces its comment, creator and expiry. Throws TargetError for an invalid network.
   */
  async add(entry: {
    network: string;
    comment?: string | null;
    createdBy?: string | null;
    expiresAt?: Date | null;
  }): Promise<AllowlistEntry> {
    const network = normalizeTarget(entry.network);
    const payload: AllowlistNotification = { op: 'add', network };
    const { rows } = await this.pool.query<AllowlistRow>(
      `WITH saved AS (
         INSERT INTO allowlist (network, comment, created_by, expires_at) VALUES ($1::cidr, $2, $3, $4)
         ON CONFLICT (network) DO UPDATE
           SET comment = EXCLUDED.comment, created_by = EXCLUDED.created_by, expires_at = EXCLUDED.expires_at
         RETURNING ${COLUMNS}
       )
       SELECT saved.*, pg_notify($5, $6) FROM saved`,
      [
        network,
        entry.comment ?? null,
        entry.createdBy ?? null,
        entry.expiresAt ?? null,
        CHANNELS.allowlist,
        JSON.stringify(payload),
      ],
    );
    return toEntry(rows[0]!);
  }

  /** Every entry, expired ones included, ordered by network. */
  async list(): Promise<AllowlistEntry[]> {
    const { rows } = await this.pool.query<AllowlistRow>(
      `SELECT ${COLUMNS} FROM allowlist ORDER BY allowlist.network`,
    );
    return rows.map(toEntry);
  }

  /** Removes the entry for exactly this network; false when there was none. Throws TargetError for an invalid one. */
  async remove(network: string): Promise<boolean> {
    const canonical = normalizeTarget(network);
    const payload: AllowlistNotification = { op: 'remove', network: canonical };
    const { rowCount } = await this.pool.query(
      `WITH removed AS (DELETE FROM allowlist WHERE network = $1::cidr RETURNING id)
       SELECT pg_notify($2, $3) FROM removed`,
      [canonical, CHANNELS.allowlist, JSON.stringify(payload)],
    );
    return (rowCount ?? 0) > 0;
  }

  /** Canonical texts of the networks in force at `now`. */
  async active(now: Date = new Date()): Promise<string[]> {
    const { rows } = await this.pool.query<{ network: string }>(
      `SELECT network::text AS network FROM allowlist
        WHERE expires_at IS NULL OR expires_at > $1
        ORDER BY allowlist.network`,
      [now],
    );
    return rows.map((row) => targetFromDb(row.network));
  }
}
