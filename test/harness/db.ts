// Test databases: every test file gets its own, so files can run in parallel against one server.
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { migrate, withDatabase } from '@banbus/db';

const LOCAL_URL = 'postgres://postgres@127.0.0.1:5432/postgres';
const NO_POSTGRES =
  'No PostgreSQL: set DATABASE_URL or start PostgreSQL on 127.0.0.1:5432 (or a Docker engine for testcontainers).';

async function answers(url: string): Promise<boolean> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 2_000 });
  client.on('error', () => {});
  try {
    await client.connect();
    await client.query('SELECT 1');
    return true;
  } catch {
    return false;
  } finally {
    await client.end().catch(() => {});
  }
}

async function startContainer(): Promise<string | undefined> {
  // Imported only here: loading testcontainers probes for Docker, which most runs never need.
  const { getContainerRuntimeClient } = await import('testcontainers');
  try {
    await getContainerRuntimeClient();
  } catch {
    return undefined; // no Docker engine answers
  }
  const { PostgreSqlContainer } = await import('@testcontainers/postgresql');
  const container = await new PostgreSqlContainer('postgres:15-alpine').start();
  // Ryuk removes the container when this process exits.
  return container.getConnectionUri();
}

let base: Promise<string> | undefined;

/**
 * URL of a PostgreSQL server tests may create databases on (it names a database that exists, used for
 * CREATE/DROP DATABASE): DATABASE_URL, else the local server, else a testcontainers PostgreSQL.
 */
export function databaseBaseUrl(): Promise<string> {
  base ??= (async () => {
    if (process.env.DATABASE_URL) return process.env.DATABASE_URL;
    if (await answers(LOCAL_URL)) return LOCAL_URL;
    const url = await startContainer().catch(() => undefined);
    if (url) return url;
    throw new Error(NO_POSTGRES);
  })();
  return base;
}

async function withAdmin<T>(fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({
    connectionString: await databaseBaseUrl(),
    application_name: 'banbus-test-harness',
  });
  client.on('error', () => {});
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end().catch(() => {});
  }
}

export interface TestDatabase {
  url: string;
  name: string;
  /** Terminates every connection to the database and drops it. */
  drop(): Promise<void>;
}

/** Creates `banbus_t_<random>` and (unless migrate: false) runs the migrations on it. */
export async function createTestDatabase(options: { migrate?: boolean } = {}): Promise<TestDatabase> {
  const name = `banbus_t_${randomBytes(6).toString('hex')}`;
  await withAdmin((c) => c.query(`CREATE DATABASE ${c.escapeIdentifier(name)}`));
  const url = withDatabase(await databaseBaseUrl(), name);
  const drop = () =>
    withAdmin(async (c) => {
      // A pool or listener the test forgot to close must not keep the database alive; a reconnecting
      // client may sneak in between terminate and DROP, so try a few times.
      for (let attempt = 1; ; attempt++) {
        await c.query(
          'SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()',
          [name],
        );
        try {
          await c.query(`DROP DATABASE IF EXISTS ${c.escapeIdentifier(name)}`);
          return;
        } catch (err) {
          if ((err as { code?: string }).code !== '55006' || attempt >= 20) throw err; // 55006: object_in_use
        }
      }
    });
  if (options.migrate !== false) {
    try {
      await migrate(url);
    } catch (err) {
      await drop().catch(() => {});
      throw err;
    }
  }
  return { url, name, drop };
}
