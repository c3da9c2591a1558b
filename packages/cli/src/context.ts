import { CommonEnvSchema, parseEnv } from '@banbus/core';
import type pg from 'pg';
import type * as DbModuleType from '@banbus/db';
import type { CliIo } from './io.js';

export type DbModule = typeof DbModuleType;

/**
 * Opens a pool on DATABASE_URL for one command and closes it afterwards. @banbus/db (pg,
 * node-pg-migrate) is loaded here, not when the CLI starts: `banbus run route-applier` never needs it,
 * and a host's applier should not carry it in memory.
 */
export async function withPool<T>(io: CliIo, fn: (pool: pg.Pool, db: DbModule) => Promise<T>): Promise<T> {
  const { DATABASE_URL } = parseEnv(CommonEnvSchema, io.env);
  const db = await import('@banbus/db');
  const pool = db.createPool(DATABASE_URL, { max: 2 });
  try {
    return await fn(pool, db);
  } finally {
    await pool.end();
  }
}
