import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { connect } from 'amqplib';
import { mergeTargets, targetFromDb } from '@banbus/core';
import { waitFor } from '../../../test/harness/index.js';
import {
  createWorld,
  entriesOf,
  freshTarget,
  report,
  seqOf,
  type TestAggregator,
  type World,
} from './setup.js';

function haveTool(name: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${name}`]).status === 0;
}

/** Bans `count` fresh targets, one change at a time; returns them. */
async function banFresh(world: World, count: number): Promise<string[]> {
  const targets: string[] = [];
  for (let i = 0; i < count; i++) {
    const target = freshTarget();
    targets.push(target);
    await world.publish([report({ target })]);
  }
  return targets;
}

/** Follows the stream again; the next change shows the gap, which is filled from the log. */
async function followAndFill(world: World, agg: TestAggregator): Promise<void> {
  const fillsBefore = agg.follower.gapFills;
  await agg.follower.follow();
  const next = await world.publish([report({ target: freshTarget() })]);
  await agg.waitForSeq(next.seq);
  assert.ok(agg.follower.gapFills > fillsBefore);
}

describe('aggregator', () => {
  let world: World;
  let agg: TestAggregator;
  let dir: string;

  before(async () => {
    world = await createWorld();
    dir = await mkdtemp(join(tmpdir(), 'banbus-agg-'));
    agg = await world.startAggregator({ BLOCKLIST_DIR: dir });
    await agg.follower.whenLoaded();
  });
  after(async () => {
    await world?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const get = (path: string, headers: Record<string, string> = {}, base = agg.url) =>
    fetch(base + path, { headers: { authorization: `Bearer ${world.tokens.read}`, ...headers } });
  const list = async (query = '', base = agg.url) => {
    const res = await get(`/v1/blocklist.txt${query}`, {}, base);
    assert.equal(res.status, 200, await res.clone().text());
    return res.text();
  };
  /** The list as a fresh snapshot of the database would merge it. */
  const expected = async () => {
    const { rows } = await world.pool.query<{ target: string }>(
      'SELECT target::text AS target FROM decisions',
    );
    const merged = mergeTargets(rows.map((r) => targetFromDb(r.target)));
    return [...merged.v4, ...merged.v6];
  };

  test('a ban appears in the list, the seq moves, an unban removes it', async () => {
    const target = freshTarget();
    const added = await world.publish([report({ target })]);
    await agg.waitForSeq(added.seq);
    const text = await list();
    assert.ok(entriesOf(text).includes(target), text);
    assert.equal(seqOf(text), added.seq);

    const removed = await world.publish([report({ target, action: 'unban', origin: 'manual' })]);
    await agg.waitForSeq(removed.seq);
    const after = await list();
    assert.ok(!entriesOf(after).includes(target));
    assert.ok(seqOf(after) > seqOf(text));

    // The files follow the served list.
    const file = await waitFor(async () => {
      const t = await readFile(join(dir, 'blocklist.txt'), 'utf8');
      return seqOf(t) >= removed.seq ? t : undefined;
    });
    assert.deepEqual(entriesOf(file), entriesOf(after));
    assert.ok((await readFile(join(dir, 'blocklist4.txt'), 'utf8')).startsWith('#'));
    assert.ok((await readFile(join(dir, 'blocklist6.txt'), 'utf8')).startsWith('#'));
  });

  test('IPv6 bans land in family 6 only', async () => {
    const added = await world.publish([report({ target: '2001:db8:77::1' })]);
    await agg.waitForSeq(added.seq);
    assert.ok(entriesOf(await list('?family=6')).includes('2001:db8:77::1'));
    assert.ok(!entriesOf(await list('?family=4')).includes('2001:db8:77::1'));
    assert.ok(entriesOf(await list('?family=all')).includes('2001:db8:77::1'));
  });

  test('ETag: 304 while unchanged, 200 after a change; Last-Modified; gzip', async () => {
    const first = await get('/v1/blocklist.txt?family=4');
    assert.equal(first.status, 200);
    const etag = first.headers.get('etag');
    assert.ok(etag);
    assert.ok(first.headers.get('last-modified'));
    const again = await get('/v1/blocklist.txt?family=4', { 'if-none-match': etag });
    assert.equal(again.status, 304);
    const otherFormat = await get('/v1/blocklist.txt?family=4&format=json', { 'if-none-match': etag });
    assert.equal(otherFormat.status, 200);

    const added = await world.publish([report({ target: freshTarget() })]);
    await agg.waitForSeq(added.seq);
    const changed = await get('/v1/blocklist.txt?family=4', { 'if-none-match': etag });
    assert.equal(changed.status, 200);
    assert.notEqual(changed.headers.get('etag'), etag);

    // fetch() decodes gzip by itself; node:http shows what went over the wire.
    const raw = await new Promise<{ encoding: string | undefined; body: Buffer }>((resolve, reject) => {
      import('node:http').then(({ get: httpGet }) =>
        httpGet(
          `${agg.url}/v1/blocklist.txt?family=all`,
          { headers: { authorization: `Bearer ${world.tokens.read}`, 'accept-encoding': 'gzip' } },
          (res) => {
            const chunks: Buffer[] = [];
            res.on('data', (c: Buffer) => chunks.push(c));
            res.on('end', () =>
              resolve({ encoding: res.headers['content-encoding'], body: Buffer.concat(chunks) }),
            );
          },
        ).on('error', reject),
      );
    });
    assert.equal(raw.encoding, 'gzip');
    assert.deepEqual(entriesOf(gunzipSync(raw.body).toString()), entriesOf(await list('?family=all')));
  });

  test('max/part: parts never exceed max and together equal the whole list', async () => {
    const reports = Array.from({ length: 23 }, () => report({ target: freshTarget() }));
    const added = await world.publish(reports);
    await agg.waitForSeq(added.seq);
    const whole = entriesOf(await list('?family=4'));
    assert.ok(whole.length >= 23);
    const index = await get('/v1/blocklist.txt?family=4&max=5&token=' + world.tokens.read, {
      authorization: '',
    });
    assert.equal(index.status, 200);
    const urls = (await index.text()).trim().split('\n');
    assert.equal(urls.length, Math.ceil(whole.length / 5));
    const joined: string[] = [];
    for (const url of urls) {
      assert.ok(url.startsWith(agg.url + '/v1/blocklist.txt?'), url);
      assert.ok(url.includes('token='), 'the token travels with each part URL');
      const res = await fetch(url);
      assert.equal(res.status, 200);
      const part = entriesOf(await res.text());
      assert.ok(part.length <= 5 && part.length > 0);
      joined.push(...part);
    }
    assert.deepEqual(joined, whole);
    const beyond = await get(`/v1/blocklist.txt?family=4&max=5&part=${urls.length + 1}`);
    assert.equal(beyond.status, 404);
  });

  test('bad query values: 400 with the field', async () => {
    for (const [query, field] of [
      ['?family=5', 'family'],
      ['?format=csv', 'format'],
      ['?max=0', 'max'],
      ['?max=abc', 'max'],
      ['?part=1', 'part'],
      ['?max=3&part=0', 'part'],
    ] as const) {
      const res = await get(`/v1/blocklist.txt${query}`);
      assert.equal(res.status, 400, query);
      const body = (await res.json()) as { error: string; field: string };
      assert.equal(body.field, field, query);
    }
    assert.equal((await get('/v1/decisions?since=-1')).status, 400);
    assert.equal((await get('/v1/decisions?since=abc')).status, 400);
  });

  test('nftables output passes nft -c -f', async (t) => {
    if (!haveTool('nft')) {
      if (process.env.CI) assert.fail('nft is missing (apt-get install nftables)');
      t.skip('nft is not installed: the nftables format was not checked with its tool');
      return;
    }
    const added = await world.publish([
      report({ target: '2001:db8:88::1' }),
      report({ target: freshTarget() }),
    ]);
    await agg.waitForSeq(added.seq);
    const text = await list('?format=nftables');
    const file = join(dir, 'check.nft');
    await writeFile(file, text);
    const r = spawnSync('nft', ['-c', '-f', file], { encoding: 'utf8' });
    assert.equal(r.status, 0, `nft -c -f failed: ${r.stderr}\n${text.slice(0, 500)}`);
  });

  test('ipset output loads with ipset restore in a network namespace', async (t) => {
    if (!haveTool('ipset') || !haveTool('ip')) {
      if (process.env.CI) assert.fail('ipset or ip is missing (apt-get install ipset iproute2)');
      t.skip('ipset/ip is not installed: the ipset format was not checked with its tool');
      return;
    }
    const text = await list('?format=ipset');
    const netns = `bbt-${process.pid}-${Date.now() % 100000}`;
    const add = spawnSync('ip', ['netns', 'add', netns], { encoding: 'utf8' });
    assert.equal(add.status, 0, `ip netns add failed: ${add.stderr}`);
    try {
      const r = spawnSync('ip', ['netns', 'exec', netns, 'ipset', 'restore'], {
        input: text,
        encoding: 'utf8',
      });
      assert.equal(r.status, 0, `ipset restore failed: ${r.stderr}`);
      const saved = spawnSync('ip', ['netns', 'exec', netns, 'ipset', 'list', 'banbus4'], {
        encoding: 'utf8',
      });
      assert.equal(saved.status, 0, saved.stderr);
      const members = saved.stdout.split('Members:\n')[1]!.trim().split('\n').filter(Boolean);
      const v4 = entriesOf(await list('?family=4'));
      assert.equal(members.length, v4.length);
    } finally {
      spawnSync('ip', ['netns', 'delete', netns]);
    }
  });

  test('the snapshot has every decision at one seq; a delta has the changes after a seq', async () => {
    const target = freshTarget();
    const added = await world.publish([report({ target, reason: 'brute force' })]);
    await agg.waitForSeq(added.seq);
    const res = await get('/v1/decisions');
    assert.equal(res.status, 200);
    const snap = (await res.json()) as {
      seq: number;
      decisions: { target: string; expires_at: string | null; reason: string | null }[];
    };
    assert.ok(snap.seq >= added.seq);
    const { rows } = await world.pool.query<{ n: number }>('SELECT count(*)::int AS n FROM decisions');
    assert.equal(snap.decisions.length, rows[0]!.n);
    const mine = snap.decisions.find((d) => d.target === target);
    assert.equal(mine?.reason, 'brute force');
    assert.equal(mine?.expires_at, added.expires_at);

    const removed = await world.publish([report({ target, action: 'unban', origin: 'manual' })]);
    const delta = await get(`/v1/decisions?since=${added.seq}`);
    assert.equal(delta.status, 200);
    const body = (await delta.json()) as {
      seq: number;
      changes: { seq: number; op: string; target: string }[];
    };
    assert.ok(body.seq >= removed.seq);
    assert.deepEqual(
      body.changes.map((c) => c.seq),
      Array.from({ length: body.seq - added.seq }, (_, i) => added.seq + 1 + i),
    );
    assert.ok(body.changes.some((c) => c.op === 'del' && c.target === target));
  });

  test('auth: 401 without or with a bad token, 403 for report-only, read token via header or query', async () => {
    const none = await fetch(agg.url + '/v1/blocklist.txt');
    assert.equal(none.status, 401);
    assert.ok(none.headers.get('www-authenticate'));
    assert.equal((await fetch(agg.url + '/v1/decisions')).status, 401);
    const bad = await fetch(agg.url + '/v1/blocklist.txt?token=bb_nottherightonebutlongenough');
    assert.equal(bad.status, 401);
    const reportOnly = await fetch(agg.url + '/v1/blocklist.txt', {
      headers: { authorization: `Bearer ${world.tokens.report}` },
    });
    assert.equal(reportOnly.status, 403);
    assert.equal((await fetch(`${agg.url}/v1/blocklist.txt?token=${world.tokens.read}`)).status, 200);
    assert.equal((await fetch(`${agg.url}/v1/blocklist.txt?token=${world.tokens.admin}`)).status, 200);
    assert.equal((await get('/v1/blocklist.txt')).status, 200);

    const open = await world.startAggregator({ AGGREGATOR_ANONYMOUS: ['127.0.0.0/8'] });
    await open.follower.whenLoaded();
    await open.waitForSeq(0);
    assert.equal((await fetch(open.url + '/v1/blocklist.txt')).status, 200);
    assert.equal((await fetch(open.url + '/v1/decisions')).status, 200);
    await open.stop();
  });

  test('health, readiness and metrics', async () => {
    assert.equal((await fetch(agg.url + '/healthz')).status, 200);
    assert.equal((await fetch(agg.url + '/readyz')).status, 200);
    const text = await (await fetch(agg.url + '/metrics')).text();
    for (const name of [
      'banbus_aggregator_entries{family="4"}',
      'banbus_aggregator_seq',
      'banbus_aggregator_lag_seconds',
      'banbus_aggregator_rebuild_seconds_bucket',
    ]) {
      assert.ok(text.includes(name), name);
    }
  });

  test('restarted mid-stream: the new aggregator serves the same list as a fresh snapshot', async () => {
    const second = await world.startAggregator();
    await second.follower.whenLoaded();
    const flow = (async () => {
      for (let i = 0; i < 10; i++) {
        await world.bus.publishReports(Array.from({ length: 20 }, () => report({ target: freshTarget() })));
      }
    })();
    await second.stop(); // while bans keep coming; its queue keeps collecting them
    await flow;
    const last = await world.publish([report({ target: freshTarget() })]);
    const third = await world.startAggregator();
    await third.waitForSeq(last.seq);
    const served = entriesOf(await list('?family=all', third.url));
    assert.deepEqual(served, await expected());
    await third.stop();
  });

  test('a gap (purged queue) is filled from decision_log', async () => {
    await agg.follower.unfollow();
    const missed = await banFresh(world, 5);
    const conn = await connect(world.amqpUrl);
    const ch = await conn.createChannel();
    await ch.purgeQueue(`${world.namespace}.aggregator`);
    await conn.close();
    await followAndFill(world, agg);
    const served = entriesOf(await list('?family=all'));
    for (const t of missed) assert.ok(served.includes(t), t);
    assert.deepEqual(served, await expected());
  });

  test('after a lost broker connection, changes its queue no longer holds are read from the log at once', async () => {
    // As after a broker restart: the queue is classic and decision messages transient, so what it held is
    // gone, and no later change comes to show the gap.
    await agg.follower.unfollow();
    const missed = await world.publish([report({ target: freshTarget() })]);
    const conn = await connect(world.amqpUrl);
    const ch = await conn.createChannel();
    await ch.purgeQueue(`${world.namespace}.aggregator`);
    await conn.close();
    await agg.follower.follow();
    const reconnected = new Promise<void>((resolve) => agg.bus.once('connected', resolve));
    const model = agg.bus.currentModel() as unknown as {
      connection: { stream: { destroy(err: Error): void } };
    };
    model.connection.stream.destroy(new Error('connection reset (test)'));
    await reconnected;
    // Well before the periodic check (every 10 s).
    await waitFor(() => agg.follower.state.seq >= missed.seq, { timeoutMs: 5000, what: 'the catch-up' });
    await agg.waitForSeq(missed.seq);
    assert.deepEqual(entriesOf(await list('?family=all')), await expected());
  });

  test('a delta older than the retained log answers 410', async () => {
    const added = await world.publish([report({ target: freshTarget() })]);
    await world.pool.query('DELETE FROM decision_log WHERE seq < $1', [added.seq - 1]);
    const old = await get('/v1/decisions?since=1');
    assert.equal(old.status, 410);
    assert.ok(((await old.json()) as { error: string }).error);
    assert.equal((await get(`/v1/decisions?since=${added.seq - 2}`)).status, 200);
    assert.equal((await get(`/v1/decisions?since=${added.seq}`)).status, 200);
    assert.equal((await get(`/v1/decisions?since=${added.seq + 1000}`)).status, 410);
  });
});

describe('the aggregator queue', () => {
  let world: World;
  before(async () => {
    world = await createWorld();
  });
  after(async () => {
    await world?.close();
  });

  test('a quorum <ns>.aggregator is replaced by a classic one, and the stream is followed', async () => {
    const queue = `${world.namespace}.aggregator`;
    const conn = await connect(world.amqpUrl);
    try {
      const ch = await conn.createChannel();
      await ch.assertQueue(queue, { durable: true, arguments: { 'x-queue-type': 'quorum' } });
      await ch.bindQueue(queue, `${world.namespace}.decisions`, '');
      const held = await world.publish([report({ target: freshTarget() })]);
      const agg = await world.startAggregator();
      await agg.follower.whenLoaded();
      const added = await world.publish([report({ target: freshTarget() })]);
      await agg.waitForSeq(added.seq);
      assert.ok(agg.follower.state.seq >= held.seq);
      // Classic now: declaring it quorum is refused.
      const probe = await conn.createChannel();
      probe.on('error', () => undefined);
      await assert.rejects(
        probe.assertQueue(queue, { durable: true, arguments: { 'x-queue-type': 'quorum' } }),
        (err: { code?: number }) => err.code === 406,
      );
      await agg.stop();
    } finally {
      await conn.close();
    }
  });

  test('bounded while nobody reads it: the oldest messages go, and what they held is read from the log', async () => {
    const queue = `${world.namespace}.aggregator`;
    const first = await world.publish([report({ target: freshTarget() })]);
    const agg = await world.startAggregator({ AGGREGATOR_QUEUE_MAX_LENGTH: 100 });
    await agg.follower.whenLoaded();
    assert.ok(agg.follower.state.seq >= first.seq);
    await agg.follower.unfollow();
    const missed = await banFresh(world, 3);
    // Then more messages than the bound, each a change the aggregator already holds: the queue keeps the
    // newest 100, so the changes above are dropped from it.
    const conn = await connect(world.amqpUrl);
    try {
      const ch = await conn.createConfirmChannel();
      const stale = Buffer.from(JSON.stringify({ seq: first.seq, op: 'add', target: '192.0.2.200' }));
      for (let i = 0; i < 150; i++) ch.sendToQueue(queue, stale);
      await ch.waitForConfirms();
      assert.equal((await ch.checkQueue(queue)).messageCount, 100);
    } finally {
      await conn.close();
    }
    await followAndFill(world, agg);
    const served = entriesOf(
      await (
        await fetch(`${agg.url}/v1/blocklist.txt?family=all`, {
          headers: { authorization: `Bearer ${world.tokens.read}` },
        })
      ).text(),
    );
    for (const t of missed) assert.ok(served.includes(t), t);
    assert.ok(!served.includes('192.0.2.200'));
    await agg.stop();
  });
});
