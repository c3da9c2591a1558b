// nftables interval sets refuse an element that overlaps another one, so a host cannot hold both a
// network and an address inside it there. Such a backend holds the maximal entries only: those not
// inside another decision. Coverage keeps that view current as decisions come and go. Pure.
import { compareTargets, contains, parseTarget, type Target } from '@banbus/core';
import type { KernelOps } from './changes.js';
import type { TargetCollection } from './target-set.js';

/** The entries of `targets` that no other entry contains, in address order. */
export function maximalTargets(targets: Iterable<Target>): Target[] {
  const sorted = [...targets].sort(compareTargets);
  const out: Target[] = [];
  let cover: Target | undefined;
  for (const t of sorted) {
    // CIDRs nest or are disjoint: after sorting, t is inside the last kept entry or after it.
    if (cover && cover.family === t.family && t.end <= cover.end) continue;
    out.push(t);
    cover = t;
  }
  return out;
}

export class Coverage {
  /** Decisions that are networks, by text: the only entries that can cover another one. */
  private readonly networks = new Map<string, Target>();
  /** What the kernel holds: the maximal decisions. */
  readonly kernel = new Set<string>();

  /** Starts over from a whole decision set; returns the kernel view. */
  reset(desired: Iterable<Target>): Set<string> {
    this.networks.clear();
    this.kernel.clear();
    const all = [...desired];
    for (const t of all) if (!t.isHost) this.networks.set(t.text, t);
    for (const t of maximalTargets(all)) this.kernel.add(t.text);
    return this.kernel;
  }

  private coveredByOther(t: Target): boolean {
    for (const n of this.networks.values()) {
      if (n.text !== t.text && n.prefix < t.prefix && contains(n, t)) return true;
    }
    return false;
  }

  /** `t` joined the decisions. */
  add(t: Target, ops: KernelOps): void {
    if (!t.isHost) this.networks.set(t.text, t);
    if (this.kernel.has(t.text) || this.coveredByOther(t)) return;
    if (!t.isHost) {
      for (const k of this.kernel) {
        const inner = parseTarget(k);
        if (contains(t, inner)) {
          this.kernel.delete(k);
          ops.push(k, 'del');
        }
      }
    }
    this.kernel.add(t.text);
    ops.push(t.text, 'add');
  }

  /** `t` left the decisions (`desired` no longer holds it). */
  del(t: Target, desired: TargetCollection, ops: KernelOps): void {
    this.networks.delete(t.text);
    if (!this.kernel.delete(t.text)) return; // it was covered: so is everything inside it
    ops.push(t.text, 'del');
    if (t.isHost) return;
    // What t covered and nothing else covers is held on its own again, the widest first.
    const uncovered: Target[] = [];
    for (const d of desired) {
      const inner = parseTarget(d);
      if (contains(t, inner) && !this.coveredByOther(inner)) uncovered.push(inner);
    }
    for (const inner of maximalTargets(uncovered)) {
      this.kernel.add(inner.text);
      ops.push(inner.text, 'add');
    }
  }
}
