// The decision engine: turns reports into decisions. Pure — no I/O, no clock. The store loads the state of
// the targets a batch touches, runs the engine over the batch in order and writes back what changed.
//
// Semantics (see docs and design.md "Model"):
// - A decision lives while its target has at least one active ban (one per host and jail).
// - Bantimes count from `now` (the persister's clock when it applies the batch), not from the report's
//   `time`: host clocks can be skewed, and a report that sat in the queue while the database was away
//   must not arrive already expired. A repeat ban never shortens the ban it renews.
// - decision.expires_at = latest expiry of its active bans, null (permanent) if any of them is permanent.
// - A host's unban ends that host's ban for that jail (all its jails when the unban names none);
//   a manual unban ends every ban of the target and of every target inside it.
// - Allowlisted or too broad bans change nothing (the outcome says why).
import {
  Allowlist,
  contains,
  parseTarget,
  resolveBantime,
  tooBroad,
  widenTarget,
  type Origin,
  type Policy,
  type Report,
  type Target,
} from '@banbus/core';
import type {
  ActiveBan,
  ChangeDraft,
  DecisionRow,
  DecisionRules,
  DecisionState,
  DecisionWrites,
  OffenderRow,
} from '@banbus/db';

export const OUTCOMES = ['banned', 'extended', 'unbanned', 'noop', 'allowlisted', 'too-broad'] as const;
export type Outcome = (typeof OUTCOMES)[number];

export type { ActiveBan, DecisionRow, OffenderRow, ChangeDraft };
/** What the store loaded for the targets a batch touches (plus, for manual network unbans, the targets inside). */
export type EngineState = DecisionState;

export interface ReportOutcome {
  id: string;
  outcome: Outcome;
}

export interface EngineWrites extends Omit<DecisionWrites, 'outcomes'> {
  outcomes: ReportOutcome[];
}

/** The target a report acts on: its own, after optional IPv6 widening (ingest widens too; reports may bypass it). */
export function effectiveTarget(report: Pick<Report, 'target'>, policy: Policy): Target {
  return widenTarget(parseTarget(report.target), policy);
}

/** What the store must load for a batch: exact targets, and networks whose inner targets a manual unban ends. */
export function planLoad(
  reports: readonly Report[],
  policy: Policy,
): { targets: string[]; networks: string[] } {
  const targets = new Set<string>();
  const networks = new Set<string>();
  for (const report of reports) {
    const target = effectiveTarget(report, policy);
    targets.add(target.text);
    if (report.action === 'unban' && report.origin === 'manual' && !target.isHost) networks.add(target.text);
  }
  return { targets: [...targets], networks: [...networks] };
}

const banKey = (host: string, jail: string) => `${host}\u0000${jail}`;
const fullKey = (target: string, host: string, jail: string) => `${target}\u0000${host}\u0000${jail}`;
const time = (d: Date | null) => (d === null ? null : d.getTime());

function sameBan(a: ActiveBan, b: ActiveBan): boolean {
  return (
    a.origin === b.origin &&
    a.reportId === b.reportId &&
    a.bannedAt.getTime() === b.bannedAt.getTime() &&
    time(a.expiresAt) === time(b.expiresAt)
  );
}

function sameDecision(a: DecisionRow, b: DecisionRow): boolean {
  return (
    a.origin === b.origin &&
    a.firstSeen.getTime() === b.firstSeen.getTime() &&
    a.lastSeen.getTime() === b.lastSeen.getTime() &&
    time(a.expiresAt) === time(b.expiresAt) &&
    a.reporters === b.reporters &&
    a.banCount === b.banCount &&
    a.reason === b.reason
  );
}

/**
 * Applies reports (and sweeps, allowlist lifts) to an in-memory copy of the loaded state, then reports the
 * net difference. Changes are net per batch: a target banned and unbanned within one batch yields no change.
 */
export class DecisionEngine {
  private readonly bans = new Map<string, Map<string, ActiveBan>>();
  private readonly initialBans = new Map<string, ActiveBan>();
  private readonly decisions = new Map<string, DecisionRow>();
  private readonly initialDecisions = new Map<string, DecisionRow>();
  private readonly offenders = new Map<string, OffenderRow>();
  private readonly dirtyOffenders = new Set<string>();
  private readonly touchedBans = new Set<string>();
  /** Targets whose decision may have changed, in first-touch order (Set keeps insertion order). */
  private readonly touchedTargets = new Set<string>();
  private readonly outcomes: ReportOutcome[] = [];

  constructor(
    state: EngineState,
    private readonly policy: Policy,
    private readonly now: Date,
  ) {
    for (const ban of state.activeBans) {
      this.banMap(ban.target).set(banKey(ban.host, ban.jail), ban);
      this.initialBans.set(fullKey(ban.target, ban.host, ban.jail), ban);
    }
    for (const decision of state.decisions) {
      this.decisions.set(decision.target, decision);
      this.initialDecisions.set(decision.target, decision);
    }
    for (const offender of state.offenders) this.offenders.set(offender.target, offender);
    // Bans that ran out but were not swept yet must not count: a target whose only ban expired is
    // banned anew (with escalation), not "extended".
    this.expire(now);
  }

  private banMap(target: string): Map<string, ActiveBan> {
    let map = this.bans.get(target);
    if (!map) {
      map = new Map();
      this.bans.set(target, map);
    }
    return map;
  }

  private setBan(ban: ActiveBan): void {
    this.banMap(ban.target).set(banKey(ban.host, ban.jail), ban);
    this.touchedBans.add(fullKey(ban.target, ban.host, ban.jail));
    this.touchedTargets.add(ban.target);
  }

  private removeBan(ban: ActiveBan): void {
    this.bans.get(ban.target)?.delete(banKey(ban.host, ban.jail));
    this.touchedBans.add(fullKey(ban.target, ban.host, ban.jail));
    this.touchedTargets.add(ban.target);
  }

  /** Applies the reports in order; returns their outcomes (also kept for writes()). */
  applyReports(reports: readonly Report[], allowlist: Allowlist): Outcome[] {
    return reports.map((report) => this.applyReport(report, allowlist));
  }

  applyReport(report: Report, allowlist: Allowlist): Outcome {
    const target = effectiveTarget(report, this.policy);
    const outcome =
      report.action === 'ban' ? this.ban(report, target, allowlist) : this.unban(report, target);
    this.outcomes.push({ id: report.id, outcome });
    return outcome;
  }

  private ban(report: Report, target: Target, allowlist: Allowlist): Outcome {
    if (tooBroad(target, this.policy) !== null) return 'too-broad';
    if (allowlist.covering(target) !== null) return 'allowlisted';
    const t = target.text;
    const jail = report.jail ?? '';
    const wasBanned = this.decisions.has(t);
    const offender = this.offenders.get(t);
    // While banned, the running episode is already counted in ban_count.
    const previousBans = wasBanned ? Math.max(0, (offender?.banCount ?? 1) - 1) : (offender?.banCount ?? 0);
    const seconds = resolveBantime(report.bantime, previousBans, this.policy);
    let expiresAt = seconds === null ? null : new Date(this.now.getTime() + seconds * 1000);
    const existing = this.bans.get(t)?.get(banKey(report.host, jail));
    if (existing) {
      // A repeat ban (fail2ban re-runs actionban for restored bans) never shortens the ban it renews.
      if (existing.expiresAt === null) expiresAt = null;
      else if (expiresAt !== null && existing.expiresAt.getTime() > expiresAt.getTime())
        expiresAt = existing.expiresAt;
      if (time(existing.expiresAt) === time(expiresAt) && existing.origin === report.origin && wasBanned) {
        return 'noop';
      }
    }
    this.setBan({
      target: t,
      host: report.host,
      jail,
      origin: report.origin,
      reportId: report.id,
      bannedAt: this.now,
      expiresAt,
    });
    if (!wasBanned) {
      this.offenders.set(t, { target: t, banCount: (offender?.banCount ?? 0) + 1, lastBannedAt: this.now });
      this.dirtyOffenders.add(t);
    }
    this.recompute(t, { origin: report.origin, reason: report.reason ?? report.jail ?? null });
    return wasBanned ? 'extended' : 'banned';
  }

  private unban(report: Report, target: Target): Outcome {
    const removed: ActiveBan[] = [];
    const affected = new Set<string>();
    if (report.origin === 'manual') {
      const inner = target.isHost
        ? [target.text]
        : [...new Set([...this.bans.keys(), ...this.decisions.keys()])].filter(
            (t) => t === target.text || contains(target, parseTarget(t)),
          );
      for (const t of inner) {
        for (const ban of this.bans.get(t)?.values() ?? []) removed.push(ban);
        // A decision without active bans (should not exist) still ends with a manual unban.
        if (this.decisions.has(t)) affected.add(t);
      }
    } else {
      const jail = report.jail || null;
      for (const ban of this.bans.get(target.text)?.values() ?? []) {
        if (ban.host === report.host && (jail === null || ban.jail === jail)) removed.push(ban);
      }
    }
    for (const ban of removed) {
      this.removeBan(ban);
      affected.add(ban.target);
    }
    for (const t of affected) this.recompute(t);
    return affected.size > 0 ? 'unbanned' : 'noop';
  }

  /** Ends every ban whose expiry is at or before `at`. */
  expire(at: Date): void {
    const limit = at.getTime();
    const affected = new Set<string>();
    for (const [t, map] of this.bans) {
      for (const ban of map.values()) {
        if (ban.expiresAt !== null && ban.expiresAt.getTime() <= limit) {
          this.removeBan(ban);
          affected.add(t);
        }
      }
    }
    for (const t of affected) this.recompute(t);
  }

  /** Ends every ban and decision whose target overlaps the allowlist. */
  lift(allowlist: Allowlist): void {
    const targets = new Set([...this.bans.keys(), ...this.decisions.keys()]);
    for (const t of targets) {
      if (allowlist.covering(parseTarget(t)) === null) continue;
      for (const ban of [...(this.bans.get(t)?.values() ?? [])]) this.removeBan(ban);
      this.touchedTargets.add(t);
      this.recompute(t);
    }
  }

  /** Rebuilds the decision of `t` from its active bans; `ban` carries what the latest ban report says. */
  private recompute(t: string, ban?: { origin: Origin; reason: string | null }): void {
    this.touchedTargets.add(t);
    const bans = [...(this.bans.get(t)?.values() ?? [])];
    if (bans.length === 0) {
      this.decisions.delete(t);
      return;
    }
    let expiresAt: Date | null = bans[0]!.expiresAt;
    for (const b of bans) {
      if (b.expiresAt === null || expiresAt === null) expiresAt = null;
      else if (b.expiresAt.getTime() > expiresAt.getTime()) expiresAt = b.expiresAt;
    }
    const reporters = new Set(bans.map((b) => b.host)).size;
    const current = this.decisions.get(t);
    const banCount = this.offenders.get(t)?.banCount ?? current?.banCount ?? 1;
    if (current) {
      this.decisions.set(t, {
        ...current,
        expiresAt,
        reporters,
        banCount: Math.max(current.banCount, banCount),
        ...(ban ? { origin: ban.origin, reason: ban.reason, lastSeen: this.now } : {}),
      });
    } else {
      const latest = bans.reduce((a, b) => (b.bannedAt.getTime() >= a.bannedAt.getTime() ? b : a));
      this.decisions.set(t, {
        target: t,
        origin: ban?.origin ?? latest.origin,
        firstSeen: this.now,
        lastSeen: this.now,
        expiresAt,
        reporters,
        banCount,
        reason: ban?.reason ?? null,
      });
    }
  }

  /** The net writes and decision changes since construction. */
  writes(): EngineWrites {
    const activeBanUpserts: ActiveBan[] = [];
    const activeBanDeletes: EngineWrites['activeBanDeletes'] = [];
    for (const key of this.touchedBans) {
      const [target, host, jail] = key.split('\u0000') as [string, string, string];
      const final = this.bans.get(target)?.get(banKey(host, jail));
      const initial = this.initialBans.get(key);
      if (final && (!initial || !sameBan(initial, final))) activeBanUpserts.push(final);
      else if (!final && initial) activeBanDeletes.push({ target, host, jail });
    }
    const decisionUpserts: DecisionRow[] = [];
    const decisionDeletes: string[] = [];
    const changes: ChangeDraft[] = [];
    for (const t of this.touchedTargets) {
      const final = this.decisions.get(t);
      const initial = this.initialDecisions.get(t);
      if (final) {
        if (!initial || !sameDecision(initial, final)) decisionUpserts.push(final);
        if (
          !initial ||
          time(initial.expiresAt) !== time(final.expiresAt) ||
          initial.reason !== final.reason
        ) {
          changes.push({ op: 'add', target: t, expiresAt: final.expiresAt, reason: final.reason });
        }
      } else if (initial) {
        decisionDeletes.push(t);
        changes.push({ op: 'del', target: t, expiresAt: null, reason: null });
      }
    }
    const offenderUpserts = [...this.dirtyOffenders].map((t) => this.offenders.get(t)!);
    return {
      outcomes: [...this.outcomes],
      activeBanUpserts,
      activeBanDeletes,
      decisionUpserts,
      decisionDeletes,
      offenderUpserts,
      changes,
    };
  }
}

/** One-call form for a batch: the engine over `state`, the reports applied in order. */
export function decide(
  reports: readonly Report[],
  state: EngineState,
  allowlist: Allowlist,
  policy: Policy,
  now: Date,
): EngineWrites {
  const engine = new DecisionEngine(state, policy, now);
  engine.applyReports(reports, allowlist);
  return engine.writes();
}

/** The engine as the DecisionStore's rules, for one policy. */
export function engineRules(policy: Policy): DecisionRules {
  // The allowlist is short and changes rarely; parsing it per batch is cheap next to the SQL round trips.
  return {
    plan: (reports) => planLoad(reports, policy),
    decide: (reports, state, allowlist, now) => decide(reports, state, new Allowlist(allowlist), policy, now),
    expire: (state, now) => new DecisionEngine(state, policy, now).writes(),
    lift: (state, allowlist, now) => {
      const engine = new DecisionEngine(state, policy, now);
      engine.lift(new Allowlist(allowlist));
      return engine.writes();
    },
  };
}
