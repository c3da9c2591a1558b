import type pg from 'pg';
import type { z } from 'zod';
import { HostNameSchema, HostScopesSchema, type Scope } from '@banbus/core';
import { DuplicateError, ValidationError, isUniqueViolation } from './errors.js';
import { generateToken, hashToken } from './tokens.js';

export interface HostRecord {
  id: number;
  name: string;
  scopes: Scope[];
  createdAt: Date;
  lastSeenAt: Date | null;
  revokedAt: Date | null;
}

interface HostRow {
  id: string;
  name: string;
  scopes: Scope[];
  created_at: Date;
  last_seen_at: Date | null;
  revoked_at: Date | null;
}

// Never token_hash: nothing outside this file needs it.
const COLUMNS = 'id, name, scopes, created_at, last_seen_at, revoked_at';

function toRecord(row: HostRow): HostRecord {
  return {
    id: Number(row.id),
    name: row.name,
    scopes: row.scopes,
    createdAt: row.created_at,
    lastSeenAt: row.last_seen_at,
    revokedAt: row.revoked_at,
  };
}

function parse<T>(schema: z.ZodType<T>, value: unknown, field: string): T {
  const result = schema.safeParse(value);
  if (!result.success)
    throw new ValidationError(result.error.issues[0]?.message ?? `invalid ${field}`, field);
  return result.data;
}

/** Hosts and their tokens. Only the sha256 of a token is stored; the token itself is returned once by add(). */
export class HostRepository {
  constructor(private readonly pool: pg.Pool) {}

  /** Throws ValidationError for a bad name or scopes, DuplicateError when the name is taken. */
  async add(name: string, scopes: Scope[]): Promise<{ host: HostRecord; token: string }> {
    const validName = parse(HostNameSchema, name, 'name');
    const validScopes = parse(HostScopesSchema, scopes, 'scopes');
    const token = generateToken();
    try {
      const { rows } = await this.pool.query<HostRow>(
        `INSERT INTO hosts (name, token_hash, scopes) VALUES ($1, $2, $3::text[]) RETURNING ${COLUMNS}`,
        [validName, hashToken(token), validScopes],
      );
      return { host: toRecord(rows[0]!), token };
    } catch (err) {
      if (isUniqueViolation(err)) {
        // token_hash cannot realistically collide (256 random bits), so this is the name.
        throw new DuplicateError(`host ${validName} already exists`, err.constraint);
      }
      throw err;
    }
  }

  async list(): Promise<HostRecord[]> {
    const { rows } = await this.pool.query<HostRow>(`SELECT ${COLUMNS} FROM hosts ORDER BY name`);
    return rows.map(toRecord);
  }

  /**
   * Revokes the host's token. True when the host exists (now revoked; a second revoke keeps the first
   * revocation time), false when there is no such host.
   */
  async revoke(name: string): Promise<boolean> {
    const { rowCount } = await this.pool.query(
      'UPDATE hosts SET revoked_at = coalesce(revoked_at, now()) WHERE name = $1',
      [name],
    );
    return (rowCount ?? 0) > 0;
  }

  /** The host holding this token, revoked or not (the caller decides between 401 and 403). */
  async findByToken(token: string): Promise<HostRecord | null> {
    const { rows } = await this.pool.query<HostRow>(`SELECT ${COLUMNS} FROM hosts WHERE token_hash = $1`, [
      hashToken(token),
    ]);
    return rows[0] ? toRecord(rows[0]) : null;
  }

  /** Records that these hosts were seen at `at`, in one statement; never moves last_seen_at backwards. */
  async touch(names: readonly string[], at: Date = new Date()): Promise<void> {
    const unique = [...new Set(names)];
    if (unique.length === 0) return;
    await this.pool.query(
      `UPDATE hosts SET last_seen_at = $2
        WHERE name = ANY($1::text[]) AND (last_seen_at IS NULL OR last_seen_at < $2)`,
      [unique, at],
    );
  }
}
