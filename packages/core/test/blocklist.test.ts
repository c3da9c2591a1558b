import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { mergeCidr } from 'cidr-tools';
import {
  IPSET_MAXELEM,
  mergeRanges,
  mergeTargets,
  partCount,
  rangeText,
  renderBlocklist,
  scanTarget,
  sliceRanges,
  TARGET_V6,
  type FamilyRanges,
  type MergedBlocklist,
  type MergedRanges,
  type RenderOptions,
} from '../src/blocklist.js';
import { formatV4, formatV6, makeTarget, normalizeTarget, parseTarget } from '../src/address.js';

const merged = (...targets: string[]) => mergeTargets(targets);

describe('mergeTargets', () => {
  const cases: Array<[name: string, input: string[], v4: string[], v6: string[]]> = [
    ['empty', [], [], []],
    ['one host', ['192.0.2.1'], ['192.0.2.1'], []],
    ['duplicates', ['192.0.2.1', '192.0.2.1'], ['192.0.2.1'], []],
    ['adjacent /25 + /25 → /24', ['10.0.0.128/25', '10.0.0.0/25'], ['10.0.0.0/24'], []],
    ['adjacent hosts → /31', ['10.0.0.1', '10.0.0.0'], ['10.0.0.0/31'], []],
    ['adjacent but not siblings', ['10.0.0.1', '10.0.0.2'], ['10.0.0.1', '10.0.0.2'], []],
    ['three hosts', ['10.0.0.1', '10.0.0.2', '10.0.0.3'], ['10.0.0.1', '10.0.0.2/31'], []],
    ['contained network', ['10.0.0.0/8', '10.1.0.0/16', '10.255.255.255'], ['10.0.0.0/8'], []],
    ['host + its network', ['198.51.100.7', '198.51.100.0/24'], ['198.51.100.0/24'], []],
    [
      'overlapping run split into minimal blocks',
      ['10.0.0.2/31', '10.0.0.4/30', '10.0.0.8/29', '10.0.0.16', '10.0.0.1'],
      ['10.0.0.1', '10.0.0.2/31', '10.0.0.4/30', '10.0.0.8/29', '10.0.0.16'],
      [],
    ],
    [
      'quarters of a /22 → /22',
      ['10.0.2.0/24', '10.0.0.0/24', '10.0.3.0/24', '10.0.1.0/24'],
      ['10.0.0.0/22'],
      [],
    ],
    [
      'sorted by address, not text',
      ['9.0.0.1', '10.0.0.1', '100.0.0.1'],
      ['9.0.0.1', '10.0.0.1', '100.0.0.1'],
      [],
    ],
    ['0.0.0.0/0 swallows all', ['1.2.3.4', '0.0.0.0/0', '255.255.255.255'], ['0.0.0.0/0'], []],
    ['halves → 0.0.0.0/0', ['128.0.0.0/1', '0.0.0.0/1'], ['0.0.0.0/0'], []],
    ['0.0.0.0', ['0.0.0.0', '0.0.0.1'], ['0.0.0.0/31'], []],
    ['255.255.255.255', ['255.255.255.255', '255.255.255.254'], ['255.255.255.254/31'], []],
    ['top end alone', ['255.255.255.255', '255.255.255.253'], ['255.255.255.253', '255.255.255.255'], []],
    ['v4 and v6 apart', ['64:ff9b::/96', '0.0.0.0/0', '::1'], ['0.0.0.0/0'], ['::1', '64:ff9b::/96']],
    ['IPv4-mapped IPv6 counts as IPv4', ['::ffff:0:0/96', '1.2.3.4'], ['0.0.0.0/0'], []],
    ['::/0', ['2001:db8::1', '::/0', '::1'], [], ['::/0']],
    ['::1', ['::1'], [], ['::1']],
    ['::1 and :: → ::/127', ['::1', '::'], [], ['::/127']],
    [
      'ffff…ffff',
      ['ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe'],
      [],
      ['ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe/127'],
    ],
    ['v6 /65 halves → /64', ['2001:db8:0:1:8000::/65', '2001:db8:0:1::/65'], [], ['2001:db8:0:1::/64']],
    ['v6 host + its /64', ['2001:db8::5', '2001:db8::/64'], [], ['2001:db8::/64']],
    [
      'v6 across a word boundary',
      ['2001:db8::ffff:ffff', '2001:db8::1:0:0'],
      [],
      ['2001:db8::ffff:ffff', '2001:db8::1:0:0'],
    ],
    [
      'v6 sorted numerically',
      ['2001:db8::10', '2001:db8::9', 'fe80::1'],
      [],
      ['2001:db8::9', '2001:db8::10', 'fe80::1'],
    ],
    [
      'non-canonical spellings are normalized',
      ['192.0.2.1/32', '2001:DB8:0:0::1', '::ffff:192.0.2.2', ' 10.0.0.0/8 ', '2001:db8::2/128'],
      ['10.0.0.0/8', '192.0.2.1', '192.0.2.2'],
      ['2001:db8::1', '2001:db8::2'],
    ],
  ];
  for (const [name, input, v4, v6] of cases) {
    test(name, () => assert.deepEqual(mergeTargets(input), { v4, v6 }));
  }

  test('accepts any iterable and keeps growing past its first buffer', () => {
    function* hosts() {
      for (let i = 0; i < 5000; i += 2) yield formatV4(0x0a000000 + i);
      yield '2001:db8::1';
    }
    const out = mergeTargets(hosts());
    assert.equal(out.v4.length, 2500);
    assert.equal(out.v4[0], '10.0.0.0');
    assert.deepEqual(out.v6, ['2001:db8::1']);
    assert.deepEqual(merged(...new Set(['1.1.1.1'])), { v4: ['1.1.1.1'], v6: [] });
  });

  test('rejects what is not a target, like parseTarget', () => {
    for (const bad of ['', '10.0.0.1/8', '1.2.3', '2001:db8::1/64', 'nonsense', '01.2.3.4', '::1/129']) {
      assert.throws(() => merged(bad), { name: 'TargetError' }, bad);
    }
  });
});

// ---------------------------------------------------------------------------------------------------------------
// Property: same addresses as cidr-tools' mergeCidr (the reference), and nothing left to merge.

const v4Host = fc.ipV4();
const v4Net = fc
  .tuple(fc.ipV4(), fc.integer({ min: 0, max: 32 }))
  .map(([ip, prefix]) => networkText(ip, prefix));
// Clustered targets inside 10.0.0.0/22 and 2001:db8::/118 so that overlaps, containment and adjacency are common.
const v4Cluster = fc
  .tuple(fc.integer({ min: 0, max: 1023 }), fc.integer({ min: 22, max: 32 }))
  .map(([offset, prefix]) => networkText(formatV4(0x0a000000 + offset), prefix));
const v6Host = fc.ipV6();
const v6Net = fc
  .tuple(fc.ipV6(), fc.integer({ min: 0, max: 128 }))
  .map(([ip, prefix]) => networkText(ip, prefix));
const v6Cluster = fc
  .tuple(fc.integer({ min: 0, max: 1023 }), fc.integer({ min: 118, max: 128 }))
  .map(([offset, prefix]) => networkText(formatV6(0x20010db8n * 2n ** 96n + BigInt(offset)), prefix));

/** Canonical text of the network of the given prefix containing ip (host bits masked). */
function networkText(ip: string, prefix: number): string {
  const target = parseTarget(ip);
  const bits = target.family === 4 ? 32 : 128;
  // fc.ipV6 may yield IPv4-mapped addresses, which parseTarget folds to IPv4 (a /(p-96) then).
  const p = target.family === 4 && ip.includes(':') ? Math.max(0, prefix - 96) : Math.min(prefix, bits);
  const host = BigInt(bits - p);
  return makeTarget(target.family, (target.start >> host) << host, p).text;
}

/** mergeCidr's answer in core's canonical form, v4 then v6, sorted by address. */
function reference(targets: string[]): MergedBlocklist {
  const out: MergedBlocklist = { v4: [], v6: [] };
  if (targets.length === 0) return out;
  const parsed = mergeCidr(targets).map((c) => parseTarget(c));
  parsed.sort((a, b) => a.family - b.family || (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
  for (const t of parsed) (t.family === 4 ? out.v4 : out.v6).push(t.text);
  return out;
}

/** Fails when two neighbours overlap, are out of order, or are sibling halves of one bigger CIDR. */
function assertMinimal(list: readonly string[]): void {
  for (let i = 1; i < list.length; i++) {
    const a = parseTarget(list[i - 1]!);
    const b = parseTarget(list[i]!);
    assert.ok(a.end < b.start, `${a.text} and ${b.text} overlap or are out of order`);
    const bits = a.family === 4 ? 32 : 128;
    const siblings =
      a.prefix === b.prefix &&
      a.prefix > 0 &&
      b.start === a.end + 1n &&
      a.start >> BigInt(bits - a.prefix + 1) === b.start >> BigInt(bits - b.prefix + 1);
    assert.ok(!siblings, `${a.text} and ${b.text} could be merged into one /${a.prefix - 1}`);
  }
}

describe('mergeTargets property (fast-check, cidr-tools mergeCidr as reference)', () => {
  test('covers exactly the input addresses with nothing left to merge', () => {
    const target = fc.oneof(
      { arbitrary: v4Host, weight: 3 },
      { arbitrary: v4Net, weight: 1 },
      { arbitrary: v4Cluster, weight: 6 },
      { arbitrary: v6Host, weight: 2 },
      { arbitrary: v6Net, weight: 1 },
      { arbitrary: v6Cluster, weight: 6 },
    );
    fc.assert(
      fc.property(fc.array(target, { maxLength: 60 }), (targets) => {
        const out = mergeTargets(targets);
        assert.deepEqual(out, reference(targets));
        assertMinimal(out.v4);
        assertMinimal(out.v6);
        for (const text of [...out.v4, ...out.v6]) assert.equal(normalizeTarget(text), text);
      }),
      { numRuns: 3000 },
    );
  });

  test('mergeRanges (columns in, columns out) gives the same list as mergeTargets', () => {
    const target = fc.oneof(v4Host, v4Net, v4Cluster, v6Host, v6Net, v6Cluster);
    fc.assert(
      fc.property(fc.array(target, { maxLength: 60 }), (targets) => {
        // Columns in input order, unmerged, as the aggregator's DecisionSet hands them to its worker.
        const v4: string[] = [];
        const v6: string[] = [];
        for (const t of targets) (scanTarget(t, new Uint32Array(4)) & TARGET_V6 ? v6 : v4).push(t);
        const out = mergeRanges(rangesOf({ v4, v6 }).v4, rangesOf({ v4, v6 }).v6);
        assert.deepEqual(
          { v4: textsOfFamily(out.v4, 4), v6: textsOfFamily(out.v6, 6) },
          mergeTargets(targets),
        );
      }),
      { numRuns: 2000 },
    );
  });

  test('non-canonical spellings merge like their canonical forms', () => {
    const spelled = fc
      .oneof(v6Host, v6Cluster)
      .chain((text) =>
        fc.constantFrom(text, text.toUpperCase(), fullV6(text), text.includes('/') ? text : `${text}/128`),
      );
    fc.assert(
      fc.property(fc.array(spelled, { maxLength: 30 }), (targets) => {
        assert.deepEqual(mergeTargets(targets), mergeTargets(targets.map(normalizeTarget)));
      }),
      { numRuns: 1000 },
    );
  });
});

/** Uncompressed 8-group spelling with leading zeros ("2001:0db8:0000:…"). */
function fullV6(text: string): string {
  const t = parseTarget(text);
  if (t.family === 4) return text;
  const groups = [];
  for (let i = 7; i >= 0; i--)
    groups.push(((t.start >> BigInt(16 * i)) & 0xffffn).toString(16).padStart(4, '0'));
  return t.isHost ? groups.join(':') : `${groups.join(':')}/${t.prefix}`;
}

// ---------------------------------------------------------------------------------------------------------------

describe('sliceRanges and partCount (max/part splitting)', () => {
  const list = merged(...Array.from({ length: 10 }, (_, i) => formatV4(i * 2)), '::1', '2001:db8::/32');
  const ranges = rangesOf(list);
  const texts = (r: MergedRanges) => [...textsOfFamily(r.v4, 4), ...textsOfFamily(r.v6, 6)];

  test('consecutive chunks of at most max entries, IPv4 before IPv6', () => {
    assert.equal(partCount(12, 5), 3);
    assert.deepEqual(texts(sliceRanges(ranges, 'all', 10, 15)), ['::1', '2001:db8::/32']);
    assert.deepEqual(texts(sliceRanges(ranges, 'all', 8, 11)), [list.v4[8], list.v4[9], '::1']);
    assert.deepEqual(texts(sliceRanges(ranges, 6, 0, 1)), ['::1']);
    assert.deepEqual(texts(sliceRanges(ranges, 4, 5, 100)), list.v4.slice(5));
  });
  test('an empty list is one empty part', () => {
    assert.equal(partCount(0, 5), 1);
    assert.deepEqual(texts(sliceRanges(rangesOf({ v4: [], v6: [] }), 'all', 0, 5)), []);
  });
  test('max must be a positive integer', () => {
    for (const max of [0, -1, 1.5, NaN, Infinity]) assert.throws(() => partCount(1, max), RangeError);
  });
  test('property: parts never exceed max and concatenate to the list, for every family', () => {
    fc.assert(
      fc.property(
        fc.array(fc.oneof(fc.ipV4(), fc.ipV6()), { maxLength: 120 }),
        fc.integer({ min: 1, max: 50 }),
        fc.constantFrom(4 as const, 6 as const, 'all' as const),
        (targets, max, family) => {
          const whole = mergeTargets(targets);
          const r = rangesOf(whole);
          const expected = [...(family === 6 ? [] : whole.v4), ...(family === 4 ? [] : whole.v6)];
          const parts = Array.from({ length: partCount(expected.length, max) }, (_, k) =>
            texts(sliceRanges(r, family, k * max, (k + 1) * max)),
          );
          assert.ok(parts.every((p) => p.length <= max));
          assert.ok(parts.slice(0, -1).every((p) => p.length === max));
          assert.deepEqual(parts.flat(), expected);
        },
      ),
    );
  });
});

/** A merged text list as columns (what the aggregator's worker holds). */
function rangesOf(list: MergedBlocklist): MergedRanges {
  const family = (texts: string[], per: 1 | 4): FamilyRanges => {
    const r = {
      size: texts.length,
      words: new Uint32Array(texts.length * per),
      prefixes: new Uint8Array(texts.length),
    };
    texts.forEach((t, i) => (r.prefixes[i] = scanTarget(t, r.words, i * per) & 0xff));
    return r;
  };
  return { v4: family(list.v4, 1), v6: family(list.v6, 4) };
}

function textsOfFamily(r: FamilyRanges, family: 4 | 6): string[] {
  return Array.from({ length: r.size }, (_, i) => rangeText(r, family, i));
}

// ---------------------------------------------------------------------------------------------------------------

const AT = new Date('2025-01-02T03:04:05.678Z');
const SAMPLE = merged('192.0.2.1', '10.0.0.0/8', '2001:db8::/32', '::1');
const opts = (format: RenderOptions['format'], family: RenderOptions['family'] = 'all'): RenderOptions => ({
  format,
  family,
  generatedAt: AT,
  seq: 42,
});

describe('renderBlocklist', () => {
  test('plain: # header, then one CIDR per line', () => {
    assert.equal(
      renderBlocklist(SAMPLE, opts('plain')),
      '# banbus blocklist\n# generated: 2025-01-02T03:04:05.678Z\n# seq: 42\n# count: 4\n# family: all\n' +
        '10.0.0.0/8\n192.0.2.1\n::1\n2001:db8::/32\n',
    );
    const v6only = renderBlocklist(SAMPLE, opts('plain', 6)).split('\n');
    assert.deepEqual(v6only.slice(3), ['# count: 2', '# family: ipv6', '::1', '2001:db8::/32', '']);
    const empty = renderBlocklist({ v4: [], v6: [] }, opts('plain', 4));
    assert.ok(empty.includes('# count: 0\n'));
    assert.ok(empty.split('\n').every((line) => line === '' || line.startsWith('#')));
  });

  test('json: generated_at, seq, count and the selected families', () => {
    assert.deepEqual(JSON.parse(renderBlocklist(SAMPLE, opts('json'))), {
      generated_at: '2025-01-02T03:04:05.678Z',
      seq: 42,
      count: 4,
      v4: ['10.0.0.0/8', '192.0.2.1'],
      v6: ['::1', '2001:db8::/32'],
    });
    assert.deepEqual(JSON.parse(renderBlocklist(SAMPLE, opts('json', 4))), {
      generated_at: '2025-01-02T03:04:05.678Z',
      seq: 42,
      count: 2,
      v4: ['10.0.0.0/8', '192.0.2.1'],
    });
  });

  test('nftables and ipset: text shape', () => {
    const nft = renderBlocklist(SAMPLE, { ...opts('nftables'), setName: 'edge' });
    assert.match(nft, /^table inet edge \{$/m);
    assert.match(nft, /^flush set inet edge blocklist4$/m);
    assert.match(nft, /^flush set inet edge blocklist6$/m);
    assert.match(nft, /elements = \{\n\t+10\.0\.0\.0\/8,\n\t+192\.0\.2\.1\n/);
    assert.ok(!renderBlocklist({ v4: [], v6: [] }, opts('nftables')).includes('elements'));

    const ipset = renderBlocklist(SAMPLE, opts('ipset', 4));
    assert.ok(
      ipset.includes(`create banbus4 hash:net family inet maxelem ${IPSET_MAXELEM} -exist\nflush banbus4\n`),
    );
    assert.ok(ipset.includes('add banbus4 10.0.0.0/8\nadd banbus4 192.0.2.1\n'));
    assert.ok(!ipset.includes('banbus6'));
  });

  test('rejects set names the tools would not take', () => {
    for (const setName of ['', '1x', 'a b', 'x;flush ruleset', 'a'.repeat(31)]) {
      assert.throws(() => renderBlocklist(SAMPLE, { ...opts('ipset'), setName }), RangeError, setName);
    }
  });
});

// The real tools, inside a network namespace of our own so the host's firewall is never touched.
describe('renderBlocklist output loads with the real tools (root, nft, ipset)', () => {
  const namespace = `bbt-${randomBytes(4).toString('hex')}`;
  let dir = '';
  const inNs = (command: string[], input?: string) => {
    const r = spawnSync('ip', ['netns', 'exec', namespace, ...command], { input, encoding: 'utf8' });
    if (r.status !== 0)
      throw new Error(`${command.join(' ')} failed (${r.status}): ${r.stderr}${r.error ?? ''}`);
    return r.stdout;
  };
  const big: MergedBlocklist = merged(
    ...Array.from({ length: 20_000 }, (_, i) => formatV4(0x0b000000 + i * 3)),
    ...Array.from({ length: 5_000 }, (_, i) => formatV6(0x20010db8n * 2n ** 96n + BigInt(i) * 5n)),
    '0.0.0.0/1',
  );

  before(() => {
    for (const tool of ['nft', 'ipset', 'ip']) {
      if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0) {
        throw new Error(`${tool} is not installed: apt-get install -y nftables ipset iproute2`);
      }
    }
    execFileSync('ip', ['netns', 'add', namespace]);
    dir = mkdtempSync(join(tmpdir(), 'banbus-blocklist-'));
  });
  after(() => {
    spawnSync('ip', ['netns', 'del', namespace]);
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('nft -c -f accepts every family selection, empty lists and a large list', () => {
    const lists: MergedBlocklist[] = [SAMPLE, { v4: [], v6: [] }, { v4: ['0.0.0.0/0'], v6: ['::/0'] }, big];
    for (const list of lists) {
      for (const family of [4, 6, 'all'] as const) {
        const file = join(dir, 'check.nft');
        writeFileSync(file, renderBlocklist(list, { ...opts('nftables', family), setName: 'bbcheck' }));
        inNs(['nft', '-c', '-f', file]);
      }
    }
  });

  test('nft -f loads it, and loading a newer list replaces the elements', () => {
    const file = join(dir, 'load.nft');
    writeFileSync(file, renderBlocklist(big, opts('nftables')));
    inNs(['nft', '-f', file]);
    const first = inNs(['nft', '-j', 'list', 'set', 'inet', 'banbus', 'blocklist4']);
    assert.equal(elementCount(first), big.v4.length);

    writeFileSync(file, renderBlocklist(SAMPLE, opts('nftables')));
    inNs(['nft', '-f', file]);
    const v4 = inNs(['nft', 'list', 'set', 'inet', 'banbus', 'blocklist4']);
    assert.match(v4, /elements = \{ 10\.0\.0\.0\/8, 192\.0\.2\.1 \}/);
    const v6 = inNs(['nft', 'list', 'set', 'inet', 'banbus', 'blocklist6']);
    assert.match(v6, /elements = \{ ::1,\s+2001:db8::\/32 \}/);

    writeFileSync(file, renderBlocklist({ v4: [], v6: [] }, opts('nftables')));
    inNs(['nft', '-f', file]);
    assert.doesNotMatch(inNs(['nft', 'list', 'set', 'inet', 'banbus', 'blocklist4']), /elements/);
  });

  test('ipset restore loads it; reloading replaces; /0 is written as two halves', () => {
    inNs(['ipset', 'restore'], renderBlocklist(big, opts('ipset')));
    assert.equal(ipsetCount(inNs(['ipset', 'list', '-t', 'banbus4'])), big.v4.length);
    assert.equal(ipsetCount(inNs(['ipset', 'list', '-t', 'banbus6'])), big.v6.length);

    inNs(['ipset', 'restore'], renderBlocklist(SAMPLE, opts('ipset')));
    const members = inNs(['ipset', 'list', 'banbus4']).split('Members:\n')[1]!.trim().split('\n').sort();
    assert.deepEqual(members, ['10.0.0.0/8', '192.0.2.1']);
    assert.equal(ipsetCount(inNs(['ipset', 'list', '-t', 'banbus6'])), 2);

    inNs(['ipset', 'restore'], renderBlocklist({ v4: ['0.0.0.0/0'], v6: ['::/0'] }, opts('ipset')));
    assert.equal(ipsetCount(inNs(['ipset', 'list', '-t', 'banbus4'])), 2);
    assert.equal(ipsetCount(inNs(['ipset', 'list', '-t', 'banbus6'])), 2);
  });
});

function elementCount(json: string): number {
  const doc = JSON.parse(json) as { nftables: Array<{ set?: { elem?: unknown[] } }> };
  return doc.nftables.find((x) => x.set)?.set?.elem?.length ?? 0;
}

function ipsetCount(listing: string): number {
  const match = /^Number of entries: (\d+)$/m.exec(listing);
  assert.ok(match, listing);
  return Number(match[1]);
}
