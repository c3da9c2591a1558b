// Merged blocklists: the decision set folded into the fewest CIDRs that cover exactly the same addresses,
// and rendered for the tools that load it (pfSense/OPNsense URL tables, nft, ipset, JSON clients).
//
// Hand-written because it runs on every rebuild at up to 1M decisions. Targets are parsed straight into typed
// arrays (IPv4 start as uint32, IPv6 as four uint32 words, prefix as a byte) and sorted (IPv4: radix sort of
// the columns; IPv6: an index permutation), so there are no per-target objects. A target that ends up alone in its
// merged range is emitted as its own (canonical) input string: formatting addresses is the costly part, and
// with random bans almost every entry stays alone, so the output shares the input's strings.

import { formatV6, parseTarget } from './address.js';

/** Canonical CIDR texts (single hosts without "/32" or "/128", as core writes targets), sorted by address. */
export interface MergedBlocklist {
  v4: string[];
  v6: string[];
}

export type BlocklistFormat = 'plain' | 'nftables' | 'ipset' | 'json';

export const BLOCKLIST_FORMATS: readonly BlocklistFormat[] = ['plain', 'nftables', 'ipset', 'json'];

export interface RenderOptions {
  family: 4 | 6 | 'all';
  format: BlocklistFormat;
  generatedAt: Date;
  seq: number;
  /**
   * Base name for the firewall objects (default "banbus"): nftables table `inet <name>` holding sets
   * `blocklist4`/`blocklist6`; ipset sets `<name>4`/`<name>6`.
   */
  setName?: string;
}

const TWO_32 = 0x1_0000_0000;

/** Growable column store of one family's targets. */
class Columns {
  size = 0;
  /** IPv4: one word per target; IPv6: four (most significant first). */
  words: Uint32Array;
  prefixes: Uint8Array;
  /** Where each target's canonical text is: ≥ 0 an index into the input, < 0 `~index` into `normalized`. */
  refs: Int32Array;
  readonly normalized: string[] = [];

  constructor(
    readonly input: readonly string[],
    readonly wordsPerTarget: 1 | 4,
    capacity: number,
  ) {
    this.words = new Uint32Array(capacity * wordsPerTarget);
    this.prefixes = new Uint8Array(capacity);
    this.refs = new Int32Array(capacity);
  }

  /** Slot of a new target (the caller fills in its words and prefix) whose text is input[ref] or `text`. */
  add(ref: number, text?: string): number {
    if (this.size === this.prefixes.length) {
      this.words = grow(this.words, new Uint32Array(this.words.length * 2));
      this.prefixes = grow(this.prefixes, new Uint8Array(this.prefixes.length * 2));
      this.refs = grow(this.refs, new Int32Array(this.refs.length * 2));
    }
    this.refs[this.size] = text === undefined ? ref : ~(this.normalized.push(text) - 1);
    return this.size++;
  }

  text(slot: number): string {
    const ref = this.refs[slot]!;
    return ref >= 0 ? this.input[ref]! : this.normalized[~ref]!;
  }
}

function grow<T extends Uint32Array | Uint8Array | Int32Array>(from: T, to: T): T {
  to.set(from);
  return to;
}

/**
 * Folds targets (core's canonical text form; other spellings go through parseTarget and are normalized) into
 * the minimal CIDR cover of their union: overlapping, contained and adjacent ranges merge, IPv4 and IPv6 apart.
 * Throws TargetError on something that is not a target.
 */
export function mergeTargets(targets: Iterable<string>): MergedBlocklist {
  // Canonical inputs are referenced, not copied: the output reuses their strings.
  const input: readonly string[] = Array.isArray(targets)
    ? (targets as readonly string[])
    : Array.from(targets);
  const v4 = new Columns(input, 1, Math.max(16, input.length));
  const v6 = new Columns(input, 4, 1024);
  const groups = new Array<number>(8).fill(0);

  for (let k = 0; k < input.length; k++) {
    const text = input[k]!;
    if (addV4(v4, text, k) || addV6(v6, text, k, groups)) continue;
    // Not in canonical form (or IPv4-mapped): the strict parser decides, and folds mapped IPv6 into IPv4.
    const target = parseTarget(text);
    if (target.family === 4) {
      const i = v4.add(k, target.text);
      v4.words[i] = Number(target.start);
      v4.prefixes[i] = target.prefix;
    } else {
      const i = v6.add(k, target.text);
      for (let w = 0; w < 4; w++)
        v6.words[4 * i + w] = Number((target.start >> BigInt(96 - 32 * w)) & 0xffffffffn);
      v6.prefixes[i] = target.prefix;
    }
  }

  return { v4: mergeV4(v4), v6: mergeV6(v6) };
}

/** Splits a list into consecutive parts of at most `max` entries; an empty list is one empty part. */
export function splitParts(cidrs: readonly string[], max: number): string[][] {
  if (!Number.isSafeInteger(max) || max < 1) {
    throw new RangeError(`max must be a positive integer, not ${String(max)}`);
  }
  // One empty part rather than none, so part 1 of an empty list exists and reads as "nothing banned".
  if (cidrs.length === 0) return [[]];
  const parts: string[][] = [];
  for (let i = 0; i < cidrs.length; i += max) parts.push(cidrs.slice(i, i + max));
  return parts;
}

/** The list as a file for its consumer; see BlocklistFormat. Ends with a newline. */
export function renderBlocklist(list: MergedBlocklist, options: RenderOptions): string {
  const v4 = options.family === 6 ? null : list.v4;
  const v6 = options.family === 4 ? null : list.v6;
  const name = options.setName ?? 'banbus';
  switch (options.format) {
    case 'plain':
      return renderPlain(v4, v6, options);
    case 'nftables':
      checkName(name);
      return renderNftables(v4, v6, name, options);
    case 'ipset':
      checkName(name);
      return renderIpset(v4, v6, name, options);
    case 'json':
      return renderJson(v4, v6, options);
    default:
      throw new RangeError(`unknown blocklist format ${JSON.stringify(options.format)}`);
  }
}

// ---------------------------------------------------------------------------------------------------------------

/**
 * Adds a strict "a.b.c.d" or "a.b.c.d/p" (no leading zeros, host bits clear) and returns true, or returns
 * false for anything else (left to parseTarget).
 */
function addV4(columns: Columns, s: string, ref: number): boolean {
  const n = s.length;
  if (n < 7 || n > 18) return false;
  let value = 0;
  let octet = 0;
  let digits = 0;
  let dots = 0;
  let i = 0;
  for (; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c >= 48 && c <= 57) {
      if (digits === 1 && octet === 0) return false; // leading zero
      octet = octet * 10 + (c - 48);
      if (++digits > 3 || octet > 255) return false;
    } else if (c === 46) {
      if (digits === 0 || dots === 3) return false;
      value = value * 256 + octet;
      octet = 0;
      digits = 0;
      dots++;
    } else if (c === 47) {
      break;
    } else {
      return false;
    }
  }
  if (digits === 0 || dots !== 3) return false;
  value = value * 256 + octet;
  let prefix = 32;
  if (i < n) {
    // "/p": 1-2 digits, no leading zero, ≤ 31 ("/32" is not canonical), host bits clear.
    const left = n - i - 1;
    if (left < 1 || left > 2) return false;
    const d0 = s.charCodeAt(i + 1) - 48;
    if (d0 < 0 || d0 > 9) return false;
    prefix = d0;
    if (left === 2) {
      const d1 = s.charCodeAt(i + 2) - 48;
      if (d0 === 0 || d1 < 0 || d1 > 9) return false;
      prefix = d0 * 10 + d1;
      if (prefix > 31) return false;
    }
    if (value % 2 ** (32 - prefix) !== 0) return false;
  }
  const slot = columns.add(ref);
  columns.words[slot] = value;
  columns.prefixes[slot] = prefix;
  return true;
}

/**
 * Adds an IPv6 address or network written with hex groups (no embedded IPv4, not IPv4-mapped, host bits
 * clear) and returns true, or returns false (left to parseTarget). The stored text is the canonical form.
 */
function addV6(columns: Columns, s: string, ref: number, g: number[]): boolean {
  const n = s.length;
  if (n < 2 || n > 43) return false;
  let count = 0; // groups seen
  let gap = -1; // group index where "::" stands
  let group = 0;
  let digits = 0;
  let i = 0;
  for (; i < n; i++) {
    const c = s.charCodeAt(i);
    let d: number;
    if (c >= 48 && c <= 57) d = c - 48;
    else if (c >= 97 && c <= 102) d = c - 87;
    else if (c >= 65 && c <= 70) d = c - 55;
    else if (c === 58) {
      if (digits > 0) {
        if (count === 8) return false;
        g[count++] = group;
        group = 0;
        digits = 0;
        if (i + 1 < n && s.charCodeAt(i + 1) === 58) {
          if (gap >= 0) return false;
          gap = count;
          i++;
        } else if (i + 1 === n) return false; // trailing single ":"
      } else if (i === 0 && n > 1 && s.charCodeAt(1) === 58) {
        gap = 0;
        i++;
      } else {
        return false;
      }
      continue;
    } else if (c === 47) break;
    else return false;
    if (++digits > 4) return false;
    group = group * 16 + d;
  }
  if (digits > 0) {
    if (count === 8) return false;
    g[count++] = group;
  }
  if (gap < 0 ? count !== 8 : count > 7) return false;
  if (gap >= 0) {
    // Move the groups after "::" to the end and zero the gap.
    const tail = count - gap;
    for (let k = 0; k < tail; k++) g[7 - k] = g[count - 1 - k]!;
    for (let k = gap; k < 8 - tail; k++) g[k] = 0;
  }
  if (g[0] === 0 && g[1] === 0 && g[2] === 0 && g[3] === 0 && g[4] === 0 && g[5] === 0xffff) return false;

  let prefix = 128;
  if (i < n) {
    const left = n - i - 1;
    if (left < 1 || left > 3) return false;
    prefix = 0;
    for (let k = i + 1; k < n; k++) {
      const d = s.charCodeAt(k) - 48;
      if (d < 0 || d > 9 || (k === i + 1 && d === 0 && left > 1)) return false;
      prefix = prefix * 10 + d;
    }
    if (prefix > 128) return false;
  }
  const w0 = g[0]! * 0x10000 + g[1]!;
  const w1 = g[2]! * 0x10000 + g[3]!;
  const w2 = g[4]! * 0x10000 + g[5]!;
  const w3 = g[6]! * 0x10000 + g[7]!;
  if (
    (w0 & hostMask(prefix, 0)) |
    (w1 & hostMask(prefix, 1)) |
    (w2 & hostMask(prefix, 2)) |
    (w3 & hostMask(prefix, 3))
  ) {
    return false;
  }
  const address = formatGroups(g);
  const canonical = prefix === 128 ? address : `${address}/${prefix}`;
  const slot = canonical === s ? columns.add(ref) : columns.add(ref, canonical);
  columns.words[4 * slot] = w0;
  columns.words[4 * slot + 1] = w1;
  columns.words[4 * slot + 2] = w2;
  columns.words[4 * slot + 3] = w3;
  columns.prefixes[slot] = prefix;
  return true;
}

/** Host-bit mask of 32-bit word `w` (0 = most significant) for an IPv6 prefix. */
function hostMask(prefix: number, w: number): number {
  const networkBits = prefix - 32 * w;
  if (networkBits >= 32) return 0;
  if (networkBits <= 0) return 0xffffffff;
  return 0xffffffff >>> networkBits;
}

/** RFC 5952 text of 8 groups (what formatV6 writes), without bigint or intermediate arrays. */
function formatGroups(g: readonly number[]): string {
  let bestStart = -1;
  let bestLength = 1;
  for (let i = 0; i < 8;) {
    if (g[i] !== 0) {
      i++;
      continue;
    }
    let j = i + 1;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLength) {
      bestStart = i;
      bestLength = j - i;
    }
    i = j;
  }
  let out = '';
  for (let i = 0; i < 8; i++) {
    if (i === bestStart) {
      out += i === 0 ? '::' : ':';
      i += bestLength - 1;
      continue;
    }
    out += g[i]!.toString(16);
    if (i < 7) out += ':';
  }
  return out;
}

/**
 * Sorts the IPv4 columns by start in place (their prefixes and text refs move along): a stable LSD radix sort in
 * three passes of 11, 11 and 10 bits, whose 2048 buckets stay in cache; the sweep then reads memory in order.
 */
function sortV4(columns: Columns): void {
  const n = columns.size;
  let keys = columns.words.subarray(0, n);
  let prefixes = columns.prefixes.subarray(0, n);
  let refs = columns.refs.subarray(0, n);
  let keysTo: Uint32Array = new Uint32Array(n);
  let prefixesTo: Uint8Array = new Uint8Array(n);
  let refsTo: Int32Array = new Int32Array(n);
  const counts = new Uint32Array(2048);
  for (const shift of [0, 11, 22]) {
    counts.fill(0);
    for (let i = 0; i < n; i++) counts[(keys[i]! >>> shift) & 0x7ff]!++;
    let sum = 0;
    for (let d = 0; d < 2048; d++) {
      const c = counts[d]!;
      counts[d] = sum;
      sum += c;
    }
    for (let i = 0; i < n; i++) {
      const key = keys[i]!;
      const at = counts[(key >>> shift) & 0x7ff]!++;
      keysTo[at] = key;
      prefixesTo[at] = prefixes[i]!;
      refsTo[at] = refs[i]!;
    }
    [keys, keysTo] = [keysTo, keys];
    [prefixes, prefixesTo] = [prefixesTo, prefixes];
    [refs, refsTo] = [refsTo, refs];
  }
  columns.words = keys;
  columns.prefixes = prefixes;
  columns.refs = refs;
}

/** Addresses in an IPv4 network of each prefix length. */
const V4_SIZES = Float64Array.from({ length: 33 }, (_, prefix) => 2 ** (32 - prefix));

const OCTETS = Array.from({ length: 256 }, (_, i) => String(i));

function formatV4(value: number): string {
  return `${OCTETS[value >>> 24]!}.${OCTETS[(value >>> 16) & 0xff]!}.${OCTETS[(value >>> 8) & 0xff]!}.${OCTETS[value & 0xff]!}`;
}

function mergeV4(columns: Columns): string[] {
  const out: string[] = [];
  const n = columns.size;
  if (n === 0) return out;
  sortV4(columns);
  const { words: starts, prefixes } = columns;

  let runStart = starts[0]!;
  let runEnd = runStart + V4_SIZES[prefixes[0]!]! - 1;
  // The only target in the current run, or -1 once a second one joined it.
  let alone = 0;
  for (let i = 1; i < n; i++) {
    const start = starts[i]!;
    const end = start + V4_SIZES[prefixes[i]!]! - 1;
    if (start > runEnd + 1) {
      if (alone >= 0) out.push(columns.text(alone));
      else emitV4(runStart, runEnd, out);
      runStart = start;
      runEnd = end;
      alone = i;
    } else {
      if (end > runEnd) runEnd = end;
      alone = -1;
    }
  }
  if (alone >= 0) out.push(columns.text(alone));
  else emitV4(runStart, runEnd, out);
  return out;
}

/** Appends the minimal CIDRs of [start, end]: at each step the largest aligned block that still fits. */
function emitV4(start: number, end: number, out: string[]): void {
  while (start <= end) {
    // Alignment of start (trailing zero bits; all 32 for 0) and the size left, as host-bit counts.
    const aligned = start === 0 ? 32 : 31 - Math.clz32(start & -start);
    const left = end - start + 1;
    const fits = left >= TWO_32 ? 32 : 31 - Math.clz32(left);
    const hostBits = aligned < fits ? aligned : fits;
    out.push(hostBits === 0 ? formatV4(start) : `${formatV4(start)}/${32 - hostBits}`);
    start += 2 ** hostBits;
  }
}

function mergeV6(columns: Columns): string[] {
  const out: string[] = [];
  const n = columns.size;
  if (n === 0) return out;
  const { words, prefixes } = columns;
  const order = new Uint32Array(n);
  for (let i = 0; i < n; i++) order[i] = i;
  order.sort((a, b) => {
    for (let w = 0; w < 4; w++) {
      const d = words[4 * a + w]! - words[4 * b + w]!;
      if (d !== 0) return d;
    }
    return 0;
  });

  // The current run as words: its first target's start and its end so far.
  let runFirst = order[0]!;
  const runEnd = new Uint32Array(4);
  setEnd(runEnd, words, prefixes, runFirst);
  const end = new Uint32Array(4);
  let alone = runFirst;
  for (let k = 1; k < n; k++) {
    const i = order[k]!;
    if (startsAfterGap(words, i, runEnd)) {
      if (alone >= 0) out.push(columns.text(alone));
      else emitV6(bigOf(words, runFirst), bigEnd(runEnd), out);
      runFirst = i;
      setEnd(runEnd, words, prefixes, i);
      alone = i;
    } else {
      setEnd(end, words, prefixes, i);
      if (compareWords(end, 0, runEnd, 0) > 0) runEnd.set(end);
      alone = -1;
    }
  }
  if (alone >= 0) out.push(columns.text(alone));
  else emitV6(bigOf(words, runFirst), bigEnd(runEnd), out);
  return out;
}

function setEnd(dst: Uint32Array, words: Uint32Array, prefixes: Uint8Array, i: number): void {
  const prefix = prefixes[i]!;
  for (let w = 0; w < 4; w++) dst[w] = (words[4 * i + w]! | hostMask(prefix, w)) >>> 0;
}

function compareWords(a: Uint32Array, ai: number, b: Uint32Array, bi: number): number {
  for (let w = 0; w < 4; w++) {
    const d = a[ai + w]! - b[bi + w]!;
    if (d !== 0) return d;
  }
  return 0;
}

/** True when target i starts after runEnd + 1, i.e. neither overlaps nor touches the run. */
function startsAfterGap(words: Uint32Array, i: number, runEnd: Uint32Array): boolean {
  if (compareWords(words, 4 * i, runEnd, 0) <= 0) return false;
  // start > runEnd: it touches when start - 1 === runEnd (start > 0 here).
  let borrow = 1;
  for (let w = 3; w >= 0; w--) {
    let word = words[4 * i + w]! - borrow;
    borrow = 0;
    if (word < 0) {
      word += TWO_32;
      borrow = 1;
    }
    if (word !== runEnd[w]) return true;
  }
  return false;
}

function bigOf(words: Uint32Array, i: number): bigint {
  return (
    (BigInt(words[4 * i]!) << 96n) |
    (BigInt(words[4 * i + 1]!) << 64n) |
    (BigInt(words[4 * i + 2]!) << 32n) |
    BigInt(words[4 * i + 3]!)
  );
}

function bigEnd(end: Uint32Array): bigint {
  return bigOf(end, 0);
}

function emitV6(start: bigint, end: bigint, out: string[]): void {
  while (start <= end) {
    const aligned = start === 0n ? 128 : trailingZeros(start);
    const fits = bitLength(end - start + 1n) - 1;
    const hostBits = aligned < fits ? aligned : fits;
    out.push(hostBits === 0 ? formatV6(start) : `${formatV6(start)}/${128 - hostBits}`);
    start += 1n << BigInt(hostBits);
  }
}

function trailingZeros(x: bigint): number {
  let n = 0;
  while ((x & 0xffffffffn) === 0n) {
    x >>= 32n;
    n += 32;
  }
  const low = Number(x & 0xffffffffn);
  return n + 31 - Math.clz32(low & -low);
}

function bitLength(x: bigint): number {
  let n = 0;
  while (x > 0xffffffffn) {
    x >>= 32n;
    n += 32;
  }
  return n + 32 - Math.clz32(Number(x));
}

// ---------------------------------------------------------------------------------------------------------------

function familyLabel(options: RenderOptions): string {
  return options.family === 'all' ? 'all' : `ipv${options.family}`;
}

function countOf(v4: readonly string[] | null, v6: readonly string[] | null): number {
  return (v4?.length ?? 0) + (v6?.length ?? 0);
}

function header(v4: readonly string[] | null, v6: readonly string[] | null, options: RenderOptions): string {
  return (
    `# banbus blocklist\n` +
    `# generated: ${options.generatedAt.toISOString()}\n` +
    `# seq: ${options.seq}\n` +
    `# count: ${countOf(v4, v6)}\n` +
    `# family: ${familyLabel(options)}\n`
  );
}

/** `list` as lines (prefix + entry + "\n"), built with one join so 1M entries cost one big string. */
function lines(list: readonly string[], prefix = ''): string {
  return list.length === 0 ? '' : prefix + list.join('\n' + prefix) + '\n';
}

function renderPlain(
  v4: readonly string[] | null,
  v6: readonly string[] | null,
  options: RenderOptions,
): string {
  return header(v4, v6, options) + lines(v4 ?? []) + lines(v6 ?? []);
}

function checkName(name: string): void {
  // Valid both as an nft identifier and, with the family digit appended, as an ipset name (≤ 31 chars).
  if (!/^[A-Za-z][A-Za-z0-9_-]{0,29}$/.test(name)) {
    throw new RangeError(`set name ${JSON.stringify(name)} must be a letter then up to 29 of [A-Za-z0-9_-]`);
  }
}

/**
 * One `nft -f` transaction: declare the table and sets (a no-op when they exist), flush them, then add the
 * elements, so loading the file again replaces the contents atomically and leaves everything else alone.
 */
function renderNftables(
  v4: readonly string[] | null,
  v6: readonly string[] | null,
  table: string,
  options: RenderOptions,
): string {
  const sets: Array<[name: string, type: string, list: readonly string[]]> = [];
  if (v4) sets.push(['blocklist4', 'ipv4_addr', v4]);
  if (v6) sets.push(['blocklist6', 'ipv6_addr', v6]);
  const declare = (withElements: boolean) =>
    `table inet ${table} {\n` +
    sets
      .filter(([, , list]) => !withElements || list.length > 0)
      .map(
        ([name, type, list]) =>
          `\tset ${name} {\n\t\ttype ${type}\n\t\tflags interval\n` +
          (withElements ? `\t\telements = {\n\t\t\t${list.join(',\n\t\t\t')}\n\t\t}\n` : '') +
          `\t}\n`,
      )
      .join('') +
    `}\n`;
  const anyElements = sets.some(([, , list]) => list.length > 0);
  return (
    header(v4, v6, options) +
    declare(false) +
    sets.map(([name]) => `flush set inet ${table} ${name}\n`).join('') +
    (anyElements ? declare(true) : '')
  );
}

/** maxelem we write unless a list needs more: a ceiling, not an allocation, and it must not change (below). */
export const IPSET_MAXELEM = 16_777_216;

/**
 * `ipset restore` input. maxelem stays at IPSET_MAXELEM unless the list needs more, because `create -exist`
 * fails when the set already exists with another maxelem. hash:net refuses /0, so a whole-family entry is
 * written as its two halves.
 */
function renderIpset(
  v4: readonly string[] | null,
  v6: readonly string[] | null,
  base: string,
  options: RenderOptions,
): string {
  const section = (name: string, family: 'inet' | 'inet6', list: readonly string[]) => {
    const maxelem = Math.max(IPSET_MAXELEM, nextPowerOfTwo(list.length * 2));
    const whole = family === 'inet' ? '0.0.0.0/0' : '::/0';
    const entries =
      list.length === 1 && list[0] === whole
        ? family === 'inet'
          ? ['0.0.0.0/1', '128.0.0.0/1']
          : ['::/1', '8000::/1']
        : list;
    return (
      `create ${name} hash:net family ${family} maxelem ${maxelem} -exist\n` +
      `flush ${name}\n` +
      lines(entries, `add ${name} `)
    );
  };
  return (
    header(v4, v6, options) +
    (v4 ? section(`${base}4`, 'inet', v4) : '') +
    (v6 ? section(`${base}6`, 'inet6', v6) : '')
  );
}

function nextPowerOfTwo(n: number): number {
  let p = 1;
  while (p < n) p *= 2;
  return p;
}

function renderJson(
  v4: readonly string[] | null,
  v6: readonly string[] | null,
  options: RenderOptions,
): string {
  const body: Record<string, unknown> = {
    generated_at: options.generatedAt.toISOString(),
    seq: options.seq,
    count: countOf(v4, v6),
  };
  if (v4) body.v4 = v4;
  if (v6) body.v6 = v6;
  return JSON.stringify(body) + '\n';
}
