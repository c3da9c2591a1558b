// `banbus import` against a real pipeline (ingest → RabbitMQ → persister → PostgreSQL → aggregator, own
// database and namespace): a 100k-line list with comments, duplicates and garbage gives exact counts, and
// a second run of the same list imports nothing because every address is already a decision.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AggregatorEnvSchema, IngestEnvSchema, parseEnv } from '@banbus/core';
import { Bus } from '@banbus/bus';
import { AllowlistRepository, HostRepository } from '@banbus/db';
import { createRegistry, type Running } from '@banbus/runtime';
import { startIngest } from '@banbus/ingest';
import { startAggregator } from '@banbus/aggregator';
import { runCli, type CliIo } from '@banbus/cli';
import { waitFor } from '../../../test/harness/index.js';
import { createWorld, type World } from '../../../test/harness/world.js';
import type { ImportSummary } from '../src/commands/import.js';

let world: World;
let dir: string;
let ingest: Running & { port: number };
let aggregator: Running & { port: number };
const buses: Bus[] = [];
let admin: string;
let reporter: string;

interface Result {
  code: number;
  out: string;
  err: string;
}

async function banbus(argv: string[], env: Record<string, string> = {}): Promise<Result> {
  let out = '';
  let err = '';
  const io: CliIo = {
    env: {
      BANBUS_INGEST_URL: `http://127.0.0.1:${ingest.port}`,
      BANBUS_URL: `http://127.0.0.1:${aggregator.port}`,
      BANBUS_TOKEN: admin,
      ...env,
    },
    out: (t) => void (out += t),
    err: (t) => void (err += t),
  };
  const code = await runCli(argv, io);
  return { code, out, err };
}

async function decisionCount(): Promise<number> {
  const res = await fetch(`http://127.0.0.1:${aggregator.port}/v1/decisions`, {
    headers: { authorization: `Bearer ${admin}` },
  });
  if (!res.ok) return -1;
  return ((await res.json()) as { decisions: unknown[] }).decisions.length;
}

async function bus(): Promise<Bus> {
  const b = await Bus.connect({
    url: world.amqpUrl,
    namespace: world.namespace,
    logger: world.logger,
    registry: createRegistry(false),
  });
  buses.push(b);
  return b;
}

before(async () => {
  world = await createWorld();
  await world.start();
  const hosts = new HostRepository(world.pool);
  admin = (await hosts.add('operator', ['admin'])).token;
  reporter = (await hosts.add('web1', ['report'])).token;
  await new AllowlistRepository(world.pool).add({ network: '203.0.113.0/24', comment: 'office' });
  const common = {
    DATABASE_URL: world.db.url,
    AMQP_URL: world.amqpUrl,
    BANBUS_NAMESPACE: world.namespace,
    BANBUS_LISTEN: '127.0.0.1',
    LOG_LEVEL: 'silent',
  };
  ingest = await startIngest({
    config: parseEnv(IngestEnvSchema, {
      ...common,
      // The default per-host rate limit: the admin token an import uses is not subject to it.
      INGEST_PORT: '0',
    }),
    logger: world.logger,
    registry: createRegistry(false),
    pool: world.pool,
    bus: await bus(),
  });
  aggregator = await startAggregator({
    config: parseEnv(AggregatorEnvSchema, { ...common, AGGREGATOR_PORT: '0' }),
    logger: world.logger,
    registry: createRegistry(false),
    pool: world.pool,
    bus: await bus(),
  });
  await waitFor(async () => (await decisionCount()) === 0, { what: 'aggregator ready' });
  dir = await mkdtemp(join(tmpdir(), 'banbus-import-'));
});

after(async () => {
  await ingest?.stop();
  await aggregator?.stop();
  for (const b of buses) await b.close();
  await world?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** A deterministic shuffle, so that garbage, comments and duplicates are spread over every chunk. */
function shuffle<T>(items: T[]): T[] {
  let seed = 42;
  for (let i = items.length - 1; i > 0; i--) {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    const j = seed % (i + 1);
    [items[i], items[j]] = [items[j]!, items[i]!];
  }
  return items;
}

interface Line {
  text: string;
  kind: 'valid' | 'duplicate' | 'garbage' | 'refused' | 'skip';
}

/** 100,000 lines: 62,502 distinct targets (2 of which ingest refuses), 6,000 duplicates, 3,000 garbage. */
function makeList(): Line[] {
  const valid: Line[] = [];
  for (let i = 1; i <= 60_000; i++) {
    const ip = `198.18.${i >> 8}.${i & 255}`;
    valid.push({ text: i % 7 === 0 ? `${ip}   # seen on web${i % 5}` : ip, kind: 'valid' });
  }
  for (let i = 1; i <= 2_000; i++) valid.push({ text: `2001:DB8::${i.toString(16)}`, kind: 'valid' });
  for (let i = 0; i < 500; i++) valid.push({ text: `100.${64 + (i >> 8)}.${i & 255}.0/24`, kind: 'valid' });
  const refused: Line[] = [
    { text: '10.0.0.0/8', kind: 'refused' }, // broader than BANBUS_MIN_PREFIX_V4
    { text: '203.0.113.5', kind: 'refused' }, // allowlisted
  ];
  const duplicates: Line[] = [];
  for (let i = 1; i <= 5_000; i++)
    duplicates.push({ text: `198.18.${i >> 8}.${i & 255}`, kind: 'duplicate' });
  for (let i = 5_001; i <= 6_000; i++)
    duplicates.push({ text: `::ffff:198.18.${i >> 8}.${i & 255}`, kind: 'duplicate' });
  const garbageKinds = [
    'hello',
    '999.1.2.3',
    '10.0.0.1/8',
    '192.0.2.1 192.0.2.2',
    '010.1.2.3',
    '2001:db8::g',
  ];
  const garbage: Line[] = [];
  for (let i = 0; i < 3_000; i++)
    garbage.push({ text: garbageKinds[i % garbageKinds.length]!, kind: 'garbage' });
  const filler: Line[] = [];
  const used = valid.length + refused.length + duplicates.length + garbage.length;
  for (let i = 0; used + filler.length < 100_000; i++) {
    filler.push({
      text: i % 3 === 0 ? '' : i % 3 === 1 ? '# fail2ban list, exported from MySQL' : '   ; pfSense style',
      kind: 'skip',
    });
  }
  // The list's own duplicates must come after their first appearance to count as duplicates: keep the
  // valid lines' relative order by placing the duplicates in the second half only.
  const first = shuffle([...valid, ...refused, ...garbage, ...filler.slice(0, filler.length >> 1)]);
  const second = shuffle([...duplicates, ...filler.slice(filler.length >> 1)]);
  return [...first, ...second];
}

describe('banbus import', () => {
  const lines = makeList();
  const expectedRejected = lines
    .map((l, i) => ({ line: i + 1, kind: l.kind }))
    .filter((l) => l.kind === 'garbage' || l.kind === 'refused')
    .map((l) => l.line);

  test('100k lines with comments, duplicates and garbage → exact counts, rejected lines by number', async (t) => {
    assert.equal(lines.length, 100_000);
    const file = join(dir, 'badips.txt');
    await writeFile(file, lines.map((l) => l.text).join('\n') + '\n');
    const started = performance.now();
    const r = await banbus(['import', file, '--json']);
    const seconds = (performance.now() - started) / 1000;
    assert.equal(r.code, 0, r.err);
    const summary = JSON.parse(r.out) as ImportSummary;
    assert.equal(summary.lines, 100_000);
    assert.equal(summary.imported, 62_500);
    assert.equal(summary.alreadyBanned, 0);
    assert.equal(summary.duplicates, 6_000);
    assert.deepEqual(
      summary.rejected.map((x) => x.line),
      expectedRejected,
    );
    const byText = new Map(summary.rejected.map((x) => [x.text, x.reason]));
    assert.match(byText.get('hello')!, /not an IPv4 or IPv6 address/);
    assert.match(byText.get('10.0.0.1/8')!, /host bits|10\.0\.0\.0\/8/);
    assert.match(byText.get('192.0.2.1 192.0.2.2')!, /one address or network per line/);
    assert.match(byText.get('10.0.0.0/8')!, /broader|\/16/);
    assert.match(byText.get('203.0.113.5')!, /allowlisted/);
    t.diagnostic(`import of 100,000 lines (62,500 sent) took ${seconds.toFixed(2)} s`);

    // Everything imported becomes a decision with origin import.
    await waitFor(async () => (await decisionCount()) === 62_500, {
      what: '62,500 decisions',
      timeoutMs: 120_000,
      intervalMs: 250,
    });
    const { rows } = await world.pool.query<{ origin: string; n: string }>(
      'SELECT origin, count(*) AS n FROM decisions GROUP BY origin',
    );
    assert.deepEqual(
      rows.map((x) => [x.origin, Number(x.n)]),
      [['import', 62_500]],
    );
  });

  test('the same list again imports 0: every address is already banned', async () => {
    const file = join(dir, 'badips.txt');
    const r = await banbus(['import', file]);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /^imported {8}0$/m);
    assert.match(r.out, /^already banned {2}62500$/m);
    assert.match(r.out, /^duplicates {6}6000$/m);
    assert.match(r.out, /^rejected {8}3002$/m);
    assert.match(r.out, /… 2982 more \(--show-rejected lists them all\)/);
    const { rows } = await world.pool.query<{ n: string }>(`SELECT count(*) AS n FROM reports`);
    assert.equal(Number(rows[0]!.n), 62_500);
  });

  test('--dry-run checks the list and sends nothing', async () => {
    const file = join(dir, 'small.txt');
    await writeFile(file, '# two new ones\n192.0.2.201\n192.0.2.202 # web3\n');
    const dry = await banbus(['import', file, '--dry-run']);
    assert.equal(dry.code, 0, dry.err);
    assert.match(dry.out, /^would import {4}2$/m);
    assert.match(dry.out, /^already banned {2}not checked$/m);
    const { rows } = await world.pool.query<{ n: string }>(
      `SELECT count(*) AS n FROM reports WHERE target <<= '192.0.2.0/24'`,
    );
    assert.equal(Number(rows[0]!.n), 0);
  });

  test('bad arguments and configuration → exit 2 with the culprit named', async () => {
    const missing = await banbus(['import']);
    assert.equal(missing.code, 2);
    assert.match(missing.err, /missing required argument 'file'/);
    const nofile = await banbus(['import', join(dir, 'nope.txt')]);
    assert.equal(nofile.code, 2);
    assert.match(nofile.err, /FILE: cannot read .*nope\.txt: ENOENT/);
    const notafile = await banbus(['import', dir]);
    assert.equal(notafile.code, 2);
    assert.match(notafile.err, /is not a file/);
    const chunk = await banbus(['import', join(dir, 'small.txt'), '--chunk-size', '0']);
    assert.equal(chunk.code, 2);
    assert.match(chunk.err, /--chunk-size: at least 1/);
    const bantime = await banbus(['import', join(dir, 'small.txt'), '--bantime', 'soon']);
    assert.equal(bantime.code, 2);
    assert.match(bantime.err, /--bantime/);
    const token = await banbus(['import', join(dir, 'small.txt')], { BANBUS_TOKEN: '' });
    assert.equal(token.code, 2);
    assert.match(token.err, /BANBUS_TOKEN: required/);
    const url = await banbus(['import', join(dir, 'small.txt'), '--ingest-url', 'ftp://x']);
    assert.equal(url.code, 2);
    assert.match(url.err, /BANBUS_INGEST_URL/);
  });

  test('a token without the admin scope fails (exit 1) and says why; nothing is imported', async () => {
    const r = await banbus(['import', join(dir, 'small.txt'), '--no-check'], { BANBUS_TOKEN: reporter });
    assert.equal(r.code, 1);
    assert.match(r.err, /admin scope/);
    const { rows } = await world.pool.query<{ n: string }>(
      `SELECT count(*) AS n FROM reports WHERE target <<= '192.0.2.0/24'`,
    );
    assert.equal(Number(rows[0]!.n), 0);
  });
});
