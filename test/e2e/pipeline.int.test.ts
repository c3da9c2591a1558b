// The whole central pipeline as a user runs it: `banbus run all` in-process, hosts made with the CLI,
// reports over HTTP, decisions observed on the fanout exchange the appliers will follow.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { runCli, type RunningService } from '@banbus/cli';
import {
  DecisionListener,
  amqpTestUrl,
  createTestDatabase,
  deleteNamespace,
  testNamespace,
  waitFor,
} from '../harness/index.js';
import { runAll } from './run-all.js';

describe('banbus run all', () => {
  let db: Awaited<ReturnType<typeof createTestDatabase>>;
  let amqpUrl: string;
  let namespace: string;
  let running: RunningService;
  let listener: DecisionListener;
  let base: string;
  let client: pg.Client;
  const tokens: Record<string, string> = {};

  const env = () => ({
    DATABASE_URL: db.url,
    AMQP_URL: amqpUrl,
    BANBUS_NAMESPACE: namespace,
    LOG_LEVEL: 'silent',
  });

  async function addHost(name: string, scopes = 'report'): Promise<string> {
    let out = '';
    const code = await runCli(['hosts', 'add', name, '--scopes', scopes], {
      env: env(),
      out: (t) => void (out += t),
      err: () => undefined,
    });
    assert.equal(code, 0);
    return out.trim();
  }

  async function post(token: string, body: unknown): Promise<Response> {
    return fetch(`${base}/v1/reports`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
  }

  before(async () => {
    // `run all` migrates by itself: start from an empty database, as a new install does.
    db = await createTestDatabase({ migrate: false });
    amqpUrl = await amqpTestUrl();
    namespace = testNamespace();
    ({ running, base } = await runAll(env(), { PERSISTER_SWEEP_INTERVAL: '1' }));
    listener = await DecisionListener.start(amqpUrl, namespace);
    client = new pg.Client({ connectionString: db.url });
    await client.connect();
    tokens.web1 = await addHost('web1');
    tokens.web2 = await addHost('web2');
    tokens.ops = await addHost('ops', 'report,read,admin');
    await waitFor(async () => (await fetch(`${base}/readyz`)).ok, { what: 'ingest ready' });
  });

  after(async () => {
    await listener?.close();
    await running?.stop();
    await client?.end();
    await deleteNamespace(amqpUrl, namespace);
    await db?.drop();
  });

  test('a ban from one host becomes a decision on the stream; both hosts must unban to lift it', async () => {
    const first = await post(tokens.web1!, { ip: '203.0.113.9', jail: 'sshd', bantime: 3600 });
    assert.equal(first.status, 202);
    const added = await listener.next((c) => c.target === '203.0.113.9');
    assert.equal(added.op, 'add');
    assert.ok(added.expires_at, 'a timed ban carries its expiry');

    assert.equal((await post(tokens.web2!, { ip: '203.0.113.9', jail: 'sshd', bantime: 3600 })).status, 202);
    await waitFor(async () => {
      const { rows } = await client.query(`SELECT reporters FROM decisions WHERE target = '203.0.113.9'`);
      return rows[0]?.reporters === 2;
    });
    assert.equal(
      (await post(tokens.web1!, { ip: '203.0.113.9', action: 'unban', jail: 'sshd' })).status,
      202,
    );
    await waitFor(async () => {
      const { rows } = await client.query(
        `SELECT outcome FROM reports WHERE host = 'web1' AND action = 'unban'`,
      );
      return rows[0]?.outcome;
    });
    assert.ok(!listener.changes.some((c) => c.target === '203.0.113.9' && c.op === 'del'), 'still banned');

    assert.equal(
      (await post(tokens.web2!, { ip: '203.0.113.9', action: 'unban', jail: 'sshd' })).status,
      202,
    );
    await listener.next((c) => c.target === '203.0.113.9' && c.op === 'del');
  });

  test('the old setup’s fail2ban.php URL bans and unbans', async () => {
    const ban = await fetch(
      `${base}/fail2ban.php?token=${tokens.web1}&action=add&source=apache&reason=badbots&ip=198.51.100.23`,
    );
    assert.equal(ban.status, 200);
    assert.equal((await listener.next((c) => c.target === '198.51.100.23')).op, 'add');
    const unban = await fetch(`${base}/fail2ban.php?token=${tokens.web1}&action=delete&ip=198.51.100.23`);
    assert.equal(unban.status, 200);
    assert.equal((await listener.next((c) => c.target === '198.51.100.23' && c.op === 'del')).op, 'del');
  });

  test('an allowlist entry added with the CLI lifts the decisions it covers and refuses new reports', async () => {
    assert.equal((await post(tokens.ops!, { ip: '192.0.2.0/28', jail: 'manual' })).status, 202);
    await listener.next((c) => c.target === '192.0.2.0/28' && c.op === 'add');
    const code = await runCli(['allow', 'add', '192.0.2.0/24', '--comment', 'office'], {
      env: env(),
      out: () => undefined,
      err: () => undefined,
    });
    assert.equal(code, 0);
    await listener.next((c) => c.target === '192.0.2.0/28' && c.op === 'del');
    await waitFor(
      async () => {
        const r = await post(tokens.web1!, { ip: '192.0.2.77' });
        return r.status === 422;
      },
      { what: 'ingest to refuse an allowlisted address' },
    );
  });

  test('the aggregator of the same process serves the ban in the blocklist, and drops it after unban', async () => {
    const url = `http://127.0.0.1:${running.aggregatorPort}/v1/blocklist.txt?family=4&token=${tokens.ops}`;
    assert.equal((await post(tokens.web1!, { ip: '198.51.100.77', jail: 'sshd' })).status, 202);
    await waitFor(async () => (await (await fetch(url)).text()).split('\n').includes('198.51.100.77'), {
      what: 'the ban in the blocklist',
    });
    assert.equal(
      (await post(tokens.web1!, { ip: '198.51.100.77', action: 'unban', jail: 'sshd' })).status,
      202,
    );
    await waitFor(async () => !(await (await fetch(url)).text()).split('\n').includes('198.51.100.77'), {
      what: 'the ban gone from the blocklist',
    });
  });

  test('seqs on the stream are gap-free and in order', () => {
    const seqs = listener.changes.map((c) => c.seq);
    assert.ok(seqs.length >= 5);
    seqs.forEach((seq, i) => assert.equal(seq, seqs[0]! + i));
  });
});
