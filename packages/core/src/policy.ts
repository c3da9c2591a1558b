// Decision policy: how long a ban lasts, how broad it may be, what is never banned. Pure functions so that
// ingest (early checks) and persister (the decision) apply exactly the same rules.
import { compareTargets, networkOf, parseTarget, TargetError } from './address.js';
import type { Family, Target } from './address.js';
import type { PolicyEnv } from './config.js';

export interface Policy {
  /** Seconds used when a report has no bantime; -1 = permanent. */
  defaultBantime: number;
  increment: { enabled: boolean; factor: number; maxSeconds: number };
  minPrefixV4: number;
  minPrefixV6: number;
  /** Widen single IPv6 addresses to this prefix; 0 = off. */
  ipv6Widen: number;
}

/**
 * Upper bound of any finite bantime (100 years). Keeps escalation (factor^n) and absurd reported values
 * inside what JavaScript dates and PostgreSQL timestamps can hold.
 */
export const MAX_BANTIME_SECONDS = 100 * 365 * 86_400;

export function policyFromEnv(env: PolicyEnv): Policy {
  return {
    defaultBantime: env.BANBUS_DEFAULT_BANTIME,
    increment: {
      enabled: env.BANBUS_BANTIME_INCREMENT,
      factor: env.BANBUS_BANTIME_FACTOR,
      maxSeconds: env.BANBUS_BANTIME_MAX,
    },
    minPrefixV4: env.BANBUS_MIN_PREFIX_V4,
    minPrefixV6: env.BANBUS_MIN_PREFIX_V6,
    ipv6Widen: env.BANBUS_IPV6_WIDEN,
  };
}

/**
 * The ban duration in seconds, or null for permanent. `reported` is the report's bantime
 * (-1 or absent → policy default). `previousBans` is how often the target was banned before
 * (0 for a first offence); with increment on, duration = reported × factor^previousBans, capped.
 */
export function resolveBantime(
  reported: number | null | undefined,
  previousBans: number,
  policy: Policy,
): number | null {
  // fail2ban's -1 means "permanent on this host"; fleet-wide permanence is the policy's call, not one host's.
  const base =
    reported === null || reported === undefined || !Number.isFinite(reported) || reported < 0
      ? policy.defaultBantime
      : reported;
  if (!Number.isFinite(base) || base < 0) return null;

  let seconds = base;
  const { enabled, factor, maxSeconds } = policy.increment;
  if (enabled) {
    const n = Number.isFinite(previousBans) && previousBans > 0 ? Math.floor(previousBans) : 0;
    seconds = base * factor ** n; // may reach Infinity for huge n; the caps below bring it back
    if (maxSeconds >= 0) seconds = Math.min(seconds, maxSeconds);
  }
  return Math.round(Math.min(seconds, MAX_BANTIME_SECONDS));
}

/** The minimum prefix the policy allows for a family. */
export function minPrefix(family: Family, policy: Policy): number {
  return family === 4 ? policy.minPrefixV4 : policy.minPrefixV6;
}

/** A sentence saying why the target is broader than policy allows, or null when it is fine. */
export function tooBroad(target: Target, policy: Policy): string | null {
  const min = minPrefix(target.family, policy);
  if (target.prefix >= min) return null;
  return `${target.text} is broader than the minimum prefix /${min} for IPv${target.family}`;
}

/** The target to ban after optional IPv6 widening (a single v6 address → its /ipv6Widen network). */
export function widenTarget(target: Target, policy: Policy): Target {
  const widen = policy.ipv6Widen;
  if (target.family !== 6 || !target.isHost || !(widen > 0 && widen < 128)) return target;
  return networkOf(target, widen);
}

interface Interval {
  start: bigint;
  end: bigint;
  text: string;
}

/**
 * The networks that are never banned; answers which entry a target overlaps.
 *
 * CIDR blocks are either nested or disjoint, so after dropping entries that lie inside another one the rest
 * are disjoint intervals sorted by start; a target overlaps an entry exactly when the last interval starting
 * at or before the target's end reaches the target's start. One binary search per family and call.
 */
export class Allowlist {
  readonly #byFamily: Record<Family, Interval[]> = { 4: [], 6: [] };
  readonly #size: number;

  /** Throws TargetError naming the first entry that is not a valid network. */
  constructor(networks: readonly string[]) {
    const targets: Target[] = [];
    const seen = new Set<string>();
    for (const network of networks) {
      let target: Target;
      try {
        target = parseTarget(network);
      } catch (err) {
        throw new TargetError(`allowlist entry ${(err as Error).message}`);
      }
      if (seen.has(target.text)) continue;
      seen.add(target.text);
      targets.push(target);
    }
    this.#size = targets.length;
    // By start, and for equal starts the widest first, so a nested entry always follows its container.
    targets.sort(compareTargets);
    for (const target of targets) {
      const list = this.#byFamily[target.family];
      const last = list[list.length - 1];
      if (last && target.end <= last.end) continue; // inside an entry already kept
      list.push({ start: target.start, end: target.end, text: target.text });
    }
  }

  /** The allowlist network (canonical text) that overlaps target, or null. */
  covering(target: Target): string | null {
    const list = this.#byFamily[target.family];
    // Last interval with start <= target.end.
    let lo = 0;
    let hi = list.length - 1;
    let found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      if (list[mid]!.start <= target.end) {
        found = mid;
        lo = mid + 1;
      } else {
        hi = mid - 1;
      }
    }
    if (found < 0) return null;
    const entry = list[found]!;
    return entry.end >= target.start ? entry.text : null;
  }

  /** Number of distinct entries (after normalization). */
  get size(): number {
    return this.#size;
  }
}
