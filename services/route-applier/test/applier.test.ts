// The applier's state machine with the dry-run backend and an in-memory decision source: ordering,
// duplicates, gaps, 410, the snapshot guard, never-block, and the nftables coverage view.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { parseTarget, type DecisionChange } from '@banbus/core';
import { createLogger } from '@banbus/runtime';
import { waitFor } from '../../../test/harness/wait.js';
import {
  Applier,
  Coverage,
  DryRunBackend,
  KernelOps,
  maximalTargets,
  NeverBlock,
  SnapshotScanner,
  SourceError,
  suspiciousSnapshot,
  type DecisionSource,
  type Delta,
  type KernelBackend,
  type Snapshot,
} from '../src/index.js';

const logger = createLogger({ level: 'silent' });

/** An in-memory aggregator: a log of changes, the set they make, and switches for failures. */
class MemorySource implements DecisionSource {
  log: DecisionChange[] = [];
  /** Seqs up to this are no longer in the log (a delta from before answers 'gone'). */
  trimmedTo = 0;
  mode: 'ok' | 'down' | 'empty' | 'invalid' = 'ok';
  snapshots = 0;
  deltas = 0;

  get seq(): number {
    return this.log.length;
  }

  push(op: 'add' | 'del', target: string): DecisionChange {
    const change = { seq: this.log.length + 1, op, target };
    this.log.push(change);
    return change;
  }

  set(upTo = this.seq): Set<string> {
    const s = new Set<string>();
    for (const c of this.log.slice(0, upTo)) {
      if (c.op === 'add') s.add(c.target);
      else s.delete(c.target);
    }
    return s;
  }

  async snapshot(): Promise<Snapshot> {
    this.snapshots++;
    if (this.mode === 'down') throw new SourceError('unavailable', 'down');
    if (this.mode === 'empty') return { seq: this.seq, targets: [] };
    if (this.mode === 'invalid') return { seq: this.seq, targets: ['10.0.0.1', 'not-an-ip'] };
    return { seq: this.seq, targets: [...this.set()] };
  }

  async delta(since: number): Promise<Delta | 'gone'> {
    this.deltas++;
    if (this.mode === 'down') throw new SourceError('unavailable', 'down');
    if (since < this.trimmedTo || since > this.seq) return 'gone';
    return { seq: this.seq, changes: this.log.slice(since) };
  }
}

function makeApplier(
  source: DecisionSource,
  backend: KernelBackend = new DryRunBackend(logger),
  never: string[] = [],
) {
  return new Applier({
    source,
    backend,
    neverBlock: new NeverBlock(never),
    logger,
    guard: { min: 10, ratio: 0.1 },
    deltaMax: 1000,
    retry: { minMs: 5, maxMs: 20 },
  });
}

const ip = (i: number) => `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`;

describe('pure helpers', () => {
  test('suspiciousSnapshot: empty or shrunken below the ratio once the host holds enough', () => {
    const guard = { min: 100, ratio: 0.1 };
    assert.match(suspiciousSnapshot(500, 0, guard)!, /empty/);
    assert.match(suspiciousSnapshot(500, 49, guard)!, /below/);
    assert.equal(suspiciousSnapshot(500, 50, guard), undefined);
    assert.equal(suspiciousSnapshot(99, 0, guard), undefined, 'a host holding little may be emptied');
    assert.equal(suspiciousSnapshot(500, 0, { min: 0, ratio: 0.1 }), undefined, 'MIN=0 turns it off');
  });

  test('KernelOps: an add and a del of the same entry cancel', () => {
    const ops = new KernelOps();
    ops.push('a', 'add');
    ops.push('a', 'del');
    ops.push('b', 'del');
    assert.deepEqual(ops.split(), { adds: [], dels: ['b'] });
  });

  test('maximalTargets keeps only what no other entry contains', () => {
    const out = maximalTargets(
      [
        '10.0.0.0/8',
        '10.1.2.3',
        '192.0.2.0/24',
        '192.0.2.9',
        '2001:db8::/32',
        '2001:db8::1',
        '2001:db9::1',
      ].map(parseTarget),
    );
    assert.deepEqual(
      out.map((t) => t.text),
      ['10.0.0.0/8', '192.0.2.0/24', '2001:db8::/32', '2001:db9::1'],
    );
  });

  test('Coverage: a network replaces what it contains, and gives it back when it goes', () => {
    const desired = new Set(['10.1.2.3', '10.1.0.0/24']);
    const c = new Coverage();
    assert.deepEqual([...c.reset([...desired].map(parseTarget))], ['10.1.0.0/24', '10.1.2.3']);
    let ops = new KernelOps();
    desired.add('10.0.0.0/8');
    c.add(parseTarget('10.0.0.0/8'), ops);
    assert.deepEqual(ops.split(), { adds: ['10.0.0.0/8'], dels: ['10.1.0.0/24', '10.1.2.3'] });
    assert.deepEqual([...c.kernel], ['10.0.0.0/8']);
    ops = new KernelOps();
    desired.add('10.9.9.9');
    c.add(parseTarget('10.9.9.9'), ops);
    assert.equal(ops.size, 0, 'covered: nothing to write');
    ops = new KernelOps();
    desired.delete('10.0.0.0/8');
    c.del(parseTarget('10.0.0.0/8'), desired, ops);
    assert.deepEqual(ops.split().adds.sort(), ['10.1.0.0/24', '10.1.2.3', '10.9.9.9']);
    assert.deepEqual(ops.split().dels, ['10.0.0.0/8']);
  });

  test('NeverBlock refuses what overlaps loopback and the configured networks', () => {
    const nb = new NeverBlock(['192.0.2.1', '10.20.0.0/16']);
    assert.equal(nb.protects(parseTarget('127.0.0.5')), '127.0.0.0/8');
    assert.equal(nb.protects(parseTarget('::1')), '::1');
    assert.equal(nb.protects(parseTarget('192.0.2.0/24')), '192.0.2.1', 'a network holding the address');
    assert.equal(nb.protects(parseTarget('10.20.3.4')), '10.20.0.0/16');
    assert.equal(nb.protects(parseTarget('10.21.3.4')), undefined);
  });
});

describe('SnapshotScanner', () => {
  const body = JSON.stringify({
    seq: 42,
    decisions: [
      { target: '192.0.2.1', expires_at: null, reason: 'says "target":"10.9.9.9" inside' },
      { target: '2001:db8::/32', expires_at: '2030-01-01T00:00:00.000Z', reason: null },
      { target: '198.51.100.0/24', expires_at: null, reason: 'x'.repeat(1000) },
    ],
  });

  const scan = (text: string, size: number) => {
    const s = new SnapshotScanner();
    for (let i = 0; i < text.length; i += size) s.push(text.slice(i, i + size));
    const { seq, targets } = s.finish();
    return { seq, targets: [...targets] };
  };

  test('finds every target whatever the chunking, and nothing inside other strings', () => {
    for (const size of [1, 2, 7, 64, 10_000]) {
      assert.deepEqual(scan(body, size), {
        seq: 42,
        targets: ['192.0.2.1', '2001:db8::/32', '198.51.100.0/24'],
      });
    }
  });

  test('a body cut short is truncated; another shape falls back to JSON.parse', () => {
    assert.throws(
      () => scan(body.slice(0, body.length - 2), 5),
      (e: SourceError) => e.reason === 'truncated',
    );
    assert.throws(
      () => scan(body.slice(0, 60), 5),
      (e: SourceError) => e.reason === 'truncated',
    );
    assert.deepEqual(scan(JSON.stringify({ decisions: [{ target: '10.0.0.1' }], seq: 3 }), 4), {
      seq: 3,
      targets: ['10.0.0.1'],
    });
    assert.deepEqual(scan('{"seq":5,"decisions":[]}', 3), { seq: 5, targets: [] });
  });
});

describe('Applier', () => {
  test('snapshot, then the stream in seq order; duplicates and reordered batches give the same set', async () => {
    const source = new MemorySource();
    for (let i = 1; i <= 50; i++) source.push('add', ip(i));
    const backend = new DryRunBackend(logger);
    const applier = makeApplier(source, backend);
    applier.start();
    await applier.whenReady();
    assert.equal(applier.seq, 50);
    assert.deepEqual(backend.entries, source.set());

    const more: DecisionChange[] = [];
    for (let i = 1; i <= 30; i++)
      more.push(source.push(i % 3 === 0 ? 'del' : 'add', ip(i % 2 ? i : 100 + i)));
    // The same changes delivered twice, the second half before the first.
    await applier.receive([...more.slice(15), ...more.slice(15)]);
    await applier.receive([...more.slice(0, 15), ...more]);
    assert.equal(applier.seq, 80);
    assert.deepEqual(backend.entries, source.set());
    await applier.stop();
  });

  test('a gap is filled from a delta; 410 or a gap wider than deltaMax takes a snapshot', async () => {
    const source = new MemorySource();
    for (let i = 1; i <= 20; i++) source.push('add', ip(i));
    const backend = new DryRunBackend(logger);
    const applier = makeApplier(source, backend);
    applier.start();
    await applier.whenReady();

    for (let i = 1; i <= 10; i++) source.push('del', ip(i));
    const last = source.push('add', '10.200.0.1');
    await applier.receive([last]); // 21..30 never arrived
    assert.equal(source.deltas, 1);
    assert.deepEqual(backend.entries, source.set());

    const snapshotsBefore = source.snapshots;
    for (let i = 1; i <= 5; i++) source.push('add', ip(500 + i));
    source.trimmedTo = source.seq; // the log no longer reaches back
    const tail = source.push('add', '10.200.0.2');
    await applier.receive([tail]);
    assert.equal(source.snapshots, snapshotsBefore + 1);
    assert.deepEqual(backend.entries, source.set());
    assert.equal(applier.seq, source.seq);
    await applier.stop();
  });

  test('aggregator down at start: retries, the host keeps its entries, then converges', async () => {
    const source = new MemorySource();
    source.mode = 'down';
    for (let i = 1; i <= 5; i++) source.push('add', ip(i));
    const backend = new DryRunBackend(logger);
    for (const t of ['10.99.0.1', '10.99.0.2']) backend.entries.add(t);
    const applier = makeApplier(source, backend);
    applier.start();
    await waitFor(() => source.snapshots >= 3, { intervalMs: 5, what: 'three snapshot attempts' });
    assert.equal(applier.ready, false);
    assert.deepEqual([...backend.entries], ['10.99.0.1', '10.99.0.2']);
    source.mode = 'ok';
    await applier.whenReady();
    assert.deepEqual(backend.entries, source.set());
    await applier.stop();
  });

  test('an empty or unparsable snapshot while holding many entries wipes nothing', async () => {
    for (const mode of ['empty', 'invalid'] as const) {
      const source = new MemorySource();
      const backend = new DryRunBackend(logger);
      for (let i = 1; i <= 200; i++) backend.entries.add(ip(i));
      source.mode = mode;
      const applier = makeApplier(source, backend);
      applier.start();
      await waitFor(() => source.snapshots >= 3, { intervalMs: 5, what: `three ${mode} snapshots` });
      assert.equal(applier.ready, false, mode);
      assert.equal(backend.entries.size, 200, mode);
      assert.match(applier.lastSnapshotError ?? '', mode === 'empty' ? /empty/ : /not-an-ip/);
      await applier.stop();
    }
  });

  test('never-block entries are refused from snapshots and from the stream, and removed if held', async () => {
    const source = new MemorySource();
    source.push('add', '10.50.0.0/16');
    source.push('add', '10.60.0.1');
    const backend = new DryRunBackend(logger);
    backend.entries.add('10.50.0.0/16'); // held from before the admin network was configured
    const applier = makeApplier(source, backend, ['10.50.1.1']);
    applier.start();
    await applier.whenReady();
    assert.deepEqual([...backend.entries], ['10.60.0.1']);
    await applier.receive([source.push('add', '127.0.0.1'), source.push('add', '10.50.1.0/24')]);
    assert.deepEqual([...backend.entries], ['10.60.0.1']);
    assert.equal(applier.refusedCount, 3);
    await applier.receive([source.push('del', '10.50.1.0/24')]);
    assert.equal(applier.refusedCount, 2);
    await applier.stop();
  });

  test('a disjoint backend holds only the maximal decisions', async () => {
    const source = new MemorySource();
    source.push('add', '10.1.2.3');
    source.push('add', '10.1.0.0/16');
    const inner = new DryRunBackend(logger);
    const backend: KernelBackend = Object.assign(Object.create(inner) as DryRunBackend, { disjoint: true });
    const applier = makeApplier(source, backend);
    applier.start();
    await applier.whenReady();
    assert.deepEqual([...inner.entries], ['10.1.0.0/16']);
    await applier.receive([source.push('del', '10.1.0.0/16')]);
    assert.deepEqual([...inner.entries], ['10.1.2.3']);
    await applier.stop();
  });
});
