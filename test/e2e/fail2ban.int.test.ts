// The shipped action file, run by a real fail2ban server (Debian's fail2ban) against a real banbus:
// `fail2ban-client set JAIL banip` must become a decision on the stream, and unbanip must lift it.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { runCli, runService } from '@banbus/cli';
import type { Running } from '@banbus/runtime';
import {
  DecisionListener,
  amqpTestUrl,
  createTestDatabase,
  deleteNamespace,
  testNamespace,
} from '../harness/index.js';
import { ROOT, freePort } from '../bench/lib.js';

const run = promisify(execFile);
const haveFail2ban = existsSync('/usr/bin/fail2ban-client');

describe(
  'deploy/fail2ban/action.d/banbus.conf with a real fail2ban',
  {
    skip:
      !haveFail2ban && !process.env.CI
        ? 'fail2ban is not installed (apt-get install fail2ban; CI installs it)'
        : false,
  },
  () => {
    let db: Awaited<ReturnType<typeof createTestDatabase>>;
    let amqpUrl: string;
    let namespace: string;
    let running: Running;
    let listener: DecisionListener;
    let confDir: string;
    const client = (...args: string[]) => run('fail2ban-client', ['-c', confDir, ...args]);

    before(async () => {
      db = await createTestDatabase();
      amqpUrl = await amqpTestUrl();
      namespace = testNamespace();
      const port = await freePort();
      const env = {
        DATABASE_URL: db.url,
        AMQP_URL: amqpUrl,
        BANBUS_NAMESPACE: namespace,
        LOG_LEVEL: 'silent',
      };
      running = await runService('all', {
        ...env,
        INGEST_PORT: String(port),
        AGGREGATOR_PORT: '0',
        CONSOLE_PORT: '0',
        BANBUS_LISTEN: '127.0.0.1',
      });
      listener = await DecisionListener.start(amqpUrl, namespace);
      let token = '';
      await runCli(['hosts', 'add', 'f2b-host'], {
        env,
        out: (t) => void (token += t),
        err: () => undefined,
      });
      token = token.trim();

      // A fail2ban configuration of its own: socket, pid and log in a temporary directory, database in memory.
      confDir = mkdtempSync(join(tmpdir(), 'banbus-f2b-'));
      mkdirSync(join(confDir, 'action.d'));
      mkdirSync(join(confDir, 'filter.d'));
      copyFileSync(join(ROOT, 'deploy/fail2ban/action.d/banbus.conf'), join(confDir, 'action.d/banbus.conf'));
      writeFileSync(
        join(confDir, 'fail2ban.conf'),
        `[Definition]\nloglevel = INFO\nlogtarget = ${confDir}/fail2ban.log\nsyslogsocket = auto\n` +
          `socket = ${confDir}/fail2ban.sock\npidfile = ${confDir}/fail2ban.pid\ndbfile = :memory:\ndbpurgeage = 1d\n`,
      );
      writeFileSync(
        join(confDir, 'filter.d/banbus-test.conf'),
        '[Definition]\nfailregex = ^FAIL from <HOST>$\n',
      );
      writeFileSync(join(confDir, 'auth.log'), '');
      // The jail.local example from the README, with this test's URL and token.
      writeFileSync(
        join(confDir, 'jail.conf'),
        `[DEFAULT]\nbanbus_url = http://127.0.0.1:${port}\nbanbus_token = ${token}\n\n` +
          `[sshd-test]\nenabled = true\nfilter = banbus-test\nlogpath = ${confDir}/auth.log\nbackend = polling\n` +
          `maxretry = 1\nbantime = 600\naction = banbus[url="%(banbus_url)s", token="%(banbus_token)s"]\n`,
      );
      await client('start');
    });

    after(async () => {
      if (confDir) {
        await client('stop').catch(() => undefined);
        rmSync(confDir, { recursive: true, force: true });
      }
      await listener?.close();
      await running?.stop();
      await deleteNamespace(amqpUrl, namespace);
      await db?.drop();
    });

    test('banip reaches the fleet as a timed decision; unbanip lifts it', async () => {
      await client('set', 'sshd-test', 'banip', '203.0.113.50');
      const added = await listener.next((c) => c.target === '203.0.113.50', 15_000);
      assert.equal(added.op, 'add');
      // fail2ban's bantime (600 s) travels with the report.
      const seconds = (Date.parse(added.expires_at!) - Date.now()) / 1000;
      assert.ok(seconds > 500 && seconds <= 600, `expires in ${seconds} s`);

      await client('set', 'sshd-test', 'unbanip', '203.0.113.50');
      const removed = await listener.next((c) => c.target === '203.0.113.50' && c.op === 'del', 15_000);
      assert.ok(removed.seq > added.seq);
    });

    test('an IPv6 ban travels the same way', async () => {
      await client('set', 'sshd-test', 'banip', '2001:db8::bad');
      const added = await listener.next((c) => c.target === '2001:db8::bad', 15_000);
      assert.equal(added.op, 'add');
    });
  },
);
