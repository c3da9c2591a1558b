import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'amqplib';
import { AllowlistRepository } from '@banbus/db';
import { REASON_HEADER } from '@banbus/bus';
import type { DecisionChange } from '@banbus/core';
import { waitFor } from '../../../test/harness/index.js';
import { createWorld, freshTarget, report, type World } from '../../../test/harness/world.js';

describe('persister', () => {
  let world: World;
  let persister: Awaited<ReturnType<World['start']>>;

  before(async () => {
    world = await createWorld();
    persister = await world.start({ PERSISTER_SWEEP_INTERVAL: 0.2 });
  });
  after(async () => {
    await world?.close();
  });

  const nextFor = (target: string, op?: 'add' | 'del') =>
    world.listener.next((c) => c.target === target && (op === undefined || c.op === op));
  /** Publishes a ban of a fresh target and waits for its change: everything published before is applied and relayed. */
  async function barrier(): Promise<DecisionChange> {
    const target = freshTarget();
    await world.bus.publishReports([report({ target })]);
    return nextFor(target, 'add');
  }
  const decision = async (target: string) =>
    (await world.pool.query('SELECT * FROM decisions WHERE target = $1::cidr', [target])).rows[0] as
      { reporters: number; expires_at: Date | null; ban_count: number } | undefined;
  const changesFor = (target: string) => world.listener.changes.filter((c) => c.target === target);

  test('a ban becomes a decision and an add with the next seq', async () => {
    const before = await persister.store.lastSeq();
    const target = freshTarget();
    const r = report({ target, bantime: 600 });
    await world.bus.publishReports([r]);
    const change = await nextFor(target);
    assert.equal(change.op, 'add');
    assert.equal(change.seq, before + 1);
    assert.ok(change.expires_at);
    const row = await decision(target);
    assert.ok(row);
    assert.equal(row.reporters, 1);
    assert.equal(change.expires_at, row.expires_at!.toISOString());
    const { rows } = await world.pool.query('SELECT outcome FROM reports WHERE id = $1', [r.id]);
    assert.equal(rows[0].outcome, 'banned');
  });

  test('the same report id twice has one effect', async () => {
    const target = freshTarget();
    const r = report({ target });
    await world.bus.publishReports([r]);
    await nextFor(target);
    await world.bus.publishReports([r, { ...r, bantime: 999_999 }]);
    await barrier();
    assert.equal(changesFor(target).length, 1);
    const { rows } = await world.pool.query('SELECT count(*)::int AS n FROM reports WHERE id = $1', [r.id]);
    assert.equal(rows[0].n, 1);
  });

  test('two hosts ban, one unbans: no del, still banned', async () => {
    const target = freshTarget();
    await world.bus.publishReports([report({ target, host: 'a' }), report({ target, host: 'b' })]);
    await nextFor(target);
    await world.bus.publishReports([report({ target, host: 'a', action: 'unban' })]);
    await barrier();
    assert.ok(!changesFor(target).some((c) => c.op === 'del'));
    assert.equal((await decision(target))?.reporters, 1);
  });

  test('a manual unban ends the decision: del', async () => {
    const target = freshTarget();
    await world.bus.publishReports([
      report({ target, host: 'a' }),
      report({ target, host: 'b', bantime: -1 }),
    ]);
    await nextFor(target, 'add');
    await world.bus.publishReports([
      report({ target, host: 'admin', origin: 'manual', action: 'unban', jail: null }),
    ]);
    await nextFor(target, 'del');
    assert.equal(await decision(target), undefined);
    const { rows } = await world.pool.query(
      'SELECT count(*)::int AS n FROM active_bans WHERE target = $1::cidr',
      [target],
    );
    assert.equal(rows[0].n, 0);
  });

  test('an expired ban is swept: del', async () => {
    const target = freshTarget();
    await world.bus.publishReports([report({ target, bantime: 1 })]);
    const add = await nextFor(target, 'add');
    const del = await nextFor(target, 'del');
    assert.ok(del.seq > add.seq);
    // The sweeper ran no earlier than the expiry.
    assert.ok(Date.now() >= Date.parse(add.expires_at!));
    assert.equal(await decision(target), undefined);
  });

  test('adding an allowlist entry lifts the decisions it covers', async () => {
    const inside = ['203.0.113.5', '203.0.113.64/26'];
    const outside = '203.0.114.1';
    await world.bus.publishReports([...inside, outside].map((target) => report({ target })));
    for (const t of [...inside, outside]) await nextFor(t, 'add');
    await new AllowlistRepository(world.pool).add({ network: '203.0.113.0/24', comment: 'office' });
    for (const t of inside) await nextFor(t, 'del');
    assert.equal(await decision('203.0.113.5'), undefined);
    assert.ok(await decision(outside));
    // A later ban inside the allowlist is refused.
    const r = report({ target: '203.0.113.9' });
    await world.bus.publishReports([r]);
    await barrier();
    const { rows } = await world.pool.query('SELECT outcome FROM reports WHERE id = $1', [r.id]);
    assert.equal(rows[0].outcome, 'allowlisted');
    assert.equal(changesFor('203.0.113.9').length, 0);
  });

  test('a poison message is dead-lettered with its reason; the next report is applied', async () => {
    const t = persister.bus.topology;
    await world.bus.publish(t.reportsExchange, 'report.ban', [{ id: 'not-a-uuid', target: 'nonsense' }], {
      messageIds: ['poison-1'],
    });
    await barrier();
    const connection = await connect(world.amqpUrl);
    try {
      const channel = await connection.createChannel();
      const message = await waitFor(
        async () => (await channel.get(t.deadLetterQueue, { noAck: true })) || undefined,
        {
          what: 'the poison message in the dead-letter queue',
        },
      );
      const reason = message.properties.headers?.[REASON_HEADER];
      assert.equal(typeof reason, 'string');
      assert.ok(String(reason).length > 0);
      assert.deepEqual(JSON.parse(message.content.toString()), { id: 'not-a-uuid', target: 'nonsense' });
      await channel.close();
    } finally {
      await connection.close();
    }
  });

  test('the seqs on the fanout have no gaps and match the log', async () => {
    await barrier();
    const seqs = world.listener.changes.map((c) => c.seq);
    const first = seqs[0]!;
    assert.deepEqual(
      seqs,
      seqs.map((_, i) => first + i),
    );
    const logged = await persister.store.logSince(first - 1);
    assert.deepEqual(logged, world.listener.changes);
  });

  // Last: it empties the log the test above compares with.
  test('the sweeper drops published log rows past PERSISTER_LOG_RETENTION (7 days by default)', async () => {
    await barrier();
    const count = async () =>
      Number((await world.pool.query('SELECT count(*) AS n FROM decision_log')).rows[0].n);
    assert.ok((await count()) > 0);
    await world.pool.query(`UPDATE decision_log SET created_at = now() - interval '8 days'`);
    await waitFor(async () => (await count()) === 0, { what: 'the aged log rows dropped' });
    // The seq itself stays: a delta from it is still answerable, an older one is not.
    assert.ok((await persister.store.lastSeq()) > 0);
  });
});
