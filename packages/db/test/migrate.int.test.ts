import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { ensureDatabase, migrate, migrationsDir } from '../src/migrate.js';
import { createTestDatabase, databaseBaseUrl, type TestDatabase } from '../../../test/harness/db.js';
import { withDatabase } from '../src/migrate.js';
import { waitFor } from '../../../test/harness/wait.js';

const SCHEMA_TABLES = [
  'active_bans',
  'allowlist',
  'applier_status',
  'audit_log',
  'console_sessions',
  'console_users',
  'decision_log',
  'decision_relay',
  'decision_seq',
  'decisions',
  'hosts',
  'offenders',
  'reports',
];

const MIGRATIONS = ['1732000000000_initial', '1733000000000_console'];

let db: TestDatabase;
const others: TestDatabase[] = [];
before(async () => {
  db = await createTestDatabase({ migrate: false });
});
after(async () => {
  await db?.drop();
  for (const other of others) await other.drop();
});

async function tables(url: string): Promise<string[]> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    const { rows } = await client.query<{ table_name: string }>(
      `SELECT table_name FROM information_schema.tables
        WHERE table_schema = 'public' AND table_name <> 'pgmigrations' ORDER BY table_name`,
    );
    return rows.map((r) => r.table_name);
  } finally {
    await client.end();
  }
}

test('the migrations directory is found from source', () => {
  assert.match(migrationsDir(), /[/\\]migrations$/);
});

test('up creates every table of the schema, down removes them, up again works', async () => {
  assert.deepEqual(await tables(db.url), []);
  assert.deepEqual(await migrate(db.url), MIGRATIONS);
  assert.deepEqual(await tables(db.url), SCHEMA_TABLES);
  assert.deepEqual(await migrate(db.url), [], 'a second up has nothing to do');

  assert.deepEqual(await migrate(db.url, { direction: 'down', count: Infinity }), [...MIGRATIONS].reverse());
  assert.deepEqual(await tables(db.url), []);

  assert.deepEqual(await migrate(db.url), MIGRATIONS);
  assert.deepEqual(await tables(db.url), SCHEMA_TABLES);
});

test('concurrent migrate calls on one database: one runs it, the other waits and finds nothing to do', async () => {
  const fresh = await createTestDatabase({ migrate: false });
  others.push(fresh);
  const results = await Promise.all([migrate(fresh.url), migrate(fresh.url)]);
  assert.deepEqual(results.flat(), MIGRATIONS);
  assert.deepEqual(await tables(fresh.url), SCHEMA_TABLES);
});

test('ensureDatabase creates a missing database once', async () => {
  const target = await createTestDatabase({ migrate: false });
  others.push(target);
  await target.drop(); // now the name is free: ensureDatabase must create it
  assert.equal(await ensureDatabase(target.url), true);
  assert.equal(await ensureDatabase(target.url), false);
  assert.deepEqual(await tables(target.url), []);
});

test('ensureDatabase quotes the database name', async () => {
  const name = `banbus_t_${Date.now().toString(36)}_Odd"-Name; x%41`;
  const url = withDatabase(await databaseBaseUrl(), name);
  const admin = new pg.Client({ connectionString: await databaseBaseUrl() });
  await admin.connect();
  try {
    assert.equal(await ensureDatabase(url), true);
    const { rows } = await admin.query('SELECT datname FROM pg_database WHERE datname = $1', [name]);
    assert.equal(rows.length, 1);
    assert.equal(await ensureDatabase(url), false);
    assert.deepEqual(await tables(url), [], 'pg connects to the very database ensureDatabase created');
  } finally {
    await admin.query(`DROP DATABASE IF EXISTS ${admin.escapeIdentifier(name)}`);
    await admin.end();
  }
});

test('a migration whose connection is killed (a database restart) fails; the process goes on', async () => {
  const fresh = await createTestDatabase({ migrate: false });
  others.push(fresh);
  // Hold node-pg-migrate's lock, so that migrate() waits on its connection until that is killed.
  const holder = new pg.Client({ connectionString: fresh.url });
  await holder.connect();
  try {
    await holder.query('SELECT pg_advisory_lock(7241865325823964)');
    const running = migrate(fresh.url);
    running.catch(() => undefined);
    const waiting = async () =>
      (
        await holder.query<{ pid: number }>(
          `SELECT pid FROM pg_stat_activity
            WHERE datname = current_database() AND application_name = 'banbus-migrate' AND wait_event_type = 'Lock'`,
        )
      ).rows;
    const [victim] = await waitFor(
      async () => {
        const rows = await waiting();
        return rows.length > 0 ? rows : undefined;
      },
      { what: 'migrate waiting for its lock' },
    );
    await holder.query('SELECT pg_terminate_backend($1)', [victim!.pid]);
    await assert.rejects(running, /terminat/i);
    assert.deepEqual(await tables(fresh.url), [], 'nothing was migrated');
  } finally {
    await holder.end();
  }
  // A later run migrates normally.
  assert.deepEqual(await migrate(fresh.url), MIGRATIONS);
});
