import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { runner } from 'node-pg-migrate';
import type { Logger } from '@banbus/runtime';

export const MIGRATIONS_TABLE = 'pgmigrations';

/**
 * The repository's migrations/ directory. This file sits in packages/db/src (run from source) or
 * packages/db/dist (built), both three levels below the repository root. Containers that lay files out
 * differently set BANBUS_MIGRATIONS_DIR.
 */
export function migrationsDir(): string {
  const fromEnv = process.env.BANBUS_MIGRATIONS_DIR;
  if (fromEnv) return fromEnv;
  return fileURLToPath(new URL('../../../migrations', import.meta.url));
}

/**
 * The database pg connects to for this URL (pg decodes the path with decodeURI and falls back to
 * PGDATABASE / the user name), so that ensureDatabase creates exactly the database pg will then open.
 */
export function databaseName(databaseUrl: string): string {
  const client = new pg.Client({ connectionString: databaseUrl });
  // Without a database the server opens the one named like the user.
  const name = client.database || client.user;
  if (!name) throw new Error('the database URL names no database');
  return name;
}

/** The URL with its database part replaced (query parameters such as host=/run/postgresql are kept). */
export function withDatabase(databaseUrl: string, database: string): string {
  const url = new URL(databaseUrl);
  // The URL setter escapes what a path cannot hold; '%' we escape ourselves, and pg's decodeURI undoes both.
  url.pathname = `/${database.replace(/%/g, '%25')}`;
  const result = url.toString();
  if (databaseName(result) !== database) {
    throw new Error(`database name ${JSON.stringify(database)} cannot be expressed in a connection URL`);
  }
  return result;
}

/**
 * Creates the database the URL names when it does not exist yet, connecting to the `postgres` database of
 * the same server to do so. Returns true when it created it. Safe to run from several processes at once.
 */
export async function ensureDatabase(databaseUrl: string): Promise<boolean> {
  const name = databaseName(databaseUrl);
  // Try the target first: a role that may not connect to 'postgres' can still use an existing database.
  const probe = new pg.Client({ connectionString: databaseUrl, application_name: 'banbus-migrate' });
  // Failures surface through the awaited calls; the event alone would end the process.
  probe.on('error', () => {});
  try {
    await probe.connect();
    return false;
  } catch (err) {
    if ((err as { code?: string }).code !== '3D000') throw err; // 3D000 invalid_catalog_name: no such database
  } finally {
    await probe.end().catch(() => {});
  }
  const admin = new pg.Client({
    connectionString: withDatabase(databaseUrl, 'postgres'),
    application_name: 'banbus-migrate',
  });
  admin.on('error', () => {});
  await admin.connect();
  try {
    const { rowCount } = await admin.query('SELECT 1 FROM pg_database WHERE datname = $1', [name]);
    if (rowCount) return false;
    await admin.query(`CREATE DATABASE ${admin.escapeIdentifier(name)}`);
    return true;
  } catch (err) {
    // Another process created it between our check and our CREATE.
    const code = (err as { code?: string }).code;
    if (code === '42P04' || code === '23505') return false;
    throw err;
  } finally {
    await admin.end().catch(() => {});
  }
}

export interface MigrateOptions {
  direction?: 'up' | 'down';
  /** How many migrations to run; default all for up, one for down (Infinity = all). */
  count?: number;
  logger?: Logger;
}

/** Runs the SQL migrations in migrations/ with node-pg-migrate; returns the names of those it ran. */
export async function migrate(databaseUrl: string, options: MigrateOptions = {}): Promise<string[]> {
  const dir = migrationsDir();
  if (!existsSync(dir)) throw new Error(`migrations directory not found: ${dir} (set BANBUS_MIGRATIONS_DIR)`);
  const logger = options.logger;
  // Our own client rather than node-pg-migrate's, for its 'error' event: a connection the server ends
  // (a restart, pg_terminate_backend) fails the statement it runs, and without a listener the event
  // would also end the process.
  const client = new pg.Client({ connectionString: databaseUrl, application_name: 'banbus-migrate' });
  client.on('error', (err) => logger?.warn({ err: err.message }, 'the migration connection failed'));
  await client.connect();
  try {
    return await runMigrations(client, dir, options);
  } finally {
    await client.end().catch(() => {});
  }
}

async function runMigrations(client: pg.Client, dir: string, options: MigrateOptions): Promise<string[]> {
  const logger = options.logger;
  const ran = await runner({
    dbClient: client,
    dir,
    migrationsTable: MIGRATIONS_TABLE,
    direction: options.direction ?? 'up',
    ...(options.count !== undefined ? { count: options.count } : {}),
    checkOrder: true,
    // All pending migrations commit together or not at all.
    singleTransaction: true,
    // Several services may start at once against a fresh database: the later ones wait for the first.
    advisoryLockMode: 'wait',
    // node-pg-migrate prints to the console by default; route its lines to our logger (or nowhere).
    logger: {
      info: (msg: string) => logger?.info(msg),
      warn: (msg: string) => logger?.warn(msg),
      error: (msg: string) => logger?.error(msg),
    },
  });
  return ran.map((m) => m.name);
}
