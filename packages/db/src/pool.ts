import pg from 'pg';
import type { Logger } from '@banbus/runtime';

export interface PoolOptions {
  max?: number;
  logger?: Logger;
  /** Shown in pg_stat_activity; defaults to 'banbus'. */
  applicationName?: string;
}

/**
 * A pg pool whose connection errors (the server restarted, a connection was killed) are logged instead
 * of crashing the process. pg emits them on the pool while a client is idle, but on the client itself
 * while it is checked out — e.g. a transaction waiting for the broker's confirm — and an unhandled
 * 'error' event would be fatal. The query in flight, if any, still rejects for its caller.
 */
export function createPool(databaseUrl: string, options: PoolOptions = {}): pg.Pool {
  const pool = new pg.Pool({
    connectionString: databaseUrl,
    max: options.max ?? 10,
    application_name: options.applicationName ?? 'banbus',
    // A query waiting for a connection while the database is away fails instead of waiting forever,
    // so callers see a transient error and can back off.
    connectionTimeoutMillis: 10_000,
    keepAlive: true,
  });
  const logger = options.logger;
  pool.on('error', (err: Error & { code?: string }) => {
    if (logger)
      logger.warn({ err: { message: err.message, code: err.code } }, 'idle PostgreSQL connection failed');
  });
  pool.on('connect', (client) => {
    client.on('error', (err: Error & { code?: string }) => {
      logger?.warn({ err: { message: err.message, code: err.code } }, 'PostgreSQL connection failed');
    });
  });
  return pool;
}
