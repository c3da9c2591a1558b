import { CommonEnvSchema, parseEnv } from '@banbus/core';
import { createPool } from '@banbus/db';
import type pg from 'pg';
import type { CliIo } from './io.js';

/** Opens a pool on DATABASE_URL for one command and closes it afterwards. */
export async function withPool<T>(io: CliIo, fn: (pool: pg.Pool) => Promise<T>): Promise<T> {
  const { DATABASE_URL } = parseEnv(CommonEnvSchema, io.env);
  const pool = createPool(DATABASE_URL, { max: 2 });
  try {
    return await fn(pool);
  } finally {
    await pool.end();
  }
}
