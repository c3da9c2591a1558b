// The host's never-block list: its own addresses, default gateways, loopback and configured admin
// networks. A decision that overlaps any of them is refused before it reaches the kernel: banning a
// network that holds the gateway would cut the host off. Pure; detecting the host's addresses is I/O
// and lives in host.ts.
import { overlaps, parseTarget, type Target } from '@banbus/core';

/** Always protected, whatever the host reports. */
export const LOOPBACK = ['127.0.0.0/8', '::1'];

export class NeverBlock {
  private readonly targets: Target[];
  /** The IPv4 entries as [start, end] numbers, for the snapshot's fast path. */
  private readonly v4: number[] = [];

  constructor(entries: Iterable<string>) {
    const seen = new Map<string, Target>();
    for (const e of [...LOOPBACK, ...entries]) {
      const t = parseTarget(e);
      seen.set(t.text, t);
    }
    this.targets = [...seen.values()];
    for (const t of this.targets) if (t.family === 4) this.v4.push(Number(t.start), Number(t.end));
  }

  /** True when the IPv4 address `value` (as a number) is protected. */
  protectsV4(value: number): boolean {
    for (let i = 0; i < this.v4.length; i += 2)
      if (value >= this.v4[i]! && value <= this.v4[i + 1]!) return true;
    return false;
  }

  /** The protected entry `target` overlaps, or undefined when it may be blocked. */
  protects(target: Target): string | undefined {
    for (const p of this.targets) if (overlaps(p, target)) return p.text;
    return undefined;
  }

  list(): string[] {
    return this.targets.map((t) => t.text);
  }
}
