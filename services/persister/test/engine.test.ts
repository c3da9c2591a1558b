import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { Allowlist, type Policy, type Report } from '@banbus/core';
import { DecisionEngine, decide, planLoad, type EngineState, type EngineWrites } from '../src/engine.js';

const policy: Policy = {
  defaultBantime: -1,
  increment: { enabled: false, factor: 2, maxSeconds: 7 * 86400 },
  minPrefixV4: 16,
  minPrefixV6: 32,
  ipv6Widen: 0,
};
const T0 = new Date('2026-01-01T00:00:00.000Z');
const at = (seconds: number) => new Date(T0.getTime() + seconds * 1000);
const empty: EngineState = { activeBans: [], decisions: [], offenders: [] };
const none = new Allowlist([]);

function report(partial: Partial<Report> & Pick<Report, 'target'>): Report {
  return {
    id: randomUUID(),
    action: 'ban',
    host: 'web1',
    origin: 'fail2ban',
    jail: 'sshd',
    bantime: 600,
    time: T0.toISOString(),
    ...partial,
  };
}

/** Carries the engine's writes over into the next state, as the store would. */
function persist(state: EngineState, w: EngineWrites): EngineState {
  const key = (b: { target: string; host: string; jail: string }) => `${b.target}|${b.host}|${b.jail}`;
  const bans = new Map(state.activeBans.map((b) => [key(b), b]));
  for (const d of w.activeBanDeletes) bans.delete(key(d));
  for (const b of w.activeBanUpserts) bans.set(key(b), b);
  const decisions = new Map(state.decisions.map((d) => [d.target, d]));
  for (const t of w.decisionDeletes) decisions.delete(t);
  for (const d of w.decisionUpserts) decisions.set(d.target, d);
  const offenders = new Map(state.offenders.map((o) => [o.target, o]));
  for (const o of w.offenderUpserts) offenders.set(o.target, o);
  return {
    activeBans: [...bans.values()],
    decisions: [...decisions.values()],
    offenders: [...offenders.values()],
  };
}

/** Runs batches (each with its own `now`) and returns the state and the writes of the last one. */
function run(
  batches: { now: Date; reports: Report[]; allowlist?: Allowlist; pol?: Policy }[],
  start: EngineState = empty,
) {
  let state = start;
  let last!: EngineWrites;
  for (const b of batches) {
    last = decide(b.reports, state, b.allowlist ?? none, b.pol ?? policy, b.now);
    state = persist(state, last);
  }
  return { state, last };
}

const changeOps = (w: EngineWrites) => w.changes.map((c) => `${c.op} ${c.target}`);

describe('decision engine', () => {
  test('a first ban creates the decision, its active ban and the offender', () => {
    const r = report({ target: '192.0.2.1' });
    const { state, last } = run([{ now: T0, reports: [r] }]);
    assert.deepEqual(last.outcomes, [{ id: r.id, outcome: 'banned' }]);
    assert.deepEqual(last.changes, [{ op: 'add', target: '192.0.2.1', expiresAt: at(600), reason: 'sshd' }]);
    assert.equal(state.decisions.length, 1);
    const d = state.decisions[0]!;
    assert.equal(d.reporters, 1);
    assert.equal(d.banCount, 1);
    assert.deepEqual(d.expiresAt, at(600));
    assert.deepEqual(d.firstSeen, T0);
    assert.deepEqual(state.offenders, [{ target: '192.0.2.1', banCount: 1, lastBannedAt: T0 }]);
    assert.equal(state.activeBans[0]!.reportId, r.id);
  });

  const scenarios: {
    name: string;
    batches: { now: Date; reports: Partial<Report>[]; allowlist?: string[]; pol?: Partial<Policy> }[];
    outcomes: string[]; // of the last batch
    changes: string[]; // of the last batch
    decisions: string[]; // targets after the last batch
    check?: (s: EngineState, w: EngineWrites) => void;
  }[] = [
    {
      name: 'two hosts ban, one unbans: still banned, no change',
      batches: [
        { now: T0, reports: [{ host: 'a' }, { host: 'b' }] },
        { now: at(1), reports: [{ host: 'a', action: 'unban' }] },
      ],
      outcomes: ['unbanned'],
      changes: [],
      decisions: ['192.0.2.1'],
      check: (s) => assert.equal(s.decisions[0]!.reporters, 1),
    },
    {
      name: 'second host extends the expiry',
      batches: [
        { now: T0, reports: [{ host: 'a' }] },
        { now: at(100), reports: [{ host: 'b' }] },
      ],
      outcomes: ['extended'],
      changes: ['add 192.0.2.1'],
      decisions: ['192.0.2.1'],
      check: (s, w) => {
        assert.deepEqual(w.changes[0]!.expiresAt, at(700));
        assert.equal(s.decisions[0]!.reporters, 2);
        assert.equal(s.decisions[0]!.banCount, 1);
      },
    },
    {
      name: 'manual unban ends every host ban: del',
      batches: [
        { now: T0, reports: [{ host: 'a' }, { host: 'b', jail: 'postfix' }] },
        { now: at(1), reports: [{ host: 'admin', origin: 'manual', action: 'unban', jail: null }] },
      ],
      outcomes: ['unbanned'],
      changes: ['del 192.0.2.1'],
      decisions: [],
      check: (s) => assert.equal(s.activeBans.length, 0),
    },
    {
      name: 'manual unban of a network ends the targets inside it, not the ones outside',
      batches: [
        { now: T0, reports: [{ target: '10.1.2.3' }, { target: '10.1.0.0/24' }, { target: '10.2.0.1' }] },
        {
          now: at(1),
          reports: [{ target: '10.1.0.0/16', origin: 'manual', host: 'admin', action: 'unban' }],
        },
      ],
      outcomes: ['unbanned'],
      changes: ['del 10.1.2.3', 'del 10.1.0.0/24'],
      decisions: ['10.2.0.1'],
    },
    {
      name: "a host's unban without jail ends all its jails, and only its own",
      batches: [
        { now: T0, reports: [{ jail: 'sshd' }, { jail: 'postfix' }, { host: 'other', bantime: 60 }] },
        { now: at(1), reports: [{ action: 'unban', jail: null }] },
      ],
      outcomes: ['unbanned'],
      changes: ['add 192.0.2.1'],
      decisions: ['192.0.2.1'],
      check: (s, w) => {
        assert.deepEqual(w.changes[0]!.expiresAt, at(60));
        assert.deepEqual(
          s.activeBans.map((b) => b.host),
          ['other'],
        );
      },
    },
    {
      name: 'unban of another jail is a noop',
      batches: [
        { now: T0, reports: [{ jail: 'sshd' }] },
        { now: at(1), reports: [{ action: 'unban', jail: 'postfix' }] },
      ],
      outcomes: ['noop'],
      changes: [],
      decisions: ['192.0.2.1'],
    },
    {
      name: 'repeat ban with a longer bantime: add with the new expiry',
      batches: [
        { now: T0, reports: [{}] },
        { now: at(10), reports: [{ bantime: 3600 }] },
      ],
      outcomes: ['extended'],
      changes: ['add 192.0.2.1'],
      decisions: ['192.0.2.1'],
      check: (s, w) => {
        assert.deepEqual(w.changes[0]!.expiresAt, at(3610));
        assert.equal(s.offenders[0]!.banCount, 1);
      },
    },
    {
      name: 'repeat ban with a shorter bantime never shortens the ban',
      batches: [
        { now: T0, reports: [{ bantime: 3600 }] },
        { now: at(10), reports: [{ bantime: 60 }] },
      ],
      outcomes: ['noop'],
      changes: [],
      decisions: ['192.0.2.1'],
    },
    {
      name: 'the same ban again with the same expiry: no change',
      batches: [
        { now: T0, reports: [{}] },
        { now: T0, reports: [{}] },
      ],
      outcomes: ['noop'],
      changes: [],
      decisions: ['192.0.2.1'],
      check: (_s, w) => {
        assert.equal(w.activeBanUpserts.length, 0);
        assert.equal(w.decisionUpserts.length, 0);
      },
    },
    {
      name: 'escalation with increment on: second offence doubles the bantime',
      batches: [
        { now: T0, reports: [{}], pol: { increment: { enabled: true, factor: 2, maxSeconds: 86400 } } },
        { now: at(600), reports: [], pol: { increment: { enabled: true, factor: 2, maxSeconds: 86400 } } },
        { now: at(1000), reports: [{}], pol: { increment: { enabled: true, factor: 2, maxSeconds: 86400 } } },
      ],
      outcomes: ['banned'],
      changes: ['add 192.0.2.1'],
      decisions: ['192.0.2.1'],
      check: (s, w) => {
        assert.deepEqual(w.changes[0]!.expiresAt, at(1000 + 1200));
        assert.equal(s.decisions[0]!.banCount, 2);
        assert.equal(s.offenders[0]!.banCount, 2);
      },
    },
    {
      name: 'ban and unban in one batch: net nothing',
      batches: [{ now: T0, reports: [{}, { action: 'unban' }] }],
      outcomes: ['banned', 'unbanned'],
      changes: [],
      decisions: [],
      check: (s, w) => {
        assert.equal(w.activeBanUpserts.length + w.activeBanDeletes.length, 0);
        assert.equal(s.offenders[0]!.banCount, 1);
      },
    },
    {
      name: 'unban then ban in one batch of a banned target: add with the new expiry',
      batches: [
        { now: T0, reports: [{}] },
        { now: at(5), reports: [{ action: 'unban' }, {}] },
      ],
      outcomes: ['unbanned', 'banned'],
      changes: ['add 192.0.2.1'],
      decisions: ['192.0.2.1'],
      check: (s) => assert.equal(s.decisions[0]!.banCount, 2),
    },
    {
      name: 'permanent and timed bans: permanent wins, timed one leaving changes nothing',
      batches: [
        {
          now: T0,
          reports: [
            { host: 'a', bantime: -1 },
            { host: 'b', bantime: 60 },
          ],
        },
        { now: at(1), reports: [{ host: 'b', action: 'unban' }] },
      ],
      outcomes: ['unbanned'],
      changes: [],
      decisions: ['192.0.2.1'],
      check: (s) => assert.equal(s.decisions[0]!.expiresAt, null),
    },
    {
      name: 'permanent leaves, timed remains: add with the timed expiry',
      batches: [
        {
          now: T0,
          reports: [
            { host: 'a', bantime: -1 },
            { host: 'b', bantime: 60 },
          ],
        },
        { now: at(1), reports: [{ host: 'a', action: 'unban' }] },
      ],
      outcomes: ['unbanned'],
      changes: ['add 192.0.2.1'],
      decisions: ['192.0.2.1'],
      check: (_s, w) => assert.deepEqual(w.changes[0]!.expiresAt, at(60)),
    },
    {
      name: 'absent bantime uses the policy default (permanent)',
      batches: [{ now: T0, reports: [{ bantime: null }] }],
      outcomes: ['banned'],
      changes: ['add 192.0.2.1'],
      decisions: ['192.0.2.1'],
      check: (s) => assert.equal(s.decisions[0]!.expiresAt, null),
    },
    {
      name: 'allowlisted and too broad bans change nothing',
      batches: [
        {
          now: T0,
          reports: [{ target: '198.51.100.7' }, { target: '10.0.0.0/8' }, { target: '198.51.0.0/16' }],
          allowlist: ['198.51.100.0/24'],
        },
      ],
      outcomes: ['allowlisted', 'too-broad', 'allowlisted'],
      changes: [],
      decisions: [],
      check: (s) => assert.equal(s.offenders.length, 0),
    },
    {
      name: 'expired but unswept ban: a new ban is a new offence',
      batches: [
        { now: T0, reports: [{ bantime: 60 }] },
        { now: at(120), reports: [{ host: 'other', bantime: 60 }] },
      ],
      outcomes: ['banned'],
      changes: ['add 192.0.2.1'],
      decisions: ['192.0.2.1'],
      check: (s) => {
        assert.equal(s.decisions[0]!.reporters, 1);
        assert.equal(s.decisions[0]!.banCount, 2);
        assert.equal(s.activeBans.length, 1);
      },
    },
    {
      name: 'unban of something never banned is a noop',
      batches: [{ now: T0, reports: [{ action: 'unban' }, { action: 'unban', origin: 'manual' }] }],
      outcomes: ['noop', 'noop'],
      changes: [],
      decisions: [],
    },
    {
      name: 'IPv6 widening: bans and unbans act on the widened network',
      batches: [
        { now: T0, reports: [{ target: '2001:db8::1' }], pol: { ipv6Widen: 64 } },
        { now: at(1), reports: [{ target: '2001:db8::2', host: 'b' }], pol: { ipv6Widen: 64 } },
      ],
      outcomes: ['extended'],
      changes: ['add 2001:db8::/64'],
      decisions: ['2001:db8::/64'],
    },
  ];

  for (const s of scenarios) {
    test(s.name, () => {
      const { state, last } = run(
        s.batches.map((b) => ({
          now: b.now,
          reports: b.reports.map((r) => report({ target: '192.0.2.1', ...r })),
          allowlist: new Allowlist(b.allowlist ?? []),
          pol: { ...policy, ...b.pol },
        })),
      );
      assert.deepEqual(
        last.outcomes.map((o) => o.outcome),
        s.outcomes,
      );
      assert.deepEqual(changeOps(last), s.changes);
      assert.deepEqual(state.decisions.map((d) => d.target).sort(), [...s.decisions].sort());
      s.check?.(state, last);
    });
  }

  test('expire() ends runs-out bans and recomputes', () => {
    const { state } = run([
      {
        now: T0,
        reports: [
          report({ target: '192.0.2.1', bantime: 60 }),
          report({ target: '192.0.2.2', bantime: 600 }),
        ],
      },
    ]);
    const engine = new DecisionEngine(state, policy, at(61));
    const w = engine.writes();
    assert.deepEqual(changeOps(w), ['del 192.0.2.1']);
    assert.equal(w.activeBanDeletes.length, 1);
  });

  test('lift() removes every decision overlapping the allowlist', () => {
    const { state } = run([
      {
        now: T0,
        reports: ['203.0.113.5', '203.0.113.0/28', '192.0.2.9'].map((target) => report({ target })),
      },
    ]);
    const engine = new DecisionEngine(state, policy, T0);
    engine.lift(new Allowlist(['203.0.113.0/24']));
    const w = engine.writes();
    assert.deepEqual(changeOps(w).sort(), ['del 203.0.113.0/28', 'del 203.0.113.5']);
    assert.equal(w.activeBanDeletes.length, 2);
  });

  test('planLoad names exact targets and the networks of manual unbans', () => {
    const plan = planLoad(
      [
        report({ target: '192.0.2.1' }),
        report({ target: '10.1.0.0/16', action: 'unban', origin: 'manual' }),
        report({ target: '10.2.0.0/16', action: 'unban' }),
        report({ target: '192.0.2.1', action: 'unban', origin: 'manual' }),
      ],
      policy,
    );
    assert.deepEqual(plan.targets, ['192.0.2.1', '10.1.0.0/16', '10.2.0.0/16']);
    assert.deepEqual(plan.networks, ['10.1.0.0/16']);
  });

  test('changes keep first-touch order across many targets', () => {
    const targets = Array.from({ length: 50 }, (_, i) => `198.18.0.${i + 1}`);
    const w = decide(
      targets.map((target) => report({ target })),
      empty,
      none,
      policy,
      T0,
    );
    assert.deepEqual(
      w.changes.map((c) => c.target),
      targets,
    );
  });
});
