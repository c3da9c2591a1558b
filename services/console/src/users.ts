// Operators who log in with a password (`banbus users add NAME`). They act with the admin scope.
import type pg from 'pg';
import { HostNameSchema } from '@banbus/core';
import { DuplicateError, ValidationError, isUniqueViolation } from '@banbus/db';
import {
  MAX_PASSWORD_LENGTH,
  MIN_PASSWORD_LENGTH,
  dummyHash,
  hashPassword,
  verifyPassword,
} from './passwords.js';

export interface ConsoleUser {
  name: string;
  createdAt: Date;
  lastLoginAt: Date | null;
}

interface UserRow {
  name: string;
  created_at: Date;
  last_login_at: Date | null;
}

const toUser = (row: UserRow): ConsoleUser => ({
  name: row.name,
  createdAt: row.created_at,
  lastLoginAt: row.last_login_at,
});

/** Throws ValidationError naming `password` when it is too short or too long. */
export function checkPassword(password: string): void {
  if (password.length < MIN_PASSWORD_LENGTH)
    throw new ValidationError(`a password needs at least ${MIN_PASSWORD_LENGTH} characters`, 'password');
  if (password.length > MAX_PASSWORD_LENGTH)
    throw new ValidationError(`a password has at most ${MAX_PASSWORD_LENGTH} characters`, 'password');
}

export class UserRepository {
  constructor(private readonly pool: pg.Pool) {}

  /** Adds a user, or with `replace` sets a new password for an existing one. */
  async add(name: string, password: string, options: { replace?: boolean } = {}): Promise<ConsoleUser> {
    const parsed = HostNameSchema.safeParse(name);
    if (!parsed.success) throw new ValidationError(parsed.error.issues[0]!.message, 'name');
    checkPassword(password);
    const hash = await hashPassword(password);
    try {
      const { rows } = await this.pool.query<UserRow>(
        `INSERT INTO console_users (name, password_hash) VALUES ($1, $2)
         ${options.replace ? 'ON CONFLICT (name) DO UPDATE SET password_hash = EXCLUDED.password_hash' : ''}
         RETURNING name, created_at, last_login_at`,
        [parsed.data, hash],
      );
      if (options.replace) {
        // A new password ends the sessions opened with the old one.
        await this.pool.query('DELETE FROM console_sessions WHERE user_name = $1', [parsed.data]);
      }
      return toUser(rows[0]!);
    } catch (err) {
      if (isUniqueViolation(err)) throw new DuplicateError(`user ${parsed.data} already exists`);
      throw err;
    }
  }

  async list(): Promise<ConsoleUser[]> {
    const { rows } = await this.pool.query<UserRow>(
      'SELECT name, created_at, last_login_at FROM console_users ORDER BY name',
    );
    return rows.map(toUser);
  }

  /** Removes the user and (by the foreign key) every session of theirs; false when there was none. */
  async remove(name: string): Promise<boolean> {
    const { rowCount } = await this.pool.query('DELETE FROM console_users WHERE name = $1', [name]);
    return (rowCount ?? 0) > 0;
  }

  /** The user when the password matches; null otherwise (same cost either way). */
  async verify(name: string, password: string): Promise<ConsoleUser | null> {
    if (password.length > MAX_PASSWORD_LENGTH) return null;
    const { rows } = await this.pool.query<UserRow & { password_hash: string }>(
      'SELECT name, created_at, last_login_at, password_hash FROM console_users WHERE name = $1',
      [name],
    );
    const row = rows[0];
    const ok = await verifyPassword(password, row?.password_hash ?? (await dummyHash()));
    if (!row || !ok) return null;
    await this.pool.query('UPDATE console_users SET last_login_at = now() WHERE name = $1', [row.name]);
    return toUser(row);
  }
}
