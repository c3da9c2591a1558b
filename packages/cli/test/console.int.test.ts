// banbus ban | unban | list | show | stats | users: over the console's admin API and on the database directly.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { runCli, type CliIo } from '@banbus/cli';
import type { DecisionPage, Overview } from '@banbus/console';
import {
  Client,
  createWorld,
  report,
  type TestConsole,
  type World,
} from '../../../services/console/test/setup.js';

interface Result {
  code: number;
  out: string;
  err: string;
}

function cli(env: Record<string, string>) {
  return async (...argv: string[]): Promise<Result> => {
    let out = '';
    let err = '';
    const io: CliIo = {
      env: { LOG_LEVEL: 'silent', ...env },
      out: (t) => void (out += t),
      err: (t) => void (err += t),
    };
    const code = await runCli(argv, io);
    return { code, out, err };
  };
}

describe('banbus ban, unban, list, show, stats', () => {
  let world: World;
  let con: TestConsole;
  let modes: { name: string; run: ReturnType<typeof cli>; net: string }[];

  before(async () => {
    world = await createWorld();
    con = await world.startConsole();
    modes = [
      {
        name: 'over the admin API',
        run: cli({ BANBUS_CONSOLE_URL: con.url, BANBUS_TOKEN: world.tokens.admin }),
        net: '198.19.201',
      },
      {
        name: 'on the database',
        run: cli({ DATABASE_URL: world.db.url, AMQP_URL: world.amqpUrl, BANBUS_NAMESPACE: world.namespace }),
        net: '198.19.202',
      },
    ];
  });
  after(async () => {
    await world?.close();
  });

  for (const index of [0, 1]) {
    test(`ban → list → show → unban → stats, ${['over the admin API', 'on the database'][index]}`, async () => {
      const { run, net } = modes[index]!;
      const target = `${net}.0/28`;
      const banned = await run('ban', target, '--duration', '2h', '--reason', 'from the cli');
      assert.equal(banned.code, 0, banned.err);
      assert.match(banned.out, new RegExp(`ban of ${net}\\.0/28 sent`));
      const added = await world.listener.next((c) => c.target === target && c.op === 'add');
      assert.equal(added.reason, 'from the cli');

      const list = await run('list', '--target', `${net}.7`);
      assert.equal(list.code, 0, list.err);
      assert.match(list.out, /^TARGET\s+ORIGIN/);
      assert.match(list.out, new RegExp(`${net}\\.0/28\\s+manual`));
      const json = JSON.parse((await run('list', '--target', `${net}.7`, '--json')).out) as DecisionPage;
      assert.deepEqual(
        json.items.map((i) => i.target),
        [target],
      );

      const show = await run('show', `${net}.7`);
      assert.equal(show.code, 0, show.err);
      assert.match(show.out, new RegExp(`inside ${net}\\.0/28: banned \\(manual\\)`));
      const own = await run('show', target);
      assert.equal(own.code, 0);
      assert.match(own.out, /banned \(manual\)[\s\S]*reason: from the cli/);
      assert.match(own.out, /reports \(1\):[\s\S]*ban \(manual\)\s+banned/);

      const unbanned = await run('unban', target, '--reason', 'done');
      assert.equal(unbanned.code, 0, unbanned.err);
      assert.match(unbanned.out, /ends 1 decision\(s\): /);
      await world.listener.next((c) => c.target === target && c.op === 'del');
      const gone = await run('show', target);
      assert.equal(gone.code, 1, 'show exits 1 for a target that is not banned');
      assert.match(gone.out, /not banned by itself/);
      assert.match(gone.err, /is not banned/);

      const stats = await run('stats');
      assert.equal(stats.code, 0, stats.err);
      assert.match(stats.out, /active bans\s+\d+/);
      assert.match(stats.out, /stream seq\s+\d+/);
      const o = JSON.parse((await run('stats', '--json')).out) as Overview;
      assert.ok(o.seq >= added.seq);

      const { rows } = await world.pool.query<{ actor: string; action: string }>(
        `SELECT actor, action FROM audit_log WHERE target = $1 ORDER BY id`,
        [target],
      );
      const actor = index === 0 ? 'operator' : /^cli:/;
      assert.deepEqual(
        rows.map((r) => r.action),
        ['ban', 'unban'],
      );
      for (const r of rows) {
        if (typeof actor === 'string') assert.equal(r.actor, actor);
        else assert.match(r.actor, actor);
      }
    });
  }

  test('list pages with --limit and --cursor, or follows every page with --all', async () => {
    const run = modes[0]!.run;
    await world.publish(
      [1, 2, 3].map((i) => report({ target: `198.19.203.${i}`, host: 'pager', jail: 'pages' })),
    );
    const first = await run('list', '--jail', 'pages', '--limit', '2', '--sort', 'target');
    assert.equal(first.code, 0, first.err);
    assert.match(first.out, /198\.19\.203\.1\s/);
    assert.doesNotMatch(first.out, /198\.19\.203\.3/);
    const cursor = /--cursor (\S+)/.exec(first.err)?.[1];
    assert.ok(cursor, first.err);
    const second = await run(
      'list',
      '--jail',
      'pages',
      '--limit',
      '2',
      '--sort',
      'target',
      '--cursor',
      cursor,
    );
    assert.match(second.out, /198\.19\.203\.3/);
    assert.equal(second.err, '', 'the last page says nothing about more');
    const all = await run('list', '--jail', 'pages', '--limit', '1', '--all', '--json');
    assert.deepEqual(
      all.out
        .trim()
        .split('\n')
        .map((l) => (JSON.parse(l) as { target: string }).target)
        .sort(),
      ['198.19.203.1', '198.19.203.2', '198.19.203.3'],
    );
  });

  test('bad arguments exit 2 naming what to fix; failures exit 1', async () => {
    await world.publish([report({ target: '198.19.204.0/24' })]);
    for (const { name, run } of modes) {
      const cases: [string[], number, RegExp][] = [
        [['ban', 'not-an-ip'], 2, /TARGET/],
        [['ban', '10.0.0.1/8'], 2, /TARGET: .*10\.0\.0\.0\/8/],
        [['ban', '10.0.0.0/8'], 2, /broader than the minimum prefix/],
        [['ban', '198.19.204.9', '--duration', 'soon'], 2, /--duration/],
        [['ban', '198.19.204.9', '--duration', '0'], 2, /--duration/],
        [['ban', '198.19.204.9', '--reason', 'two\nlines'], 2, /--reason/],
        [['ban'], 2, /missing required argument/],
        [['unban', '198.19.204.9'], 1, /inside 198\.19\.204\.0\/24/],
        [['unban', '::ffff:1.2.3.4/200'], 2, /TARGET/],
        [['list', '--limit', '0'], 2, /--limit/],
        [['list', '--origin', 'aliens'], 2, /--origin/],
        [['list', '--since', 'yesterday'], 2, /--since/],
        [['list', '--sort', 'expires'], 2, /--sort/],
        [['list', '--asc', '--desc'], 2, /exclude each other/],
        [['list', '--cursor', 'garbage'], 2, /--cursor/],
        [['list', '--frobnicate'], 2, /unknown option/],
        [['show'], 2, /missing required argument/],
        [['show', '1.2.3'], 2, /TARGET/],
        [['show', '1.2.3.4', '5.6.7.8'], 2, /too many arguments/],
        [['ban', '198.19.204.9', '198.19.204.10'], 2, /too many arguments/],
        [['ban', '198.19.204.9', '--reason', ''], 2, /--reason/],
        [['ban', '198.19.204.9', '--reason', 'x'.repeat(201)], 2, /--reason/],
        [['unban'], 2, /missing required argument/],
        [['unban', '198.19.204.9', '--reason', 'a\tb'], 2, /--reason/],
        [['list', '--jail', ''], 2, /--jail/],
        [['list', '--host', 'h'.repeat(64)], 2, /--host/],
        [['list', '--until', 'tomorrow'], 2, /--until/],
        [['list', 'extra'], 2, /too many arguments/],
        [['stats', 'extra'], 2, /too many arguments/],
        [['stats', '--frobnicate'], 2, /unknown option/],
      ];
      for (const [argv, code, message] of cases) {
        const r = await run(...argv);
        assert.equal(r.code, code, `${name}: ${argv.join(' ')} → ${r.code} ${r.err}`);
        assert.match(r.err, message, `${name}: ${argv.join(' ')}`);
      }
    }
  });

  test('bad options are refused before anything is connected', async () => {
    // Neither a console nor a database answers at these addresses: exit 2 shows the input was checked first.
    const nowhere = [
      cli({ BANBUS_CONSOLE_URL: 'http://127.0.0.1:9', BANBUS_TOKEN: world.tokens.admin }),
      cli({ DATABASE_URL: 'postgres://postgres@127.0.0.1:9/none', AMQP_URL: 'amqp://127.0.0.1:9' }),
    ];
    for (const run of nowhere) {
      const cases: [string[], RegExp][] = [
        [['ban', '198.19.204.9', '--reason', ''], /--reason/],
        [['unban', '198.19.204.9', '--reason', 'two\nlines'], /--reason/],
        [['list', '--jail', ''], /--jail/],
        [['list', '--origin', 'aliens'], /--origin: origin must be one of/],
        [['list', '--since', 'yesterday'], /--since/],
      ];
      for (const [argv, message] of cases) {
        const r = await run(...argv);
        assert.equal(r.code, 2, `${argv.join(' ')} → ${r.code} ${r.err}`);
        assert.match(r.err, message, argv.join(' '));
      }
      const down = await run('stats');
      assert.equal(down.code, 1, 'good arguments get as far as the connection, which fails');
    }
  });

  test('the API mode says what is wrong with the token or the URL', async () => {
    const readOnly = cli({ BANBUS_CONSOLE_URL: con.url, BANBUS_TOKEN: world.tokens.read });
    const refused = await readOnly('ban', '198.19.205.1');
    assert.equal(refused.code, 1);
    assert.match(refused.err, /refused the token: .*admin scope/);
    assert.equal((await readOnly('stats')).code, 0, 'a read token may read');
    const unknown = await cli({ BANBUS_CONSOLE_URL: con.url, BANBUS_TOKEN: 'bb_' + 'x'.repeat(43) })('stats');
    assert.equal(unknown.code, 1);
    assert.match(unknown.err, /refused the token: the token is not known/);
    const noToken = await cli({ BANBUS_CONSOLE_URL: con.url })('stats');
    assert.equal(noToken.code, 2);
    assert.match(noToken.err, /BANBUS_TOKEN/);
    const badUrl = await cli({ BANBUS_CONSOLE_URL: 'ftp://x', BANBUS_TOKEN: world.tokens.read })('stats');
    assert.equal(badUrl.code, 2);
    assert.match(badUrl.err, /BANBUS_CONSOLE_URL/);
    const down = await cli({ BANBUS_CONSOLE_URL: 'http://127.0.0.1:9', BANBUS_TOKEN: world.tokens.read })(
      'stats',
    );
    assert.equal(down.code, 1);
    assert.match(down.err, /cannot reach the console at http:\/\/127\.0\.0\.1:9/);
  });

  test('--help on every command', async () => {
    const run = modes[0]!.run;
    for (const argv of [
      ['ban'],
      ['unban'],
      ['list'],
      ['show'],
      ['stats'],
      ['users'],
      ['users', 'add'],
      ['users', 'passwd'],
      ['users', 'list'],
      ['users', 'remove'],
    ]) {
      const r = await run(...argv, '--help');
      assert.equal(r.code, 0, argv.join(' '));
      assert.match(r.out, new RegExp(`^Usage: banbus ${argv.join(' ')}`), argv.join(' '));
    }
  });
});

describe('banbus users', () => {
  let world: World;
  let con: TestConsole;
  let run: ReturnType<typeof cli>;

  before(async () => {
    world = await createWorld();
    con = await world.startConsole();
    run = cli({ DATABASE_URL: world.db.url });
  });
  after(async () => {
    await world?.close();
  });

  test('add, log in, passwd ends the sessions, remove', async () => {
    const first = 'first password 123';
    const added = await cli({ DATABASE_URL: world.db.url, BANBUS_PASSWORD: first })('users', 'add', 'bob');
    assert.equal(added.code, 0, added.err);
    const { rows } = await world.pool.query(`SELECT password_hash FROM console_users WHERE name = 'bob'`);
    assert.match(rows[0].password_hash, /^scrypt\$15\$8\$1\$/);
    assert.ok(!rows[0].password_hash.includes(first));

    const browser = new Client(con.url);
    assert.equal((await browser.login({ user: 'bob', password: first })).status, 200);
    const second = 'second password 456';
    const changed = await cli({ DATABASE_URL: world.db.url, BANBUS_PASSWORD: second })(
      'users',
      'passwd',
      'bob',
    );
    assert.equal(changed.code, 0, changed.err);
    assert.equal((await browser.request('GET', '/v1/admin/session')).status, 401, 'the old session ended');
    assert.equal((await new Client(con.url).login({ user: 'bob', password: first })).status, 401);
    assert.equal((await new Client(con.url).login({ user: 'bob', password: second })).status, 200);

    const list = await run('users', 'list');
    assert.match(list.out, /^NAME\s+CREATED\s+LAST LOGIN\n(.*\n)*bob\s+\S+\s+\d{4}-/m);
    assert.equal((await run('users', 'remove', 'bob')).code, 0);
    assert.equal((await new Client(con.url).login({ user: 'bob', password: second })).status, 401);
  });

  test('bad arguments exit 2', async () => {
    const withPassword = (password: string) => cli({ DATABASE_URL: world.db.url, BANBUS_PASSWORD: password });
    const cases: [Result, RegExp][] = [
      [await run('users', 'add', 'carol'), /--password-stdin, or in BANBUS_PASSWORD/],
      [await withPassword('short')('users', 'add', 'carol'), /password: .*at least 10/],
      [await withPassword('long enough password')('users', 'add', 'bad name'), /NAME/],
      [await withPassword('long enough password')('users', 'add', 'alice'), /already exists/],
      [await withPassword('long enough password')('users', 'passwd', 'nobody'), /no user named nobody/],
      [await run('users', 'remove', 'nobody'), /no user named nobody/],
      [await run('users'), /./],
    ];
    for (const [r, message] of cases) {
      assert.equal(r.code, 2, r.err);
      assert.match(r.err, message);
    }
  });
});
