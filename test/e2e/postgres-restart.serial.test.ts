// PostgreSQL restarts under a running banbus: ingest keeps accepting reports from hosts it already
// knows (cached tokens), the persister holds them in the queue instead of dead-lettering them, and
// every one becomes a decision once PostgreSQL is back. Stops the machine's PostgreSQL: serial only.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import amqp from 'amqplib';
import { runCli, type RunningService } from '@banbus/cli';
import { topology } from '@banbus/bus';
import {
  DecisionListener,
  amqpTestUrl,
  createTestDatabase,
  deleteNamespace,
  testNamespace,
  waitFor,
} from '../harness/index.js';
import { runAll } from './run-all.js';

const cluster = readdirSync('/etc/postgresql')[0]!;
const pgctl = (action: 'start' | 'stop') =>
  execFileSync(
    'pg_ctlcluster',
    ['--skip-systemctl-redirect', cluster, 'main', action, ...(action === 'stop' ? ['-m', 'fast'] : [])],
    {
      stdio: 'inherit',
    },
  );

describe('PostgreSQL restart', () => {
  let db: Awaited<ReturnType<typeof createTestDatabase>>;
  let amqpUrl: string;
  let namespace: string;
  let running: RunningService;
  let listener: DecisionListener;
  let base: string;
  let token = '';

  before(async () => {
    db = await createTestDatabase();
    amqpUrl = await amqpTestUrl();
    namespace = testNamespace();
    const env = { DATABASE_URL: db.url, AMQP_URL: amqpUrl, BANBUS_NAMESPACE: namespace, LOG_LEVEL: 'silent' };
    ({ running, base } = await runAll(env));
    listener = await DecisionListener.start(amqpUrl, namespace);
    await runCli(['hosts', 'add', 'web1'], { env, out: (t) => void (token += t), err: () => undefined });
    token = token.trim();
  });

  after(async () => {
    await listener?.close();
    await running?.stop();
    await deleteNamespace(amqpUrl, namespace);
    await db?.drop();
  });

  const post = (ip: string) =>
    fetch(`${base}/v1/reports`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ ip, jail: 'sshd' }),
    });

  test('reports accepted while PostgreSQL is down become decisions after it is back; nothing dead-lettered', async () => {
    // Known token, warm cache.
    assert.equal((await post('203.0.113.1')).status, 202);
    await listener.next((c) => c.target === '203.0.113.1');

    pgctl('stop');
    try {
      for (const ip of ['203.0.113.2', '203.0.113.3', '2001:db8::3']) {
        const res = await post(ip);
        assert.equal(res.status, 202, `${ip}: ${await res.text()}`);
      }
    } finally {
      pgctl('start');
    }
    for (const ip of ['203.0.113.2', '203.0.113.3', '2001:db8::3']) {
      const change = await listener.next((c) => c.target === ip, 60_000);
      assert.equal(change.op, 'add');
    }
    // A relay cut off between the broker's confirm and its commit republishes (at least once);
    // applying each seq once, as consumers do, leaves a gap-free stream.
    let held = 0;
    for (const { seq } of listener.changes) {
      if (seq <= held) continue;
      assert.equal(seq, held + 1, `seq ${seq} after ${held}`);
      held = seq;
    }

    const connection = await amqp.connect(amqpUrl);
    try {
      const channel = await connection.createChannel();
      const { messageCount } = await channel.checkQueue(topology(namespace).deadLetterQueue);
      assert.equal(messageCount, 0, 'a database outage is not a reason to dead-letter a report');
    } finally {
      await connection.close();
    }
    await waitFor(async () => (await fetch(`${base}/readyz`)).ok, { timeoutMs: 30_000, what: 'ready again' });
  });
});
