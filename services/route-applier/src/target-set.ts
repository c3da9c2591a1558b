// A set of canonical target texts that stays small at the sizes a host holds (100k bans and more).
// Nearly every ban is a single IPv4 address: those are kept as 32-bit numbers in an open-addressing
// hash table (4 bytes, 8 with the table's slack, per entry, instead of a string and a Set slot of some
// 60 bytes). Networks and IPv6 entries, few in practice, stay strings in an ordinary Set.

/** The text's address as a number when it is a canonical dotted quad ("10.0.0.1", no leading zeros), else -1. */
export function v4HostValue(text: string): number {
  const n = text.length;
  if (n < 7 || n > 15) return -1;
  let value = 0;
  let part = 0;
  let digits = 0;
  let dots = 0;
  for (let i = 0; i < n; i++) {
    const c = text.charCodeAt(i);
    if (c === 46 /* . */) {
      if (digits === 0 || dots === 3) return -1;
      value = value * 256 + part;
      part = 0;
      digits = 0;
      dots++;
    } else if (c >= 48 && c <= 57) {
      // A leading zero would make "01.0.0.1" and "1.0.0.1" the same number but different texts.
      if (digits === 1 && part === 0) return -1;
      part = part * 10 + (c - 48);
      if (part > 255) return -1;
      digits++;
    } else {
      return -1;
    }
  }
  if (dots !== 3 || digits === 0) return -1;
  return value * 256 + part;
}

export function formatV4(value: number): string {
  return `${value >>> 24}.${(value >>> 16) & 255}.${(value >>> 8) & 255}.${value & 255}`;
}

/** What the applier needs of a set of targets; a plain Set<string> has it too. */
export interface TargetCollection extends Iterable<string> {
  readonly size: number;
  has(target: string): boolean;
}

const MIN_CAPACITY = 16;

export class TargetSet implements TargetCollection {
  /** Slots hold address + 1 so that 0 can mean empty (0.0.0.0 is an address too). */
  private slots = new Uint32Array(MIN_CAPACITY);
  /** 32 − log2(capacity): the hash's top bits pick the slot. */
  private shift = 32 - Math.log2(MIN_CAPACITY);
  /** 255.255.255.255 + 1 does not fit 32 bits: it is kept aside. */
  private hasTop = false;
  private v4Count = 0;
  private readonly others = new Set<string>();

  constructor(targets?: Iterable<string>) {
    if (targets) for (const t of targets) this.add(t);
  }

  get size(): number {
    return this.v4Count + (this.hasTop ? 1 : 0) + this.others.size;
  }

  has(target: string): boolean {
    const v = v4HostValue(target);
    return v < 0 ? this.others.has(target) : this.hasV4(v);
  }

  /** Adds; true when the target was not there yet. */
  add(target: string): boolean {
    const v = v4HostValue(target);
    if (v >= 0) return this.addV4(v);
    if (this.others.has(target)) return false;
    this.others.add(target);
    return true;
  }

  /** Removes; true when the target was there. */
  delete(target: string): boolean {
    const v = v4HostValue(target);
    return v < 0 ? this.others.delete(target) : this.deleteV4(v);
  }

  clear(): void {
    this.slots = new Uint32Array(MIN_CAPACITY);
    this.shift = 32 - Math.log2(MIN_CAPACITY);
    this.v4Count = 0;
    this.hasTop = false;
    this.others.clear();
  }

  hasV4(value: number): boolean {
    if (value === 0xffffffff) return this.hasTop;
    return this.find(value + 1) >= 0;
  }

  addV4(value: number): boolean {
    if (value === 0xffffffff) {
      if (this.hasTop) return false;
      this.hasTop = true;
      return true;
    }
    const key = value + 1;
    const mask = this.slots.length - 1;
    let i = slot(key, this.shift);
    for (;;) {
      const s = this.slots[i]!;
      if (s === 0) break;
      if (s === key) return false;
      i = (i + 1) & mask;
    }
    this.slots[i] = key;
    this.v4Count++;
    // Linear probing stays short while at most half the slots are taken.
    if (this.v4Count * 2 > this.slots.length) this.resize(this.slots.length * 2);
    return true;
  }

  deleteV4(value: number): boolean {
    if (value === 0xffffffff) {
      const had = this.hasTop;
      this.hasTop = false;
      return had;
    }
    let i = this.find(value + 1);
    if (i < 0) return false;
    // Backward-shift deletion: later entries of the probe run move up, so no tombstones pile up.
    const slots = this.slots;
    const mask = slots.length - 1;
    let j = i;
    for (;;) {
      j = (j + 1) & mask;
      const s = slots[j]!;
      if (s === 0) break;
      const home = slot(s, this.shift);
      // s may fill the hole at i unless its home lies cyclically in (i, j].
      if (i <= j ? home <= i || home > j : home <= i && home > j) {
        slots[i] = s;
        i = j;
      }
    }
    slots[i] = 0;
    this.v4Count--;
    if (this.v4Count * 8 < slots.length && slots.length > MIN_CAPACITY) this.resize(slots.length / 2);
    return true;
  }

  /** IPv4 host addresses as numbers, in no particular order. */
  *v4Values(): IterableIterator<number> {
    const slots = this.slots;
    for (let i = 0; i < slots.length; i++) if (slots[i] !== 0) yield slots[i]! - 1;
    if (this.hasTop) yield 0xffffffff;
  }

  /** The entries that are not single IPv4 addresses (networks, IPv6). */
  nonV4Hosts(): IterableIterator<string> {
    return this.others.values();
  }

  *[Symbol.iterator](): IterableIterator<string> {
    for (const v of this.v4Values()) yield formatV4(v);
    yield* this.others;
  }

  private find(key: number): number {
    const slots = this.slots;
    const mask = slots.length - 1;
    let i = slot(key, this.shift);
    for (;;) {
      const s = slots[i]!;
      if (s === key) return i;
      if (s === 0) return -1;
      i = (i + 1) & mask;
    }
  }

  private resize(capacity: number): void {
    const old = this.slots;
    const slots = new Uint32Array(capacity);
    const mask = capacity - 1;
    this.shift = 32 - Math.log2(capacity);
    for (let k = 0; k < old.length; k++) {
      const key = old[k]!;
      if (key === 0) continue;
      let i = slot(key, this.shift);
      while (slots[i] !== 0) i = (i + 1) & mask;
      slots[i] = key;
    }
    this.slots = slots;
  }
}

/** Fibonacci hashing: the top bits of key × 2^32/φ spread neighbouring addresses over the table. */
function slot(key: number, shift: number): number {
  return Math.imul(key, 0x9e3779b1) >>> shift;
}

/**
 * Targets as a snapshot lists them, in a compact form: single IPv4 addresses as numbers, the rest as
 * text. 100k of them take 400 kB instead of an array of strings of some 10 MB.
 */
export class TargetList implements Iterable<string> {
  private v4 = new Uint32Array(1024);
  private v4Length = 0;
  private readonly texts: string[] = [];

  get length(): number {
    return this.v4Length + this.texts.length;
  }

  push(text: string): void {
    const v = v4HostValue(text);
    if (v < 0) {
      this.texts.push(text);
      return;
    }
    if (this.v4Length === this.v4.length) {
      const grown = new Uint32Array(this.v4.length * 2);
      grown.set(this.v4);
      this.v4 = grown;
    }
    this.v4[this.v4Length++] = v;
  }

  /** The single IPv4 addresses, as numbers. */
  v4Values(): Uint32Array {
    return this.v4.subarray(0, this.v4Length);
  }

  /** The entries that are not single IPv4 addresses, as written. */
  others(): readonly string[] {
    return this.texts;
  }

  *[Symbol.iterator](): IterableIterator<string> {
    for (const v of this.v4Values()) yield formatV4(v);
    yield* this.texts;
  }
}
