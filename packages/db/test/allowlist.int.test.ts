import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter, once } from 'node:events';
import type pg from 'pg';
import { TargetError } from '@banbus/core';
import { createPool } from '../src/pool.js';
import { AllowlistRepository, type AllowlistNotification } from '../src/allowlist.js';
import { CHANNELS } from '../src/channels.js';
import { listenChannel, type Listener } from '../src/listen.js';
import { createTestDatabase, type TestDatabase } from '../../../test/harness/db.js';

let db: TestDatabase;
let pool: pg.Pool;
let allowlist: AllowlistRepository;
let listener: Listener;
const events = new EventEmitter();
const received: AllowlistNotification[] = [];

before(async () => {
  db = await createTestDatabase();
  pool = createPool(db.url, { max: 4 });
  allowlist = new AllowlistRepository(pool);
  listener = await listenChannel(db.url, CHANNELS.allowlist, (payload) => {
    const notification = JSON.parse(payload) as AllowlistNotification;
    received.push(notification);
    events.emit('notification', notification);
  });
});
after(async () => {
  await listener?.close();
  await pool?.end();
  await db?.drop();
});

/** The first notification matching the predicate, whether it already arrived or is still on its way. */
function notified(match: (n: AllowlistNotification) => boolean): Promise<AllowlistNotification> {
  return new Promise((resolve, reject) => {
    const seen = received.find(match);
    if (seen) return resolve(seen);
    // A persistent listener, not once() in a loop: pg emits notifications that arrive in one packet
    // synchronously, and a loop re-arming once() would miss the second.
    const onNotification = (n: AllowlistNotification) => {
      if (!match(n)) return;
      clearTimeout(timer);
      events.off('notification', onNotification);
      resolve(n);
    };
    const timer = setTimeout(() => {
      events.off('notification', onNotification);
      reject(new Error('no matching banbus_allowlist notification within 5 s'));
    }, 5_000);
    events.on('notification', onNotification);
  });
}

test('add normalizes the network, stores it as cidr and notifies', async () => {
  const entry = await allowlist.add({ network: '::ffff:192.0.2.7', comment: 'office', createdBy: 'ops' });
  assert.equal(entry.network, '192.0.2.7');
  assert.equal(entry.comment, 'office');
  assert.equal(entry.createdBy, 'ops');
  assert.equal(entry.expiresAt, null);
  assert.ok(entry.createdAt instanceof Date);
  const { rows } = await pool.query(
    'SELECT network::text AS network, pg_typeof(network)::text AS type FROM allowlist',
  );
  assert.deepEqual(rows, [{ network: '192.0.2.7/32', type: 'cidr' }]);
  assert.deepEqual(await notified((n) => n.network === '192.0.2.7'), { op: 'add', network: '192.0.2.7' });

  const v6 = await allowlist.add({ network: '2001:DB8:0:0::/32' });
  assert.equal(v6.network, '2001:db8::/32');
  assert.deepEqual(await notified((n) => n.network === '2001:db8::/32'), {
    op: 'add',
    network: '2001:db8::/32',
  });
});

test('adding a listed network again replaces its comment and expiry', async () => {
  const first = await allowlist.add({ network: '198.51.100.0/24', comment: 'old' });
  const expiresAt = new Date(Date.now() + 3_600_000);
  const second = await allowlist.add({ network: '198.51.100.0/24', comment: 'new', expiresAt });
  assert.equal(second.id, first.id);
  assert.equal(second.comment, 'new');
  assert.deepEqual(second.expiresAt, expiresAt);
});

test('invalid networks are refused', async () => {
  await assert.rejects(allowlist.add({ network: '10.0.0.1/8' }), TargetError); // host bits set
  await assert.rejects(allowlist.add({ network: 'nonsense' }), TargetError);
});

test('remove deletes the entry and notifies; removing it again is false', async () => {
  await allowlist.add({ network: '203.0.113.0/24' });
  assert.equal(await allowlist.remove('203.0.113.0/24'), true);
  assert.deepEqual(await notified((n) => n.op === 'remove'), { op: 'remove', network: '203.0.113.0/24' });
  assert.equal(await allowlist.remove('203.0.113.0/24'), false);
  assert.ok(!(await allowlist.list()).some((e) => e.network === '203.0.113.0/24'));
});

test('active() leaves out expired entries; list() shows them', async () => {
  const now = new Date();
  await allowlist.add({ network: '100.64.0.0/10', expiresAt: new Date(now.getTime() - 1_000) });
  await allowlist.add({ network: '172.16.0.0/12', expiresAt: new Date(now.getTime() + 60_000) });
  const active = await allowlist.active(now);
  assert.ok(!active.includes('100.64.0.0/10'));
  assert.ok(active.includes('172.16.0.0/12'));
  assert.ok(active.includes('192.0.2.7'));
  assert.ok(active.includes('2001:db8::/32'));
  assert.ok(!(await allowlist.active(new Date(now.getTime() + 120_000))).includes('172.16.0.0/12'));
  const listed = (await allowlist.list()).map((e) => e.network);
  assert.ok(listed.includes('100.64.0.0/10'));
});

test('listenChannel reconnects after its connection is killed and calls onReconnect', async () => {
  const reconnected = new EventEmitter();
  const own = await listenChannel(db.url, 'banbus_test_reconnect', (p) => reconnected.emit('payload', p), {
    onReconnect: () => reconnected.emit('reconnect'),
    minDelayMs: 10,
  });
  try {
    const again = once(reconnected, 'reconnect', { signal: AbortSignal.timeout(10_000) });
    await pool.query(
      `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
        WHERE datname = current_database() AND application_name = 'banbus-listen-banbus_test_reconnect'`,
    );
    await again;
    const got = once(reconnected, 'payload', { signal: AbortSignal.timeout(5_000) });
    await pool.query("SELECT pg_notify('banbus_test_reconnect', 'hello')");
    assert.deepEqual(await got, ['hello']);
  } finally {
    await own.close();
  }
});
