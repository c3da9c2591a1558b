// Pure helpers over decision changes and target sets: ordering the stream, net effects, diffs and the
// snapshot guard. No I/O: the applier and the tests call them directly.
import type { DecisionChange } from '@banbus/core';
import type { TargetCollection } from './target-set.js';

/**
 * The changes still to apply after `held`, in seq order, each seq once. Redeliveries, the relay
 * republishing after a crash and messages that overtook each other all end up here.
 */
export function pendingAfter(changes: readonly DecisionChange[], held: number): DecisionChange[] {
  const bySeq = new Map<number, DecisionChange>();
  for (const c of changes) if (c.seq > held && !bySeq.has(c.seq)) bySeq.set(c.seq, c);
  return [...bySeq.values()].sort((a, b) => a.seq - b.seq);
}

/** How many of `sorted` (ascending seqs) continue `held` without a gap. */
export function consecutiveRun(sorted: readonly DecisionChange[], held: number): number {
  let n = 0;
  while (n < sorted.length && sorted[n]!.seq === held + n + 1) n++;
  return n;
}

/** What a run of changes does in the end, per target: the last op wins (`add` is an upsert). */
export function netEffect(changes: readonly DecisionChange[]): Map<string, 'add' | 'del'> {
  const effect = new Map<string, 'add' | 'del'>();
  for (const c of changes) {
    // Delete first so that the map's order follows the last change of each target.
    effect.delete(c.target);
    effect.set(c.target, c.op);
  }
  return effect;
}

/** What to add and delete so that `current` becomes `desired`. */
export function diffSets(
  current: TargetCollection,
  desired: TargetCollection,
): { adds: string[]; dels: string[] } {
  const adds: string[] = [];
  const dels: string[] = [];
  for (const t of desired) if (!current.has(t)) adds.push(t);
  for (const t of current) if (!desired.has(t)) dels.push(t);
  return { adds, dels };
}

export interface SnapshotGuard {
  /** The guard applies once the host holds at least this many entries (0 = never). */
  min: number;
  /** A snapshot keeping fewer than ratio × held entries is suspicious. */
  ratio: number;
}

/**
 * Why a snapshot of `incoming` entries must not replace the `held` ones (an empty or shrunken answer
 * from a broken aggregator would wipe the host), or undefined when it may.
 */
export function suspiciousSnapshot(held: number, incoming: number, guard: SnapshotGuard): string | undefined {
  if (guard.min === 0 || held < guard.min) return undefined;
  if (incoming === 0) return `the snapshot is empty while this host holds ${held} entries`;
  if (incoming < held * guard.ratio) {
    return `the snapshot has ${incoming} entries while this host holds ${held} (below ${guard.ratio} × held)`;
  }
  return undefined;
}

/** Keeps, per key, the net kernel operation of a sequence of operations (an add then a del cancel). */
export class KernelOps {
  private readonly ops = new Map<string, 'add' | 'del'>();

  push(target: string, op: 'add' | 'del'): void {
    const previous = this.ops.get(target);
    if (previous !== undefined && previous !== op) this.ops.delete(target);
    else this.ops.set(target, op);
  }

  get size(): number {
    return this.ops.size;
  }

  split(): { adds: string[]; dels: string[] } {
    const adds: string[] = [];
    const dels: string[] = [];
    for (const [target, op] of this.ops) (op === 'add' ? adds : dels).push(target);
    return { adds, dels };
  }
}
