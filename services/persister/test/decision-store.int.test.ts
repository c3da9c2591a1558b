import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type pg from 'pg';
import { parseEnv, PersisterEnvSchema, policyFromEnv } from '@banbus/core';
import { AllowlistRepository, createPool, DecisionStore } from '@banbus/db';
import { createTestDatabase, type TestDatabase } from '../../../test/harness/index.js';
import { engineRules } from '../src/engine.js';
import { report } from '../../../test/harness/world.js';

// The store without a broker: SQL paths the service tests reach only by chance.
describe('DecisionStore', () => {
  let db: TestDatabase;
  let pool: pg.Pool;
  let store: DecisionStore;
  before(async () => {
    db = await createTestDatabase();
    pool = createPool(db.url);
    store = new DecisionStore(pool, engineRules(policyFromEnv(parseEnv(PersisterEnvSchema, {}))));
  });
  after(async () => {
    await pool?.end();
    await db?.drop();
  });
  const targets = async () => (await store.snapshot()).decisions.map((d) => d.target).sort();

  test('a batch mixing stored and new ids applies only the new ones, in order, without seq gaps', async () => {
    const first = report({ target: '192.0.2.1' });
    const r1 = await store.applyReports([first]);
    const { logged: logged1, ...rest1 } = r1;
    assert.deepEqual(rest1, {
      applied: 1,
      duplicates: 0,
      outcomes: [{ id: first.id, outcome: 'banned' }],
      changes: 1,
      lastSeq: 1,
    });
    // What the persister publishes right after the commit is what the relay would read back from the log.
    assert.deepEqual(logged1, await store.logSince(0));
    const unban = report({ target: '192.0.2.1', action: 'unban' });
    const fresh = report({ target: '192.0.2.2' });
    // first (stored) would re-ban after the unban if it were applied again.
    const r2 = await store.applyReports([unban, first, fresh, fresh]);
    assert.equal(r2.applied, 2);
    assert.equal(r2.duplicates, 2);
    assert.deepEqual(
      r2.outcomes.map((o) => o.outcome),
      ['unbanned', 'banned'],
    );
    assert.equal(r2.lastSeq, 3);
    assert.deepEqual(await targets(), ['192.0.2.2']);
    assert.deepEqual(
      (await store.logSince(0)).map((c) => `${c.seq} ${c.op} ${c.target}`),
      ['1 add 192.0.2.1', '2 del 192.0.2.1', '3 add 192.0.2.2'],
    );
    assert.deepEqual(r2.logged, await store.logSince(1));
    const { rows } = await pool.query('SELECT count(*)::int AS n FROM reports');
    assert.equal(rows[0].n, 3);
  });

  test('loaded rows come back exactly: free text of any kind, instants to the millisecond', async () => {
    // The load renders rows as JSON text itself; a host, jail or reason needing escapes, or an instant off
    // by a millisecond, would make the repeat reports below look like new bans or changed decisions.
    const host = 'h"1\\x y';
    const jail = 'j\n"\\ \u00e9\u{1F600},]';
    const reason = 'r "q" \\ \t \u2713 null';
    const target = '192.0.2.50';
    const first = await store.applyReports([report({ target, host, jail, reason, bantime: 3600 })]);
    assert.deepEqual(
      first.outcomes.map((o) => o.outcome),
      ['banned'],
    );
    const decision = async () => (await store.snapshot()).decisions.find((d) => d.target === target)!;
    const banned = await decision();
    assert.equal(banned.reason, reason);
    // Same host and jail, shorter bantime: the ban in force is kept as it is.
    const repeat = await store.applyReports([report({ target, host, jail, reason, bantime: 60 })]);
    assert.deepEqual(
      repeat.outcomes.map((o) => o.outcome),
      ['noop'],
    );
    assert.equal(repeat.changes, 0);
    // A second host with a shorter ban: one more reporter, the same expiry and reason, so no change goes out.
    const second = await store.applyReports([report({ target, host: 'other', jail, reason, bantime: 60 })]);
    assert.deepEqual(
      second.outcomes.map((o) => o.outcome),
      ['extended'],
    );
    assert.equal(second.changes, 0);
    const extended = await decision();
    assert.equal(extended.reporters, 2);
    assert.equal(extended.expires_at, banned.expires_at);
    assert.equal(extended.first_seen, banned.first_seen);
    assert.equal(extended.reason, reason);
    // The first host's unban names its jail exactly: its ban ends, the other host's holds the decision.
    const unban = await store.applyReports([report({ target, host, jail, action: 'unban' })]);
    assert.deepEqual(
      unban.outcomes.map((o) => o.outcome),
      ['unbanned'],
    );
    assert.equal((await decision()).reporters, 1);
    const { rows } = await pool.query<{ host: string; jail: string }>(
      `SELECT host, jail FROM active_bans WHERE target = $1`,
      [target],
    );
    assert.deepEqual(rows, [{ host: 'other', jail }]);
    await store.applyReports([report({ target, origin: 'manual', action: 'unban', host: 'admin' })]);
  });

  test('a manual unban of a network ends the bans inside it', async () => {
    await store.applyReports(['10.9.1.1', '10.9.2.0/24', '10.10.0.1'].map((target) => report({ target })));
    const r = await store.applyReports([
      report({ target: '10.9.0.0/16', origin: 'manual', action: 'unban', host: 'admin' }),
    ]);
    assert.deepEqual(
      r.outcomes.map((o) => o.outcome),
      ['unbanned'],
    );
    assert.equal(r.changes, 2);
    assert.deepEqual(await targets(), ['10.10.0.1', '192.0.2.2']);
    const { rows } = await pool.query(
      `SELECT count(*)::int AS n FROM active_bans WHERE target <<= '10.9.0.0/16'`,
    );
    assert.equal(rows[0].n, 0);
  });

  test('sweep() ends expired bans and recomputes what remains', async () => {
    await store.applyReports([
      report({ target: '198.51.100.1', bantime: 1 }),
      report({ target: '198.51.100.2', bantime: 1, host: 'a' }),
      report({ target: '198.51.100.2', bantime: 3600, host: 'b' }),
    ]);
    // Age the bans instead of waiting: the sweeper compares with the database clock.
    await pool.query(
      `UPDATE active_bans SET expires_at = now() - interval '1 second' WHERE expires_at < now() + interval '10 seconds'`,
    );
    const before = await store.lastSeq();
    const result = await store.sweep();
    assert.equal(result.changes, 1);
    const log = await store.logSince(before);
    assert.deepEqual(
      log.map((c) => `${c.op} ${c.target}`),
      ['del 198.51.100.1'],
    );
    assert.ok((await targets()).includes('198.51.100.2'));
    assert.deepEqual(await store.sweep(), { changes: 0, lastSeq: null });
  });

  test('liftAllowlisted() removes covered decisions; allowlisted bans are refused', async () => {
    await store.applyReports([report({ target: '203.0.113.7' }), report({ target: '203.0.113.128/25' })]);
    await new AllowlistRepository(pool).add({ network: '203.0.113.0/24' });
    const result = await store.liftAllowlisted();
    assert.equal(result.changes, 2);
    assert.ok(!(await targets()).some((t) => t.startsWith('203.0.113.')));
    const r = await store.applyReports([report({ target: '203.0.113.9' })]);
    assert.deepEqual(
      r.outcomes.map((o) => o.outcome),
      ['allowlisted'],
    );
    assert.equal(r.changes, 0);
  });

  test('relay() publishes in seq order and marks rows published; a failed publish leaves them', async () => {
    await assert.rejects(
      store.relay(async () => {
        throw new Error('broker away');
      }),
      /broker away/,
    );
    const all = await store.logSince(0);
    assert.equal(await store.unpublishedCount(), all.length);
    const seen: number[] = [];
    const last = all[all.length - 1]!.seq;
    const result = await store.relay(async (changes) => {
      seen.push(...changes.map((c) => c.seq));
    });
    assert.deepEqual(result, { published: all.length, position: last, cursor: last });
    assert.deepEqual(
      seen,
      all.map((c) => c.seq),
    );
    assert.equal(await store.unpublishedCount(), 0);
    assert.deepEqual(await store.relay(async () => assert.fail('nothing left to publish')), {
      published: 0,
      position: last,
      cursor: last,
    });
  });

  test('relay(publish, after) skips what the caller published itself; saveRelayCursor() never moves back', async () => {
    const from = await store.lastSeq();
    await store.applyReports(
      ['198.51.100.41', '198.51.100.42', '198.51.100.43'].map((target) => report({ target })),
    );
    // The caller published from+1 and from+2 on its own and did not save the cursor yet.
    const seen: number[] = [];
    const result = await store.relay(async (changes) => {
      seen.push(...changes.map((c) => c.seq));
    }, from + 2);
    assert.deepEqual(seen, [from + 3]);
    assert.deepEqual(result, { published: 1, position: from + 3, cursor: from + 3 });
    // Nothing left after `after` either: the position is `after`, the cursor stays where it is.
    assert.deepEqual(await store.relay(async () => assert.fail('nothing to publish'), from + 3), {
      published: 0,
      position: from + 3,
      cursor: from + 3,
    });
    await store.saveRelayCursor(from + 1);
    assert.equal(await store.unpublishedCount(), 0, 'the cursor did not move back');
    await pool.query('UPDATE decision_relay SET published_seq = $1', [from]);
    await store.saveRelayCursor(from + 3);
    assert.equal(await store.unpublishedCount(), 0);
  });
  test('batches handed over at once apply in the order given; one failing fails the one waiting behind it', async () => {
    const from = await store.lastSeq();
    const ban = report({ target: '198.51.100.7' });
    const unban = report({ target: '198.51.100.7', action: 'unban' });
    const again = report({ target: '198.51.100.8' });
    // Not awaited one by one: the second and third connect and prepare while the first works.
    const results = await Promise.all([
      store.applyReports([ban]),
      store.applyReports([unban]),
      store.applyReports([again]),
    ]);
    assert.deepEqual(
      results.map((r) => r.outcomes[0]!.outcome),
      ['banned', 'unbanned', 'banned'],
    );
    assert.deepEqual(
      (await store.logSince(from)).map((c) => `${c.seq - from} ${c.op} ${c.target}`),
      ['1 add 198.51.100.7', '2 del 198.51.100.7', '3 add 198.51.100.8'],
    );

    // A report the database refuses (bantime beyond int) fails its batch; the ban handed over behind it
    // fails with it rather than overtake it, and the next batch after both applies normally.
    const before = await store.lastSeq();
    const bad = { ...report({ target: '198.51.100.9' }), failures: 2 ** 40 };
    const behind = report({ target: '198.51.100.10' });
    const [first, second] = await Promise.allSettled([
      store.applyReports([bad]),
      store.applyReports([behind]),
    ]);
    assert.equal(first.status, 'rejected');
    assert.equal(second.status, 'rejected');
    assert.equal((second as PromiseRejectedResult).reason, (first as PromiseRejectedResult).reason);
    assert.equal(await store.lastSeq(), before);
    const later = await store.applyReports([behind]);
    assert.equal(later.outcomes[0]!.outcome, 'banned');
  });

  test('pruneLog() drops published rows older than the retention, never unpublished ones', async () => {
    const relayed = await pool.query<{ p: string }>('SELECT published_seq AS p FROM decision_relay');
    await store.applyReports([report({ target: '198.51.100.31' }), report({ target: '198.51.100.32' })]);
    const last = await store.lastSeq();
    // The relay published everything but the last row; every row is aged past the retention.
    await pool.query('UPDATE decision_relay SET published_seq = $1', [last - 1]);
    await pool.query(`UPDATE decision_log SET created_at = now() - interval '2 hours'`);
    assert.equal(await store.pruneLog(3600, 3), last - 1, 'every published row, in chunks of 3');
    const { rows } = await pool.query<{ seq: string }>('SELECT seq FROM decision_log ORDER BY seq');
    assert.deepEqual(
      rows.map((r) => Number(r.seq)),
      [last],
    );
    // Young rows stay, whatever the relay did.
    await pool.query('UPDATE decision_relay SET published_seq = $1', [last]);
    await pool.query(`UPDATE decision_log SET created_at = now()`);
    assert.equal(await store.pruneLog(3600), 0);
    // Later tests relay from where the relay really was.
    await pool.query('UPDATE decision_relay SET published_seq = $1', [relayed.rows[0]!.p]);
  });
});

// The preload: a batch behind another loads its rows while that one holds the decision lock, and uses
// them if exactly that batch committed in between. Each case is checked against the same reports applied
// one batch at a time in a database of its own (no preload there).
describe('DecisionStore preload', () => {
  const rules = engineRules(policyFromEnv(parseEnv(PersisterEnvSchema, {})));
  let db: TestDatabase;
  let reference: TestDatabase;
  let pool: pg.Pool;
  let otherPool: pg.Pool;
  let referencePool: pg.Pool;
  let store: DecisionStore;
  /** Another persister on the same database. */
  let other: DecisionStore;
  let sequential: DecisionStore;
  /** The store's preloads by result (onPreload). */
  const preloads = { used: 0, redone: 0 };
  /** Runs once, the next time a batch asks for the lock after its preload. */
  let beforeLock: (() => Promise<void>) | null = null;

  before(async () => {
    db = await createTestDatabase();
    reference = await createTestDatabase();
    pool = createPool(db.url);
    pool.on('connect', (client) => {
      const query = client.query.bind(client) as (...args: unknown[]) => Promise<unknown>;
      (client as unknown as { query: (...args: unknown[]) => Promise<unknown> }).query = async (
        ...args: unknown[]
      ) => {
        // After a preload the lock is asked for alone; otherwise it goes with BEGIN.
        if (typeof args[0] === 'string' && args[0].startsWith('SELECT last,') && beforeLock) {
          const hook = beforeLock;
          beforeLock = null;
          await hook();
        }
        return query(...args);
      };
    });
    otherPool = createPool(db.url);
    referencePool = createPool(reference.url);
    store = new DecisionStore(pool, rules, { onPreload: (result) => (preloads[result] += 1) });
    other = new DecisionStore(otherPool, rules);
    sequential = new DecisionStore(referencePool, rules);
  });
  after(async () => {
    await pool?.end();
    await otherPool?.end();
    await referencePool?.end();
    await db?.drop();
    await reference?.drop();
  });

  let net = 0;
  /** `n` reports from `host` for fresh targets (or for `targets`). */
  const batch = (host: string, targets: string[]) =>
    targets.map((target, i) => report({ target, host, bantime: 3600 + i, jail: i % 2 ? 'sshd' : 'postfix' }));
  const fresh = (n: number) => {
    net += 1;
    return Array.from({ length: n }, (_, i) => `10.${net}.${Math.floor(i / 250)}.${(i % 250) + 1}`);
  };
  /** What a database holds, as far as the rules decide it (not when). */
  const state = async (p: pg.Pool) => {
    const { rows } = await p.query<{ row: string }>(
      `SELECT d.target::text || ' ' || d.reporters || ' ' || d.ban_count || ' ' ||
         (SELECT count(*) FROM active_bans a WHERE a.target = d.target) AS row
       FROM decisions d ORDER BY d.target`,
    );
    const log = await p.query<{ row: string }>(
      `SELECT seq || ' ' || op || ' ' || target::text AS row FROM decision_log ORDER BY seq`,
    );
    return { decisions: rows.map((r) => r.row), log: log.rows.map((r) => r.row) };
  };
  /** Applies the batches two at a time in `store`, one at a time in the reference; both states. */
  const both = async (...batches: ReturnType<typeof batch>[]) => {
    const outcomes = await Promise.all(batches.map((b) => store.applyReports(b)));
    for (const b of batches) await sequential.applyReports(b);
    return { outcomes, got: await state(pool), want: await state(referencePool) };
  };

  test('a batch behind another loads its rows before the lock and applies as if it loaded them under it', async () => {
    const seeded = fresh(150);
    await both(batch('h0', seeded));
    const before = { ...preloads };
    // The second batch repeats the seeded targets from another host: its rows exist and are updated.
    const { got, want } = await both(batch('h1', fresh(150)), batch('h1', seeded));
    assert.deepEqual(preloads, { used: before.used + 1, redone: before.redone });
    assert.deepEqual(got, want);
  });

  test('another writer between the preload and the lock: the rows are loaded again under the lock', async () => {
    const targets = fresh(150);
    const shared = targets[0]!;
    // Another persister bans one of the batch's targets after its preload read that target's rows.
    beforeLock = async () => {
      await other.applyReports([report({ target: shared, host: 'h2' })]);
    };
    const before = { ...preloads };
    const first = batch('h1', fresh(150));
    const second = batch('h1', targets);
    const outcomes = await Promise.all([store.applyReports(first), store.applyReports(second)]);
    assert.equal(beforeLock, null, 'the hook ran');
    assert.deepEqual(preloads, { used: before.used, redone: before.redone + 1 });
    assert.equal(outcomes[1]!.applied, 150);
    await sequential.applyReports(first);
    await sequential.applyReports([report({ target: shared, host: 'h2' })]);
    await sequential.applyReports(second);
    assert.deepEqual(await state(pool), await state(referencePool));
    const { rows } = await pool.query('SELECT host FROM active_bans WHERE target = $1 ORDER BY host', [
      shared,
    ]);
    assert.deepEqual(
      rows.map((r) => r.host),
      ['h1', 'h2'],
    );
  });

  test('a batch sharing a target or a report with the one before it loads under the lock', async () => {
    const before = { ...preloads };
    const a = fresh(150);
    const b = fresh(150);
    b[0] = a[0]!;
    const { got, want } = await both(batch('h1', a), batch('h2', b));
    const x = batch('h1', fresh(150));
    const y = [...batch('h2', fresh(149)), x[0]!];
    const again = await both(x, y);
    assert.deepEqual(preloads, before);
    assert.deepEqual(got, want);
    assert.deepEqual(again.got, again.want);
    assert.equal(again.outcomes[1]!.duplicates, 1);
  });
});
