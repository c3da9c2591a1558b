import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import pg from 'pg';
import { createProgram, runCli, type CliIo } from '@banbus/cli';
import { createTestDatabase } from '../../../test/harness/index.js';

interface Result {
  code: number;
  out: string;
  err: string;
}

function cli(databaseUrl: string) {
  return async (...argv: string[]): Promise<Result> => {
    let out = '';
    let err = '';
    const io: CliIo = {
      env: { DATABASE_URL: databaseUrl, LOG_LEVEL: 'silent' },
      out: (t) => void (out += t),
      err: (t) => void (err += t),
    };
    const code = await runCli(argv, io);
    return { code, out, err };
  };
}

describe('banbus migrate', () => {
  let db: Awaited<ReturnType<typeof createTestDatabase>>;
  before(async () => {
    db = await createTestDatabase({ migrate: false });
  });
  after(() => db.drop());

  test('applies the migrations once, then has nothing to do; --down rolls back', async () => {
    const run = cli(db.url);
    const first = await run('migrate');
    assert.equal(first.code, 0, first.err);
    assert.match(first.out, /applied .*initial/);
    const second = await run('migrate');
    assert.equal(second.code, 0, second.err);
    assert.match(second.out, /no migrations to run/);
    const one = await run('migrate', '--down');
    assert.equal(one.code, 0, one.err);
    assert.match(one.out, /^rolled back .*console\n$/, 'one migration by default');
    const down = await run('migrate', '--down');
    assert.equal(down.code, 0, down.err);
    assert.match(down.out, /rolled back .*initial/);
    const client = new pg.Client({ connectionString: db.url });
    await client.connect();
    const { rows } = await client.query(`SELECT to_regclass('public.decisions') AS t`);
    await client.end();
    assert.equal(rows[0].t, null);
    assert.equal((await run('migrate')).code, 0);
  });

  test('rejects a bad --count', async () => {
    const r = await cli(db.url)('migrate', '--count', 'many');
    assert.equal(r.code, 2);
    assert.match(r.err, /--count/);
  });
});

describe('banbus hosts and allow', () => {
  let db: Awaited<ReturnType<typeof createTestDatabase>>;
  let run: ReturnType<typeof cli>;
  let client: pg.Client;
  before(async () => {
    db = await createTestDatabase();
    run = cli(db.url);
    client = new pg.Client({ connectionString: db.url });
    await client.connect();
  });
  after(async () => {
    await client.end();
    await db.drop();
  });

  test('hosts add prints the token once on stdout and stores only its hash', async () => {
    const r = await run('hosts', 'add', 'web1', '--scopes', 'report,read');
    assert.equal(r.code, 0, r.err);
    const token = r.out.trim();
    assert.match(token, /^bb_[A-Za-z0-9_-]{43}$/);
    assert.match(r.err, /not shown again/);
    const { rows } = await client.query('SELECT token_hash, scopes FROM hosts WHERE name = $1', ['web1']);
    assert.deepEqual(rows[0].token_hash, createHash('sha256').update(token).digest());
    assert.deepEqual(rows[0].scopes, ['report', 'read']);
    const list = await run('hosts', 'list');
    assert.equal(list.code, 0);
    assert.match(list.out, /web1\s+report,read/);
    assert.ok(!list.out.includes(token), 'list never shows a token');
    const json = JSON.parse((await run('hosts', 'list', '--json')).out) as { name: string }[];
    assert.deepEqual(
      json.map((h) => h.name),
      ['web1'],
    );
  });

  test('hosts add refuses duplicates, bad names and unknown scopes with exit code 2', async () => {
    await run('hosts', 'add', 'dup');
    const cases: [string[], RegExp][] = [
      [['hosts', 'add', 'dup'], /already exists/],
      [['hosts', 'add', 'bad name'], /NAME/],
      [['hosts', 'add', '-leading-dash'], /./],
      [['hosts', 'add', 'x'.repeat(64)], /NAME/],
      [['hosts', 'add', 'ok1', '--scopes', 'report,root'], /--scopes/],
      [['hosts', 'add', 'ok2', '--scopes', ''], /--scopes/],
      [['hosts', 'revoke', 'nobody'], /no host named/],
      [['hosts'], /./],
      [['hosts', 'frobnicate'], /./],
    ];
    for (const [argv, message] of cases) {
      const r = await run(...argv);
      assert.equal(r.code, 2, `${argv.join(' ')} → ${r.code} ${r.err}`);
      assert.match(r.err, message, argv.join(' '));
    }
    const { rows } = await client.query(`SELECT name FROM hosts WHERE name IN ('ok1', 'ok2', 'bad name')`);
    assert.equal(rows.length, 0);
  });

  test('hosts revoke marks the host revoked, keeping the first revocation time', async () => {
    await run('hosts', 'add', 'web2');
    assert.equal((await run('hosts', 'revoke', 'web2')).code, 0);
    const { rows } = await client.query('SELECT revoked_at FROM hosts WHERE name = $1', ['web2']);
    assert.ok(rows[0].revoked_at instanceof Date);
    assert.equal((await run('hosts', 'revoke', 'web2')).code, 0);
    const again = await client.query('SELECT revoked_at FROM hosts WHERE name = $1', ['web2']);
    assert.deepEqual(again.rows[0].revoked_at, rows[0].revoked_at);
    assert.match((await run('hosts', 'list')).out, /web2.*revoked/);
  });

  test('allow add normalizes, lists and removes; bad networks exit 2', async () => {
    const added = await run('allow', 'add', '::ffff:192.0.2.0/120', '--comment', 'office', '--expires', '7d');
    assert.equal(added.code, 0, added.err);
    assert.match(added.out, /allowlisted 192\.0\.2\.0\/24 until /);
    const { rows } = await client.query(`SELECT text(network) AS n, comment, expires_at FROM allowlist`);
    assert.deepEqual(
      rows.map((r) => [r.n, r.comment]),
      [['192.0.2.0/24', 'office']],
    );
    const in7d = Date.now() + 7 * 86400_000;
    assert.ok(Math.abs((rows[0].expires_at as Date).getTime() - in7d) < 60_000);
    assert.match((await run('allow', 'list')).out, /192\.0\.2\.0\/24.*office/);
    for (const argv of [
      ['allow', 'add', '192.0.2.1/24'],
      ['allow', 'add', 'not-an-ip'],
      ['allow', 'add', '10.0.0.0/8', '--expires', 'soon'],
      ['allow', 'remove', '198.51.100.0/24'],
    ]) {
      const r = await run(...argv);
      assert.equal(r.code, 2, `${argv.join(' ')} → ${r.code} ${r.err}`);
    }
    // Adding it again updates the entry instead of failing: scripts can re-run.
    assert.equal((await run('allow', 'add', '192.0.2.0/24', '--comment', 'office v2')).code, 0);
    const updated = await client.query(`SELECT comment, expires_at FROM allowlist`);
    assert.deepEqual(updated.rows, [{ comment: 'office v2', expires_at: null }]);
    assert.equal((await run('allow', 'remove', '192.0.2.0/24')).code, 0);
    const left = await client.query('SELECT count(*)::int AS n FROM allowlist');
    assert.equal(left.rows[0].n, 0);
  });
});

describe('banbus usage', () => {
  test('unknown commands and services exit 2; --help exits 0', async () => {
    const run = cli('postgres://postgres@127.0.0.1:5432/postgres');
    assert.equal((await run('frobnicate')).code, 2);
    assert.equal((await run('run', 'nosuch')).code, 2);
    const unknown = await run('run', 'nosuch');
    assert.match(unknown.err, /unknown service nosuch; available: .*route-applier/);
    const help = await run('--help');
    assert.equal(help.code, 0);
    assert.match(help.out, /hosts/);
    assert.match(help.out, /allow/);
    assert.match(help.out, /migrate/);
    assert.equal((await run('hosts', 'add', '--help')).code, 0);
  });

  test('--help works on every command and subcommand, and exits 0 without touching anything', async () => {
    // The command tree is read from the program itself, so a command added later is walked too. No
    // database is reachable at this URL: --help must answer before any connection is made.
    const paths: string[][] = [];
    const walk = (command: ReturnType<typeof createProgram>, prefix: string[]) => {
      for (const sub of command.commands) {
        const path = [...prefix, sub.name()];
        paths.push(path);
        walk(sub, path);
      }
    };
    walk(createProgram({ env: {}, out: () => undefined, err: () => undefined }), []);
    const names = paths.map((p) => p.join(' '));
    for (const expected of [
      'migrate',
      'hosts add',
      'hosts list',
      'hosts revoke',
      'allow add',
      'allow list',
      'allow remove',
      'import',
      'ban',
      'unban',
      'list',
      'show',
      'stats',
      'users add',
      'users list',
      'run',
    ])
      assert.ok(names.includes(expected), `${expected} is a command (have: ${names.join(', ')})`);
    const run = cli('postgres://postgres@127.0.0.1:1/none');
    for (const path of [[], ...paths]) {
      const r = await run(...path, '--help');
      const what = ['banbus', ...path].join(' ');
      assert.equal(r.code, 0, `${what} --help → ${r.code} ${r.err}`);
      assert.equal(r.err, '', `${what} --help writes nothing to stderr`);
      assert.ok(r.out.startsWith(`Usage: ${what}`), `${what} --help: ${r.out.slice(0, 80)}`);
      assert.match(r.out, /-h, --help/, what);
    }
  });

  test('a bad environment names the variable and exits 2', async () => {
    let err = '';
    const code = await runCli(['hosts', 'list'], {
      env: { DATABASE_URL: 'postgres://x', BANBUS_NAMESPACE: 'Bad Namespace!' },
      out: () => undefined,
      err: (t) => void (err += t),
    });
    assert.equal(code, 2);
    assert.match(err, /BANBUS_NAMESPACE/);
  });
});
