// DecisionSet without PostgreSQL or RabbitMQ: the columns and hash table the aggregator keeps its decisions
// in, checked against a plain Map as the model.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  formatV4,
  formatV6,
  mergeTargets,
  normalizeTarget,
  rangeText,
  type FamilyRanges,
} from '@banbus/core';
import { DecisionSet, type DecisionEntry } from '../src/state.js';

const byTarget = (entries: Iterable<DecisionEntry>) =>
  [...entries].sort((a, b) => (a.target < b.target ? -1 : a.target > b.target ? 1 : 0));

function texts(r: FamilyRanges, family: 4 | 6): string[] {
  return Array.from({ length: r.size }, (_, i) => rangeText(r, family, i));
}

// Canonical texts (as decisions carry them) from a small address space, so the same targets come back often: replaces, deletes of held and of absent
// targets, and long probe runs in the hash table (whose deletion moves entries back).
const target = fc.oneof(
  fc.integer({ min: 0, max: 300 }).map((n) => formatV4(0xc0000200 + n)),
  fc.integer({ min: 0, max: 40 }).map((n) => `10.${n}.0.0/16`),
  fc.integer({ min: 0, max: 120 }).map((n) => formatV6(0x20010db8n * 2n ** 96n + BigInt(n))),
  fc.integer({ min: 0, max: 20 }).map((n) => normalizeTarget(`2001:db8:${n.toString(16)}::/48`)),
);
const op = fc.oneof(
  fc.record({
    op: fc.constant('add' as const),
    target,
    expiresAt: fc.option(fc.integer({ min: 1_700_000_000_000, max: 1_900_000_000_000 })),
    reason: fc.option(fc.constantFrom('sshd', 'nginx-http-auth', 'recidive', '3cx', 'a "quoted" \\ reason')),
  }),
  fc.record({ op: fc.constant('del' as const), target }),
);

describe('DecisionSet', () => {
  test('property: after any adds and deletes it holds exactly what a Map would', () => {
    fc.assert(
      fc.property(fc.array(op, { maxLength: 400 }), (ops) => {
        const set = new DecisionSet();
        const model = new Map<string, DecisionEntry>();
        for (const o of ops) {
          if (o.op === 'add') {
            set.put(o.target, o.expiresAt, o.reason);
            model.set(o.target, { target: o.target, expiresAt: o.expiresAt, reason: o.reason });
          } else {
            set.delete(o.target);
            model.delete(o.target);
          }
        }
        assert.equal(set.size, model.size);
        const snapshot = set.snapshot();
        assert.deepEqual(byTarget(snapshot.entries()), byTarget(model.values()));
        // The JSON /v1/decisions streams says the same, whatever the chunk size.
        const json = JSON.parse(`[${[...snapshot.jsonChunks(7)].join(',')}]`) as {
          target: string;
          expires_at: string | null;
          reason: string | null;
        }[];
        assert.deepEqual(
          byTarget(
            json.map((j) => ({
              target: j.target,
              expiresAt: j.expires_at === null ? null : Date.parse(j.expires_at),
              reason: j.reason,
            })),
          ),
          byTarget(model.values()),
        );
        const { v4, v6 } = set.columns();
        assert.deepEqual(
          [...texts(v4, 4), ...texts(v6, 6)].sort(),
          [...model.keys()].sort(),
          'the columns a build gets hold every live target once',
        );
      }),
      { numRuns: 500 },
    );
  });

  test('grows past its first capacity and its hash table, and shrinks back', () => {
    const set = new DecisionSet();
    const n = 50_000;
    for (let i = 0; i < n; i++) set.put(formatV4(0x0b000000 + 3 * i), null, 'sshd');
    assert.equal(set.size, n);
    for (let i = 0; i < n; i += 2) set.delete(formatV4(0x0b000000 + 3 * i));
    assert.equal(set.size, n / 2);
    const left = set.columns().v4;
    assert.deepEqual(
      texts(left, 4).sort(),
      Array.from({ length: n / 2 }, (_, k) => formatV4(0x0b000000 + 3 * (2 * k + 1))).sort(),
    );
    // Freed slots are used again: adding as many back does not leave holes in the build's columns.
    for (let i = 0; i < n; i += 2) set.put(formatV4(0x0c000000 + i), null, null);
    assert.equal(set.columns().v4.size, n);
  });

  test('apply: adds with expiry and reason, dels, and the seq moves', () => {
    const set = new DecisionSet();
    set.apply({
      seq: 1,
      op: 'add',
      target: '192.0.2.1',
      expires_at: '2030-01-01T00:00:00.000Z',
      reason: 'sshd',
    });
    set.apply({ seq: 2, op: 'add', target: '2001:db8::/32', expires_at: null, reason: null });
    set.apply({ seq: 3, op: 'add', target: '198.51.100.7', expires_at: null, reason: 'recidive' });
    set.apply({ seq: 4, op: 'del', target: '198.51.100.7', expires_at: null, reason: null });
    assert.equal(set.seq, 4);
    assert.deepEqual(byTarget(set.snapshot().entries()), [
      { target: '192.0.2.1', expiresAt: Date.parse('2030-01-01T00:00:00.000Z'), reason: 'sshd' },
      { target: '2001:db8::/32', expiresAt: null, reason: null },
    ]);
  });

  test('a snapshot stays as it was while the set moves on', () => {
    const set = new DecisionSet();
    set.put('192.0.2.1', null, 'sshd');
    set.seq = 7;
    const snapshot = set.snapshot();
    set.delete('192.0.2.1');
    set.put('192.0.2.2', null, 'other');
    set.seq = 9;
    assert.equal(snapshot.seq, 7);
    assert.deepEqual([...snapshot.entries()], [{ target: '192.0.2.1', expiresAt: null, reason: 'sshd' }]);
  });

  test('mostly unique reasons are compacted without losing the ones in use', () => {
    const set = new DecisionSet();
    // More distinct reasons than are kept: the texts no decision uses any more are dropped on the way.
    for (let i = 0; i <= 100_500; i++) set.put(formatV4(0x0b000000 + (i % 1000)), null, `reason ${i}`);
    const entries = byTarget(set.snapshot().entries());
    assert.equal(entries.length, 1000);
    for (const e of entries) {
      const i = (Number(e.target.split('.')[3]) + 256 * Number(e.target.split('.')[2])) % 1000;
      assert.equal(e.reason, `reason ${100_000 + i <= 100_500 ? 100_000 + i : 99_000 + i}`);
    }
  });

  test('rejects what is not a target', () => {
    const set = new DecisionSet();
    for (const bad of ['', 'nonsense', '10.0.0.1/8', '::1/129']) {
      assert.throws(() => set.put(bad, null, null), { name: 'TargetError' }, bad);
    }
    assert.equal(set.size, 0);
  });

  test('a build of the columns merges like the texts', () => {
    const set = new DecisionSet();
    const targets = ['10.0.0.0/25', '10.0.0.128/25', '192.0.2.1', '::1', '::'];
    for (const t of targets) set.put(t, null, null);
    const { v4, v6 } = set.columns();
    assert.deepEqual(mergeTargets([...texts(v4, 4), ...texts(v6, 6)]), mergeTargets(targets));
  });
});
