import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { overlapCidr } from 'cidr-tools';
import { parseTarget, TargetError } from '../src/address.js';
import { parseEnv, PolicyEnvSchema } from '../src/config.js';
import {
  Allowlist,
  MAX_BANTIME_SECONDS,
  policyFromEnv,
  resolveBantime,
  tooBroad,
  widenTarget,
  type Policy,
} from '../src/policy.js';

function policy(
  overrides: Partial<Omit<Policy, 'increment'>> & { increment?: Partial<Policy['increment']> } = {},
): Policy {
  return {
    defaultBantime: 600,
    minPrefixV4: 16,
    minPrefixV6: 32,
    ipv6Widen: 0,
    ...overrides,
    increment: { enabled: false, factor: 2, maxSeconds: 86_400, ...overrides.increment },
  };
}

describe('policyFromEnv', () => {
  test('defaults: permanent, no escalation, /16 and /32, no widening', () => {
    assert.deepEqual(policyFromEnv(parseEnv(PolicyEnvSchema, {})), {
      defaultBantime: -1,
      increment: { enabled: false, factor: 2, maxSeconds: 7 * 86_400 },
      minPrefixV4: 16,
      minPrefixV6: 32,
      ipv6Widen: 0,
    });
  });

  test('reads every variable', () => {
    const env = parseEnv(PolicyEnvSchema, {
      BANBUS_DEFAULT_BANTIME: '10m',
      BANBUS_BANTIME_INCREMENT: 'yes',
      BANBUS_BANTIME_FACTOR: '1.5',
      BANBUS_BANTIME_MAX: '2d',
      BANBUS_MIN_PREFIX_V4: '24',
      BANBUS_MIN_PREFIX_V6: '48',
      BANBUS_IPV6_WIDEN: '64',
    });
    assert.deepEqual(policyFromEnv(env), {
      defaultBantime: 600,
      increment: { enabled: true, factor: 1.5, maxSeconds: 172_800 },
      minPrefixV4: 24,
      minPrefixV6: 48,
      ipv6Widen: 64,
    });
  });
});

describe('resolveBantime', () => {
  const off = policy();
  const on = policy({ increment: { enabled: true } });
  const permanentDefault = policy({ defaultBantime: -1 });
  const permanentDefaultOn = policy({ defaultBantime: -1, increment: { enabled: true } });

  const cases: Array<
    [
      name: string,
      reported: number | null | undefined,
      previous: number,
      policy: Policy,
      expected: number | null,
    ]
  > = [
    ['reported bantime is used', 3600, 0, off, 3600],
    ['increment off ignores previous bans', 3600, 5, off, 3600],
    ['-1 → policy default', -1, 0, off, 600],
    ['null → policy default', null, 0, off, 600],
    ['undefined → policy default', undefined, 0, off, 600],
    ['0 stays 0', 0, 0, off, 0],
    ['default -1 → permanent', null, 0, permanentDefault, null],
    ['reported -1 with default -1 → permanent', -1, 3, permanentDefault, null],
    ['a reported bantime beats a permanent default', 60, 0, permanentDefault, 60],
    ['increment, first offence', 600, 0, on, 600],
    ['increment, second offence doubles', 600, 1, on, 1200],
    ['increment, fourth offence: 600 × 2³', 600, 3, on, 4800],
    ['increment, 600 × 2⁷ = 76800 stays under the cap', 600, 7, on, 76_800],
    ['increment, 600 × 2⁸ = 153600 is capped at 86400', 600, 8, on, 86_400],
    ['increment, huge count is capped (no Infinity)', 600, 100_000, on, 86_400],
    ['increment applies to the default too: 600 × 2²', null, 2, on, 2400],
    ['increment keeps permanent permanent', null, 4, permanentDefaultOn, null],
    ['increment, base above the cap is capped', 100_000, 0, on, 86_400],
    [
      'increment with factor 1.5: 100 × 2.25',
      100,
      2,
      policy({ increment: { enabled: true, factor: 1.5 } }),
      225,
    ],
    ['negative previous bans count as none', 600, -3, on, 600],
    ['absurd reported values are bounded', 2_147_483_647 * 2, 0, off, MAX_BANTIME_SECONDS],
  ];
  for (const [name, reported, previous, p, expected] of cases) {
    test(name, () => assert.equal(resolveBantime(reported, previous, p), expected));
  }

  test('escalation never shrinks and never exceeds the cap', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 86_400 }), fc.integer({ min: 0, max: 60 }), (base, n) => {
        const now = resolveBantime(base, n, on)!;
        const next = resolveBantime(base, n + 1, on)!;
        assert.ok(next >= now);
        assert.ok(next <= 86_400);
        assert.ok(Number.isInteger(next));
      }),
    );
  });
});

describe('tooBroad', () => {
  const p = policy();
  const cases: Array<[target: string, p: Policy, expected: string | null]> = [
    ['10.0.0.0/16', p, null],
    ['10.0.0.0/15', p, '10.0.0.0/15 is broader than the minimum prefix /16 for IPv4'],
    ['0.0.0.0/0', p, '0.0.0.0/0 is broader than the minimum prefix /16 for IPv4'],
    ['1.2.3.4', p, null],
    ['2001:db8::/32', p, null],
    ['2001:db8::/31', p, '2001:db8::/31 is broader than the minimum prefix /32 for IPv6'],
    ['::/0', p, '::/0 is broader than the minimum prefix /32 for IPv6'],
    ['2001:db8::1', p, null],
    // A mapped network is judged as the IPv4 network it is.
    ['::ffff:10.0.0.0/104', p, '10.0.0.0/8 is broader than the minimum prefix /16 for IPv4'],
    // The IPv4 limit does not leak into IPv6 and vice versa.
    ['2001::/20', policy({ minPrefixV4: 32, minPrefixV6: 20 }), null],
    ['10.0.0.0/8', policy({ minPrefixV4: 8, minPrefixV6: 128 }), null],
    [
      '10.0.0.0/7',
      policy({ minPrefixV4: 8, minPrefixV6: 0 }),
      '10.0.0.0/7 is broader than the minimum prefix /8 for IPv4',
    ],
    ['0.0.0.0/0', policy({ minPrefixV4: 0 }), null],
    ['::/0', policy({ minPrefixV6: 0 }), null],
    ['1.2.3.4', policy({ minPrefixV4: 32 }), null],
    ['1.2.3.4/31', policy({ minPrefixV4: 32 }), '1.2.3.4/31 is broader than the minimum prefix /32 for IPv4'],
    ['::1', policy({ minPrefixV6: 128 }), null],
  ];
  for (const [target, pol, expected] of cases) {
    test(`${target} with /${pol.minPrefixV4} and /${pol.minPrefixV6}`, () => {
      assert.equal(tooBroad(parseTarget(target), pol), expected);
    });
  }
});

describe('widenTarget', () => {
  test('a single IPv6 address becomes its /64', () => {
    const wide = widenTarget(parseTarget('2001:db8:1:2:3:4:5:6'), policy({ ipv6Widen: 64 }));
    assert.deepEqual(wide, {
      text: '2001:db8:1:2::/64',
      family: 6,
      prefix: 64,
      isHost: false,
      start: 0x20010db8000100020000000000000000n,
      end: 0x20010db800010002ffffffffffffffffn,
    });
  });

  test('other prefixes', () => {
    assert.equal(
      widenTarget(parseTarget('2001:db8:1:2::1'), policy({ ipv6Widen: 48 })).text,
      '2001:db8:1::/48',
    );
    assert.equal(widenTarget(parseTarget('2001:db8::1'), policy({ ipv6Widen: 127 })).text, '2001:db8::/127');
    assert.equal(widenTarget(parseTarget('2001:db8::1'), policy({ ipv6Widen: 1 })).text, '::/1');
  });

  const unchanged: Array<[string, number]> = [
    ['2001:db8::1', 0], // off
    ['2001:db8::1', 128], // already a /128
    ['192.0.2.1', 64], // IPv4 is never widened
    ['::ffff:192.0.2.1', 64], // mapped = IPv4
    ['2001:db8::/48', 64], // networks are left alone
    ['2001:db8::/32', 64],
  ];
  for (const [target, widen] of unchanged) {
    test(`${target} with ipv6Widen ${widen} is unchanged`, () => {
      const t = parseTarget(target);
      assert.equal(widenTarget(t, policy({ ipv6Widen: widen })), t);
    });
  }
});

describe('Allowlist', () => {
  const allowlist = new Allowlist([
    '10.0.0.0/8',
    '192.168.1.0/24',
    '192.168.1.128/25', // nested in the /24
    '2001:db8::/32',
    '::ffff:172.16.0.0/108', // mapped: 172.16.0.0/12
    '203.0.113.7',
    '198.51.100.9/32', // as PostgreSQL renders it
    '10.0.0.0/8', // duplicate
  ]);

  const cases: Array<[target: string, expected: string | null | string[]]> = [
    ['10.1.2.3', '10.0.0.0/8'], // contained in an entry
    ['10.0.0.0/8', '10.0.0.0/8'], // equal
    ['10.255.255.255', '10.0.0.0/8'], // last address
    ['10.0.0.0/16', '10.0.0.0/8'],
    ['8.0.0.0/6', '10.0.0.0/8'], // contains an entry
    ['9.255.255.255', null], // just below
    ['11.0.0.0', null], // just above
    ['192.168.1.200', ['192.168.1.0/24', '192.168.1.128/25']],
    ['192.168.1.5', '192.168.1.0/24'],
    ['192.168.0.0/16', '192.168.1.0/24'],
    ['192.168.2.1', null],
    ['192.168.0.255', null],
    ['203.0.113.7', '203.0.113.7'],
    ['203.0.113.0/24', '203.0.113.7'],
    ['203.0.113.8', null],
    ['198.51.100.9', '198.51.100.9'],
    ['172.16.5.5', '172.16.0.0/12'],
    ['::ffff:172.31.255.255', '172.16.0.0/12'], // mapped target
    ['172.32.0.0', null],
    ['2001:db8:5::1', '2001:db8::/32'],
    ['2001::/16', '2001:db8::/32'],
    ['2001:db9::1', null],
    ['2001:db7:ffff:ffff:ffff:ffff:ffff:ffff', null],
    ['::a00:1', null], // IPv6 whose low bits spell 10.0.0.1: other family
    ['::/0', '2001:db8::/32'], // only the IPv6 entry
    ['0.0.0.0', null],
    ['255.255.255.255', null],
    ['ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', null],
  ];
  for (const [target, expected] of cases) {
    test(`covering(${target})`, () => {
      const got = allowlist.covering(parseTarget(target));
      if (Array.isArray(expected)) assert.ok(got !== null && expected.includes(got), `got ${got}`);
      else assert.equal(got, expected);
    });
  }

  test('a covering of 0.0.0.0/0 is one of the IPv4 entries', () => {
    const got = allowlist.covering(parseTarget('0.0.0.0/0'));
    assert.ok(
      got &&
        [
          '10.0.0.0/8',
          '192.168.1.0/24',
          '192.168.1.128/25',
          '172.16.0.0/12',
          '203.0.113.7',
          '198.51.100.9',
        ].includes(got),
    );
  });

  test('size counts distinct entries after normalization', () => {
    assert.equal(allowlist.size, 7);
    assert.equal(new Allowlist(['10.0.0.0/8', '::ffff:10.0.0.0/104']).size, 1);
  });

  test('an empty allowlist covers nothing', () => {
    const empty = new Allowlist([]);
    assert.equal(empty.size, 0);
    assert.equal(empty.covering(parseTarget('0.0.0.0/0')), null);
    assert.equal(empty.covering(parseTarget('::/0')), null);
  });

  test('an invalid entry is refused with its reason', () => {
    assert.throws(
      () => new Allowlist(['10.0.0.0/8', '10.0.0.1/8']),
      (err: unknown) => {
        assert.ok(err instanceof TargetError);
        assert.match(err.message, /^allowlist entry 10\.0\.0\.1\/8: host bits set/);
        return true;
      },
    );
  });

  test('agrees with a linear scan through cidr-tools', () => {
    // Small address space (10.0.0.0/16, 2001:db8::/112) so that entries nest and targets hit them often.
    const v4 = fc
      .tuple(fc.integer({ min: 0, max: 0xffff }), fc.integer({ min: 16, max: 32 }))
      .map(([low, p]) => {
        const size = 2 ** (32 - p);
        const n = 0x0a000000 + low - (low % size);
        return `${[24, 16, 8, 0].map((s) => Math.floor(n / 2 ** s) % 256).join('.')}/${p}`;
      });
    const v6 = fc
      .tuple(fc.integer({ min: 0, max: 0xffff }), fc.integer({ min: 112, max: 128 }))
      .map(([low, p]) => {
        const size = 2 ** (128 - p);
        return `2001:db8::${(low - (low % size)).toString(16)}/${p}`;
      });
    const network = fc.oneof(v4, v6);
    let hits = 0;
    fc.assert(
      fc.property(
        fc.array(network, { maxLength: 30 }),
        fc.array(network, { minLength: 1, maxLength: 20 }),
        (entries, targets) => {
          const list = new Allowlist(entries);
          for (const target of targets) {
            const got = list.covering(parseTarget(target));
            const expected = entries.some((entry) => overlapCidr(entry, target));
            assert.equal(got !== null, expected, `${target} against [${entries.join(', ')}]`);
            if (got !== null) {
              hits++;
              assert.ok(overlapCidr(got, target), `${got} does not overlap ${target}`);
              assert.ok(
                entries.some((e) => parseTarget(e).text === got),
                `${got} is not an entry`,
              );
            }
          }
        },
      ),
      { numRuns: 500 },
    );
    assert.ok(hits > 100, `the generator should produce covered targets, got ${hits}`);
  });
});
