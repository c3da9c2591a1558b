// TargetSet against a plain Set<string> as the model: any sequence of adds and deletes of IPv4
// addresses (crowded into a few /24s so probe runs collide and wrap), networks and IPv6 entries.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { formatV4, TargetList, TargetSet, v4HostValue } from '../src/target-set.js';

const v4 = fc.oneof(
  fc.integer({ min: 0, max: 0xffffffff }).map(formatV4),
  fc.constantFrom('0.0.0.0', '255.255.255.255', '0.0.0.1', '255.255.255.254'),
  fc
    .tuple(fc.integer({ min: 0, max: 3 }), fc.integer({ min: 0, max: 255 }))
    .map(([n, h]) => `10.0.${n}.${h}`),
);
const other = fc.constantFrom(
  '10.0.0.0/24',
  '10.0.0.1/32x',
  '2001:db8::1',
  '2001:db8::/32',
  '::ffff:10.0.0.1',
  '010.0.0.1',
);
const target = fc.oneof({ weight: 6, arbitrary: v4 }, { weight: 1, arbitrary: other });
const op = fc.tuple(fc.constantFrom('add', 'delete', 'has'), target);

describe('TargetSet', () => {
  test('behaves as a Set<string> under any sequence of operations', () => {
    fc.assert(
      fc.property(fc.array(op, { maxLength: 600 }), (ops) => {
        const model = new Set<string>();
        const set = new TargetSet();
        for (const [kind, t] of ops) {
          if (kind === 'add') {
            const fresh = !model.has(t);
            model.add(t);
            assert.equal(set.add(t), fresh);
          } else if (kind === 'delete') {
            assert.equal(set.delete(t), model.delete(t));
          } else {
            assert.equal(set.has(t), model.has(t));
          }
          assert.equal(set.size, model.size);
        }
        assert.deepEqual([...set].sort(), [...model].sort());
        for (const t of model) assert.ok(set.has(t), t);
      }),
      { numRuns: 300 },
    );
  });

  test('grows and shrinks through many entries', () => {
    const set = new TargetSet();
    const n = 50_000;
    for (let i = 0; i < n; i++) set.addV4(i * 7919);
    assert.equal(set.size, n);
    for (let i = 0; i < n; i += 2) assert.ok(set.deleteV4(i * 7919));
    assert.equal(set.size, n / 2);
    for (let i = 0; i < n; i++) assert.equal(set.hasV4(i * 7919), i % 2 === 1, String(i));
    set.clear();
    assert.equal(set.size, 0);
    assert.deepEqual([...set], []);
  });

  test('v4HostValue reads canonical dotted quads only, the inverse of formatV4', () => {
    fc.assert(fc.property(fc.integer({ min: 0, max: 0xffffffff }), (v) => v4HostValue(formatV4(v)) === v));
    for (const bad of [
      '1.2.3',
      '1.2.3.4.5',
      '01.2.3.4',
      '1.2.3.256',
      '1..3.4',
      '1.2.3.4/32',
      ' 1.2.3.4',
      '1.2.3.',
    ]) {
      assert.equal(v4HostValue(bad), -1, bad);
    }
    assert.equal(v4HostValue('0.0.0.0'), 0);
    assert.equal(v4HostValue('255.255.255.255'), 0xffffffff);
  });
});

describe('TargetList', () => {
  test('holds what was pushed, duplicates included, single IPv4 addresses as numbers', () => {
    fc.assert(
      fc.property(fc.array(target, { maxLength: 3000 }), (pushed) => {
        const list = new TargetList();
        for (const t of pushed) list.push(t);
        assert.equal(list.length, pushed.length);
        assert.deepEqual([...list].sort(), [...pushed].sort());
        const v4 = pushed.filter((t) => v4HostValue(t) >= 0);
        assert.deepEqual([...list.v4Values()].map(formatV4), v4);
        assert.deepEqual(
          list.others(),
          pushed.filter((t) => v4HostValue(t) < 0),
        );
      }),
      { numRuns: 100 },
    );
  });
});
