// The local handoff under `banbus run all`: ingest hands the reports it publishes to the persister of its
// process, which applies them without waiting for the broker to deliver them back; the broker's copy is
// acked without a second transaction. It takes nothing while older reports are still queued.
import { after, afterEach, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { runCli, type RunningService } from '@banbus/cli';
import { Bus } from '@banbus/bus';
import { createLogger, createRegistry } from '@banbus/runtime';
import type { Report } from '@banbus/core';
import {
  amqpTestUrl,
  createTestDatabase,
  deleteNamespace,
  testNamespace,
  waitFor,
  type TestDatabase,
} from '../harness/index.js';
import { runAll } from './run-all.js';

describe('local handoff (banbus run all)', () => {
  let db: TestDatabase;
  let amqpUrl: string;
  let namespace: string;
  let running: RunningService | undefined;
  let client: pg.Client;
  let base: string;
  let token: string;

  const env = () => ({
    DATABASE_URL: db.url,
    AMQP_URL: amqpUrl,
    BANBUS_NAMESPACE: namespace,
    LOG_LEVEL: 'silent',
  });

  async function start(): Promise<void> {
    ({ running, base } = await runAll(env()));
  }

  const post = (body: unknown) =>
    fetch(`${base}/v1/reports`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });

  /** One sample of a Prometheus counter from /metrics (0 when absent). */
  async function metricValue(name: string, labels: string): Promise<number> {
    const text = await (await fetch(`${base}/metrics`)).text();
    const key = labels === '' ? `${name} ` : `${name}{${labels}} `;
    const line = text.split('\n').find((l) => l.startsWith(key));
    return line ? Number(line.split(' ').pop()) : 0;
  }

  const outcomeOf = async (id: string) =>
    (
      (await client.query('SELECT outcome FROM reports WHERE id = $1', [id])).rows[0] as
        { outcome: string } | undefined
    )?.outcome;

  before(async () => {
    db = await createTestDatabase({ migrate: false });
    amqpUrl = await amqpTestUrl();
    namespace = testNamespace();
    assert.equal(await runCli(['migrate'], { env: env(), out: () => undefined, err: () => undefined }), 0);
    let out = '';
    const code = await runCli(['hosts', 'add', 'web1'], {
      env: env(),
      out: (t) => void (out += t),
      err: () => undefined,
    });
    assert.equal(code, 0);
    token = out.trim();
    client = new pg.Client({ connectionString: db.url });
    await client.connect();
  });

  afterEach(async () => {
    await running?.stop();
    running = undefined;
  });

  after(async () => {
    await client?.end();
    await deleteNamespace(amqpUrl, namespace);
    await db?.drop();
  });

  test('a report is applied by the handoff; its broker copy is acked without a second transaction', async () => {
    await start();
    await waitFor(async () => (await metricValue('banbus_persister_handoff_open', '')) === 1, {
      what: 'the handoff to open',
    });
    const res = await post({ ip: '203.0.113.50', jail: 'sshd', bantime: 600 });
    assert.equal(res.status, 202);
    const [id] = ((await res.json()) as { ids: string[] }).ids;
    await waitFor(async () => (await outcomeOf(id!)) === 'banned', { what: 'the report applied' });
    assert.equal(await metricValue('banbus_persister_handoff_reports_total', 'outcome="applied"'), 1);
    // The broker's copy arrives after the handoff committed the report: acked without a transaction.
    await waitFor(
      async () => (await metricValue('banbus_persister_handoff_copies_total', 'result="acked"')) === 1,
      { what: 'the copy acked' },
    );
    assert.equal(await metricValue('banbus_persister_batch_seconds_count', ''), 1, 'one transaction');
    assert.equal(await metricValue('banbus_persister_reports_total', 'outcome="duplicate"'), 0);
  });

  test('reports queued before the start go first: a host’s unban sent now does not overtake its queued ban', async () => {
    // A backlog, as a persister that could not write leaves: filler, then web1's ban of the address, at the
    // end; one report a message, so that most of it stays in the queue beyond the consumer's prefetch.
    const target = '198.51.100.77';
    const filler: Report[] = Array.from({ length: 3_000 }, (_, i) => ({
      id: randomUUID(),
      action: 'ban',
      host: 'web2',
      origin: 'fail2ban',
      jail: 'sshd',
      bantime: 3600,
      target: `100.${64 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}`,
      time: new Date().toISOString(),
    }));
    const ban: Report = { ...filler[0]!, id: randomUUID(), host: 'web1', target };
    const bus = await Bus.connect({
      url: amqpUrl,
      namespace,
      logger: createLogger({ level: 'silent' }),
      registry: createRegistry(false),
    });
    try {
      await Promise.all([...filler, ban].map((r) => bus.publishReports([r])));
    } finally {
      await bus.close();
    }
    // Every decision transaction waits for this lock: the persister takes its first prefetch and stops there.
    const holder = new pg.Client({ connectionString: db.url });
    await holder.connect();
    let unban: string | undefined;
    try {
      await holder.query('BEGIN');
      await holder.query('SELECT 1 FROM decision_seq WHERE id = 1 FOR UPDATE');
      await start();
      assert.equal(await metricValue('banbus_persister_handoff_open', ''), 0, 'closed behind the backlog');
      const res = await post({ ip: target, action: 'unban', jail: 'sshd' });
      assert.equal(res.status, 202);
      [unban] = ((await res.json()) as { ids: string[] }).ids;
    } finally {
      await holder.query('COMMIT').catch(() => undefined);
      await holder.end();
    }
    await waitFor(
      async () => (await outcomeOf(unban!)) !== undefined && (await outcomeOf(ban.id)) !== undefined,
      {
        timeoutMs: 60_000,
        what: 'both reports applied',
      },
    );
    const { rows } = await client.query('SELECT 1 FROM decisions WHERE target = $1::cidr', [target]);
    assert.equal(rows.length, 0, 'the unban came last: no decision left');
    // Left to the queue while the backlog drained, then the handoff opened.
    assert.ok((await metricValue('banbus_persister_handoff_reports_total', 'outcome="queued"')) >= 1);
    await waitFor(async () => (await metricValue('banbus_persister_handoff_open', '')) === 1, {
      what: 'the handoff to open after the backlog',
    });
  });
});
