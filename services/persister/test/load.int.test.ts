import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { waitFor } from '../../../test/harness/index.js';
import type { Report } from '@banbus/core';
import { createWorld, report, type World } from '../../../test/harness/world.js';

// Two persisters on one queue and one database: the decision lock must keep seqs gap-free and in commit
// order, and the relay must publish them in order, whichever persister commits or relays.
let world: World;
before(async () => {
  world = await createWorld();
});
after(async () => {
  await world?.close();
});

test('two persisters under load: seqs 1..N in order, replaying the stream gives the decisions table', async () => {
  const [a, b] = [
    await world.start({ PERSISTER_BATCH_SIZE: 200 }),
    await world.start({ PERSISTER_BATCH_SIZE: 200 }),
  ];
  // A small deterministic generator: many targets, several hosts, bans, host unbans and manual unbans.
  let seed = 42;
  const rand = (n: number) => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed % n;
  };
  const hosts = ['h1', 'h2', 'h3', 'h4'];
  const reports: Report[] = [];
  for (let i = 0; i < 4000; i++) {
    const target = `10.${20 + rand(2)}.${rand(4)}.${rand(200) + 1}`;
    const roll = rand(10);
    const host = hosts[rand(hosts.length)]!;
    if (roll < 6) {
      reports.push(
        report({ target, host, jail: rand(2) ? 'sshd' : 'postfix', bantime: [600, 3600, -1][rand(3)]! }),
      );
    } else if (roll < 9) {
      reports.push(report({ target, host, action: 'unban', jail: rand(2) ? 'sshd' : null }));
    } else {
      reports.push(report({ target, host: 'admin', origin: 'manual', action: 'unban', jail: null }));
    }
  }
  const started = Date.now();
  // Mixed message sizes: single reports and packed ones (up to MAX_REPORTS_PER_MESSAGE per message).
  const sends: Promise<void>[] = [];
  for (let i = 0, size = 1; i < reports.length; i += size, size = 1 + rand(120)) {
    sends.push(world.bus.publishReports(reports.slice(i, i + size)));
  }
  await Promise.all(sends);
  await waitFor(
    async () => {
      const { rows } = await world.pool.query(
        'SELECT count(*)::int AS n FROM reports WHERE outcome IS NOT NULL',
      );
      return rows[0].n === reports.length;
    },
    { timeoutMs: 60_000, what: 'every report applied' },
  );
  const lastSeq = await a.store.lastSeq();
  await waitFor(() => world.listener.changes.length >= lastSeq, {
    timeoutMs: 30_000,
    what: 'every change relayed',
  });
  const elapsed = Date.now() - started;
  world.logger.info({ elapsed, reports: reports.length, lastSeq }, 'load done');

  const seqs = world.listener.changes.map((c) => c.seq);
  assert.equal(seqs.length, lastSeq, 'no change published twice');
  assert.deepEqual(
    seqs,
    Array.from({ length: lastSeq }, (_, i) => i + 1),
  );
  assert.ok(lastSeq > 100);
  // Both persisters did part of the work (the test would mean little otherwise).
  for (const p of [a, b]) {
    const counted = (await p.registry.getSingleMetric('banbus_persister_reports_total')!.get()).values;
    assert.ok(counted.reduce((sum, v) => sum + v.value, 0) > 0, 'each persister applied reports');
  }

  const replayed = new Map<string, string | null>();
  for (const c of world.listener.changes) {
    if (c.op === 'add') replayed.set(c.target, c.expires_at ?? null);
    else replayed.delete(c.target);
  }
  const snapshot = await b.store.snapshot();
  assert.equal(snapshot.seq, lastSeq);
  assert.deepEqual(new Map(snapshot.decisions.map((d) => [d.target, d.expires_at])), replayed);
  assert.ok(snapshot.decisions.length > 0);
  // Every decision has an active ban and vice versa.
  const { rows } = await world.pool.query(
    `SELECT (SELECT count(*)::int FROM decisions d WHERE NOT EXISTS (SELECT 1 FROM active_bans a WHERE a.target = d.target)) AS orphan_decisions,
            (SELECT count(*)::int FROM active_bans a WHERE NOT EXISTS (SELECT 1 FROM decisions d WHERE a.target = d.target)) AS orphan_bans`,
  );
  assert.deepEqual(rows[0], { orphan_decisions: 0, orphan_bans: 0 });
});

test('two persisters draining a backlog of big batches: rows loaded before the lock, the same result', async () => {
  // A world of its own: its backlog is published before any persister runs, so each has two batches in
  // flight at once. Ten blocks of 200 targets; message k bans block k mod 10 from host h(k div 10): the
  // batches one persister has in flight at once share no target (the preload's case), and every target
  // ends up reported by three hosts.
  const world = await createWorld();
  try {
    const blocks = 10;
    const hosts = 3;
    for (let k = 0; k < blocks * hosts; k++) {
      const block = k % blocks;
      await world.bus.publishReports(
        Array.from({ length: 200 }, (_, i) =>
          report({ target: `10.30.${block}.${i + 1}`, host: `h${Math.floor(k / blocks)}`, bantime: 3600 }),
        ),
      );
    }
    const persisters = [
      await world.start({ PERSISTER_BATCH_SIZE: 200 }),
      await world.start({ PERSISTER_BATCH_SIZE: 200 }),
    ];
    await waitFor(
      async () => {
        const { rows } = await world.pool.query('SELECT count(*)::int AS n FROM reports');
        return rows[0].n === blocks * hosts * 200;
      },
      { timeoutMs: 60_000, what: 'every report applied' },
    );
    const lastSeq = await persisters[0]!.store.lastSeq();
    await waitFor(() => world.listener.changes.length >= lastSeq, {
      timeoutMs: 30_000,
      what: 'every change relayed',
    });
    assert.deepEqual(
      world.listener.changes.map((c) => c.seq),
      Array.from({ length: lastSeq }, (_, i) => i + 1),
    );
    let used = 0;
    for (const p of persisters) {
      const values = (await p.registry.getSingleMetric('banbus_persister_preloads_total')!.get()).values;
      used += values.filter((v) => v.labels.result === 'used').reduce((sum, v) => sum + v.value, 0);
    }
    assert.ok(used > 0, 'batches were preloaded');
    const { rows } = await world.pool.query<{ reporters: number; bans: number; n: number }>(
      `SELECT d.reporters, (SELECT count(*)::int FROM active_bans a WHERE a.target = d.target) AS bans,
              count(*)::int AS n
       FROM decisions d GROUP BY 1, 2`,
    );
    assert.deepEqual(rows, [{ reporters: hosts, bans: hosts, n: blocks * 200 }]);
  } finally {
    await world.close();
  }
});

test('when the relaying persister stops, the other one takes the lease and relays every change', async () => {
  // A world of its own: the persisters of the test above hold the lease of theirs.
  const world = await createWorld();
  try {
    await failover(world);
  } finally {
    await world.close();
  }
});

async function failover(world: World): Promise<void> {
  const persisters = [await world.start(), await world.start()];
  const leading = async (p: (typeof persisters)[number]) =>
    (await p.registry.getSingleMetric('banbus_persister_relay_leader')!.get()).values[0]?.value === 1;
  await waitFor(async () => (await leading(persisters[0]!)) || (await leading(persisters[1]!)), {
    timeoutMs: 10_000,
    what: 'a relay leader',
  });
  const leader = (await leading(persisters[0]!)) ? persisters[0]! : persisters[1]!;
  const other = leader === persisters[0] ? persisters[1]! : persisters[0]!;
  assert.equal(await leading(other), false, 'one leader at a time');
  await leader.stop();
  // Reports keep coming while nobody relays; the other persister applies them, then takes the lease.
  const targets = ['198.18.7.1', '198.18.7.2', '198.18.7.3'];
  for (const target of targets) await world.bus.publishReports([report({ target, host: 'h1' })]);
  for (const target of targets) {
    await world.listener.next((c) => c.target === target && c.op === 'add', 15_000);
  }
  assert.equal(await leading(other), true);
  // Nothing was lost and nothing doubled across the hand-over: seqs 1..N, each once.
  const seqs = world.listener.changes.map((c) => c.seq);
  assert.deepEqual(
    seqs,
    Array.from({ length: seqs.length }, (_, i) => i + 1),
  );
  assert.equal(seqs.length, await other.store.lastSeq());
}
