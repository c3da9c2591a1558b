// Merged blocklists: the decision set folded into the fewest CIDRs that cover exactly the same addresses,
// and rendered for the tools that load it (pfSense/OPNsense URL tables, nft, ipset, JSON clients).
//
// Hand-written because it runs on every rebuild at up to 1M decisions. Targets live in typed columns (IPv4
// start as uint32, IPv6 as four uint32 words, prefix as a byte) and are sorted there (IPv4: radix sort;
// IPv6: an index permutation), so there are no per-target objects. The merged result stays in columns too
// (MergedRanges) and is rendered straight into bytes: the aggregator holds 1M entries as a few megabytes
// instead of a million strings. mergeTargets is the same merge for callers with texts: a target that ends
// up alone in its merged range comes back as its own input string.

import { parseTarget } from './address.js';

/** Canonical CIDR texts (single hosts without "/32" or "/128", as core writes targets), sorted by address. */
export interface MergedBlocklist {
  v4: string[];
  v6: string[];
}

/**
 * One family's CIDRs as columns: entry i starts at words[i] (IPv4) or words[4i..4i+3] (IPv6, most
 * significant word first) and has prefix prefixes[i]. Once merged: sorted, disjoint, not adjacent-mergeable.
 */
export interface FamilyRanges {
  size: number;
  words: Uint32Array;
  prefixes: Uint8Array;
}

export interface MergedRanges {
  v4: FamilyRanges;
  v6: FamilyRanges;
}

export type BlocklistFormat = 'plain' | 'nftables' | 'ipset' | 'json';

export const BLOCKLIST_FORMATS: readonly BlocklistFormat[] = ['plain', 'nftables', 'ipset', 'json'];

export type BlocklistFamily = 4 | 6 | 'all';

export interface RenderOptions {
  family: BlocklistFamily;
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
/** scanTarget's result flag for IPv6. */
export const TARGET_V6 = 0x100;
/** A merged entry that is not one input target unchanged (mergeTargets formats it). */
const NO_REF = -0x8000_0000;

/**
 * Reads a target (core's canonical text; other spellings go through parseTarget) into `words` at `at`: IPv4
 * one word, IPv6 four. Returns its prefix, with TARGET_V6 set for IPv6. Throws TargetError on something
 * that is not a target. IPv4-mapped IPv6 is IPv4.
 */
export function scanTarget(text: string, words: Uint32Array, at = 0): number {
  let prefix = scanV4(text, words, at);
  if (prefix >= 0) return prefix;
  prefix = scanV6(text, words, at, SCRATCH_GROUPS);
  if (prefix >= 0) return TARGET_V6 | prefix;
  const target = parseTarget(text);
  if (target.family === 4) {
    words[at] = Number(target.start);
    return target.prefix;
  }
  for (let w = 0; w < 4; w++) words[at + w] = Number((target.start >> BigInt(96 - 32 * w)) & 0xffffffffn);
  return TARGET_V6 | target.prefix;
}

const SCRATCH_GROUPS = new Array<number>(8).fill(0);

/** Growable columns of one family's targets, with where each target's text is (for mergeTargets). */
class Columns implements FamilyRanges {
  size = 0;
  words: Uint32Array;
  prefixes: Uint8Array;
  /** ≥ 0 an index into the input, < 0 `~index` into `normalized`. */
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

  /** Makes room for one more target and returns its slot (words at slot * wordsPerTarget). */
  reserve(): number {
    if (this.size === this.prefixes.length) {
      this.words = grow(this.words, new Uint32Array(this.words.length * 2));
      this.prefixes = grow(this.prefixes, new Uint8Array(this.prefixes.length * 2));
      this.refs = grow(this.refs, new Int32Array(this.refs.length * 2));
    }
    return this.size;
  }

  /** Commits the reserved slot with prefix `prefix`, whose text is input[ref] or `text`. */
  commit(prefix: number, ref: number, text?: string): void {
    this.prefixes[this.size] = prefix;
    this.refs[this.size] = text === undefined ? ref : ~(this.normalized.push(text) - 1);
    this.size++;
  }

  text(ref: number): string {
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
  const g = SCRATCH_GROUPS;

  for (let k = 0; k < input.length; k++) {
    const text = input[k]!;
    let prefix = scanV4(text, v4.words, v4.reserve());
    if (prefix >= 0) {
      v4.commit(prefix, k);
      continue;
    }
    prefix = scanV6(text, v6.words, 4 * v6.reserve(), g);
    if (prefix >= 0) {
      const address = formatGroups(g);
      const canonical = prefix === 128 ? address : `${address}/${prefix}`;
      v6.commit(prefix, k, canonical === text ? undefined : canonical);
      continue;
    }
    // Not in canonical form (or IPv4-mapped): the strict parser decides, and folds mapped IPv6 into IPv4.
    const target = parseTarget(text);
    const columns = target.family === 4 ? v4 : v6;
    const at = columns.reserve() * columns.wordsPerTarget;
    scanTarget(target.text, columns.words, at);
    columns.commit(target.prefix, k, target.text);
  }

  const m4 = mergeV4(v4, v4.refs);
  const m6 = mergeV6(v6, v6.refs);
  return { v4: textsOf(m4, v4, 4), v6: textsOf(m6, v6, 6) };
}

/**
 * The minimal CIDR cover of each family's targets, as columns. The inputs' columns are only read; a
 * target's words must have its host bits clear (as scanTarget writes them).
 */
export function mergeRanges(v4: FamilyRanges, v6: FamilyRanges): MergedRanges {
  return { v4: mergeV4(v4, null).ranges, v6: mergeV6(v6, null).ranges };
}

/** The entries of `family` in list order (IPv4 before IPv6). */
export function rangeCount(ranges: MergedRanges, family: BlocklistFamily): number {
  return (family === 6 ? 0 : ranges.v4.size) + (family === 4 ? 0 : ranges.v6.size);
}

/** Entries [from, to) of `family`'s list (IPv4 first, then IPv6), as views: for max/part splitting. */
export function sliceRanges(
  ranges: MergedRanges,
  family: BlocklistFamily,
  from: number,
  to: number,
): MergedRanges {
  const n4 = family === 6 ? 0 : ranges.v4.size;
  const n6 = family === 4 ? 0 : ranges.v6.size;
  const view = (r: FamilyRanges, wordsPer: number, a: number, b: number): FamilyRanges => {
    const lo = Math.max(0, Math.min(a, b));
    const hi = Math.max(lo, b);
    return {
      size: hi - lo,
      words: r.words.subarray(lo * wordsPer, hi * wordsPer),
      prefixes: r.prefixes.subarray(lo, hi),
    };
  };
  return {
    v4: view(ranges.v4, 1, Math.min(from, n4), Math.min(to, n4)),
    v6: view(ranges.v6, 4, Math.max(0, from - n4), Math.max(0, Math.min(to, n4 + n6) - n4)),
  };
}

/** The canonical CIDR text of entry i of one family's columns. */
export function rangeText(ranges: FamilyRanges, family: 4 | 6, i: number): string {
  return entryText(family, ranges.words, ranges.prefixes, i);
}

/**
 * How many parts of at most `max` entries a list of `count` has. An empty list is one empty part, so part 1
 * of an empty list exists and reads as "nothing banned".
 */
export function partCount(count: number, max: number): number {
  if (!Number.isSafeInteger(max) || max < 1) {
    throw new RangeError(`max must be a positive integer, not ${String(max)}`);
  }
  return Math.max(1, Math.ceil(count / max));
}

/** The list as a file for its consumer; see BlocklistFormat. Ends with a newline. */
export function renderBlocklist(list: MergedBlocklist, options: RenderOptions): string {
  return new TextDecoder().decode(renderRanges(rangesOfTexts(list), options));
}

/** renderBlocklist for merged columns, straight into bytes (ASCII). */
export function renderRanges(ranges: MergedRanges, options: RenderOptions): Uint8Array {
  const v4 = options.family === 6 ? null : ranges.v4;
  const v6 = options.family === 4 ? null : ranges.v6;
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

/** Columns of already merged texts (no merging: the order and entries are kept). */
function rangesOfTexts(list: MergedBlocklist): MergedRanges {
  const columns = (texts: readonly string[], wordsPer: 1 | 4): FamilyRanges => {
    const r: FamilyRanges = {
      size: texts.length,
      words: new Uint32Array(texts.length * wordsPer),
      prefixes: new Uint8Array(texts.length),
    };
    texts.forEach((text, i) => {
      const scanned = scanTarget(text, r.words, i * wordsPer);
      if ((scanned & TARGET_V6) !== (wordsPer === 4 ? TARGET_V6 : 0)) {
        throw new RangeError(`${text} is not an IPv${wordsPer === 4 ? 6 : 4} entry`);
      }
      r.prefixes[i] = scanned & 0xff;
    });
    return r;
  };
  return { v4: columns(list.v4, 1), v6: columns(list.v6, 4) };
}

// ---------------------------------------------------------------------------------------------------------------

/**
 * Reads a strict "a.b.c.d" or "a.b.c.d/p" (no leading zeros, host bits clear) into out[0] and returns its
 * prefix, or returns -1 for anything else (left to parseTarget).
 */
function scanV4(s: string, out: Uint32Array, at: number): number {
  const n = s.length;
  if (n < 7 || n > 18) return -1;
  let value = 0;
  let octet = 0;
  let digits = 0;
  let dots = 0;
  let i = 0;
  for (; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c >= 48 && c <= 57) {
      if (digits === 1 && octet === 0) return -1; // leading zero
      octet = octet * 10 + (c - 48);
      if (++digits > 3 || octet > 255) return -1;
    } else if (c === 46) {
      if (digits === 0 || dots === 3) return -1;
      value = value * 256 + octet;
      octet = 0;
      digits = 0;
      dots++;
    } else if (c === 47) {
      break;
    } else {
      return -1;
    }
  }
  if (digits === 0 || dots !== 3) return -1;
  value = value * 256 + octet;
  let prefix = 32;
  if (i < n) {
    // "/p": 1-2 digits, no leading zero, ≤ 31 ("/32" is not canonical), host bits clear.
    const left = n - i - 1;
    if (left < 1 || left > 2) return -1;
    const d0 = s.charCodeAt(i + 1) - 48;
    if (d0 < 0 || d0 > 9) return -1;
    prefix = d0;
    if (left === 2) {
      const d1 = s.charCodeAt(i + 2) - 48;
      if (d0 === 0 || d1 < 0 || d1 > 9) return -1;
      prefix = d0 * 10 + d1;
      if (prefix > 31) return -1;
    }
    if (value % 2 ** (32 - prefix) !== 0) return -1;
  }
  out[at] = value;
  return prefix;
}

/**
 * Reads an IPv6 address or network written with hex groups (no embedded IPv4, not IPv4-mapped, host bits
 * clear) into out[at..at+3] and its eight groups into g, and returns its prefix; or returns -1 (left to
 * parseTarget).
 */
function scanV6(s: string, out: Uint32Array, at: number, g: number[]): number {
  const n = s.length;
  if (n < 2 || n > 43) return -1;
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
        if (count === 8) return -1;
        g[count++] = group;
        group = 0;
        digits = 0;
        if (i + 1 < n && s.charCodeAt(i + 1) === 58) {
          if (gap >= 0) return -1;
          gap = count;
          i++;
        } else if (i + 1 === n) return -1; // trailing single ":"
      } else if (i === 0 && n > 1 && s.charCodeAt(1) === 58) {
        gap = 0;
        i++;
      } else {
        return -1;
      }
      continue;
    } else if (c === 47) break;
    else return -1;
    if (++digits > 4) return -1;
    group = group * 16 + d;
  }
  if (digits > 0) {
    if (count === 8) return -1;
    g[count++] = group;
  }
  if (gap < 0 ? count !== 8 : count > 7) return -1;
  if (gap >= 0) {
    // Move the groups after "::" to the end and zero the gap.
    const tail = count - gap;
    for (let k = 0; k < tail; k++) g[7 - k] = g[count - 1 - k]!;
    for (let k = gap; k < 8 - tail; k++) g[k] = 0;
  }
  if (g[0] === 0 && g[1] === 0 && g[2] === 0 && g[3] === 0 && g[4] === 0 && g[5] === 0xffff) return -1;

  let prefix = 128;
  if (i < n) {
    const left = n - i - 1;
    if (left < 1 || left > 3) return -1;
    prefix = 0;
    for (let k = i + 1; k < n; k++) {
      const d = s.charCodeAt(k) - 48;
      if (d < 0 || d > 9 || (k === i + 1 && d === 0 && left > 1)) return -1;
      prefix = prefix * 10 + d;
    }
    if (prefix > 128) return -1;
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
    return -1;
  }
  out[at] = w0;
  out[at + 1] = w1;
  out[at + 2] = w2;
  out[at + 3] = w3;
  return prefix;
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

/** Merge output: growable columns, and per entry the input text it repeats (mergeTargets) or NO_REF. */
class Output {
  size = 0;
  words: Uint32Array;
  prefixes: Uint8Array;
  refs: Int32Array | null;

  constructor(
    private readonly wordsPer: 1 | 4,
    capacity: number,
    withRefs: boolean,
  ) {
    this.words = new Uint32Array(capacity * wordsPer);
    this.prefixes = new Uint8Array(capacity);
    this.refs = withRefs ? new Int32Array(capacity) : null;
  }

  /** Slot of a new entry; the caller writes its words. */
  push(prefix: number, ref: number): number {
    if (this.size === this.prefixes.length) {
      this.words = grow(this.words, new Uint32Array(this.words.length * 2));
      this.prefixes = grow(this.prefixes, new Uint8Array(this.prefixes.length * 2));
      if (this.refs) this.refs = grow(this.refs, new Int32Array(this.refs.length * 2));
    }
    this.prefixes[this.size] = prefix;
    if (this.refs) this.refs[this.size] = ref;
    return this.size++;
  }

  get ranges(): FamilyRanges {
    return {
      size: this.size,
      words: this.words.subarray(0, this.size * this.wordsPer),
      prefixes: this.prefixes.subarray(0, this.size),
    };
  }
}

/** sortV4's ping-pong buffers, kept between calls (sortV4 is synchronous, so one set per thread is enough). */
const scratch = {
  keys: [new Uint32Array(0), new Uint32Array(0)] as [Uint32Array, Uint32Array],
  prefixes: [new Uint8Array(0), new Uint8Array(0)] as [Uint8Array, Uint8Array],
};

/**
 * The IPv4 columns sorted by start (the input is not changed; the result lives in scratch buffers that
 * the next call reuses, so the caller copies what it keeps): a stable LSD radix sort in
 * three passes of 11, 11 and 10 bits, whose 2048 buckets stay in cache; the sweep then reads memory in order.
 */
function sortV4(
  n: number,
  words: Uint32Array,
  prefixes: Uint8Array,
  refs: Int32Array | null,
): { keys: Uint32Array; prefixes: Uint8Array; refs: Int32Array | null } {
  if (scratch.keys[0].length < n) {
    // Grown once and kept: a rebuild every second would otherwise allocate and free ~10 MB at 1M targets
    // each time, which the allocator does not hand back to the system in one piece.
    const capacity = Math.ceil(n * 1.25);
    scratch.keys = [new Uint32Array(capacity), new Uint32Array(capacity)];
    scratch.prefixes = [new Uint8Array(capacity), new Uint8Array(capacity)];
  }
  const keyBuffers: [Uint32Array, Uint32Array] = [
    scratch.keys[0].subarray(0, n),
    scratch.keys[1].subarray(0, n),
  ];
  const prefixBuffers: [Uint8Array, Uint8Array] = [
    scratch.prefixes[0].subarray(0, n),
    scratch.prefixes[1].subarray(0, n),
  ];
  const refBuffers: [Int32Array, Int32Array] | null = refs ? [new Int32Array(n), new Int32Array(n)] : null;
  let keys = words.subarray(0, n);
  let pre = prefixes.subarray(0, n);
  let ref = refs ? refs.subarray(0, n) : null;
  const counts = new Uint32Array(2048);
  let target: 0 | 1 = 0;
  for (const shift of [0, 11, 22]) {
    counts.fill(0);
    for (let i = 0; i < n; i++) counts[(keys[i]! >>> shift) & 0x7ff]!++;
    let sum = 0;
    for (let d = 0; d < 2048; d++) {
      const c = counts[d]!;
      counts[d] = sum;
      sum += c;
    }
    const keysTo = keyBuffers[target];
    const prefixesTo = prefixBuffers[target];
    const refsTo = refBuffers ? refBuffers[target] : null;
    for (let i = 0; i < n; i++) {
      const key = keys[i]!;
      const at = counts[(key >>> shift) & 0x7ff]!++;
      keysTo[at] = key;
      prefixesTo[at] = pre[i]!;
      if (refsTo) refsTo[at] = ref![i]!;
    }
    keys = keysTo;
    pre = prefixesTo;
    ref = refsTo;
    target = target === 0 ? 1 : 0;
  }
  return { keys, prefixes: pre, refs: ref };
}

/** Addresses in an IPv4 network of each prefix length. */
const V4_SIZES = Float64Array.from({ length: 33 }, (_, prefix) => 2 ** (32 - prefix));

const OCTETS = Array.from({ length: 256 }, (_, i) => String(i));

function formatV4(value: number): string {
  return `${OCTETS[value >>> 24]!}.${OCTETS[(value >>> 16) & 0xff]!}.${OCTETS[(value >>> 8) & 0xff]!}.${OCTETS[value & 0xff]!}`;
}

function mergeV4(input: FamilyRanges, refs: Int32Array | null): Output {
  const n = input.size;
  const out = new Output(1, n + 32, refs !== null);
  if (n === 0) return out;
  const sorted = sortV4(n, input.words, input.prefixes, refs);
  const { keys: starts, prefixes } = sorted;
  const emitAlone = (i: number) => {
    out.words[out.push(prefixes[i]!, sorted.refs ? sorted.refs[i]! : NO_REF)] = starts[i]!;
  };

  let runStart = starts[0]!;
  let runEnd = runStart + V4_SIZES[prefixes[0]!]! - 1;
  // The only target in the current run, or -1 once a second one joined it.
  let alone = 0;
  for (let i = 1; i < n; i++) {
    const start = starts[i]!;
    const end = start + V4_SIZES[prefixes[i]!]! - 1;
    if (start > runEnd + 1) {
      if (alone >= 0) emitAlone(alone);
      else emitV4(runStart, runEnd, out);
      runStart = start;
      runEnd = end;
      alone = i;
    } else {
      if (end > runEnd) runEnd = end;
      alone = -1;
    }
  }
  if (alone >= 0) emitAlone(alone);
  else emitV4(runStart, runEnd, out);
  return out;
}

/** Appends the minimal CIDRs of [start, end]: at each step the largest aligned block that still fits. */
function emitV4(start: number, end: number, out: Output): void {
  while (start <= end) {
    // Alignment of start (trailing zero bits; all 32 for 0) and the size left, as host-bit counts.
    const aligned = start === 0 ? 32 : 31 - Math.clz32(start & -start);
    const left = end - start + 1;
    const fits = left >= TWO_32 ? 32 : 31 - Math.clz32(left);
    const hostBits = aligned < fits ? aligned : fits;
    out.words[out.push(32 - hostBits, NO_REF)] = start;
    start += 2 ** hostBits;
  }
}

function mergeV6(input: FamilyRanges, refs: Int32Array | null): Output {
  const n = input.size;
  const out = new Output(4, n + 32, refs !== null);
  if (n === 0) return out;
  const { words, prefixes } = input;
  const order = new Uint32Array(n);
  for (let i = 0; i < n; i++) order[i] = i;
  order.sort((a, b) => {
    for (let w = 0; w < 4; w++) {
      const d = words[4 * a + w]! - words[4 * b + w]!;
      if (d !== 0) return d;
    }
    return 0;
  });
  const emitAlone = (i: number) => {
    const slot = out.push(prefixes[i]!, refs ? refs[i]! : NO_REF);
    out.words.set(words.subarray(4 * i, 4 * i + 4), 4 * slot);
  };

  // The current run as words: its first target's start and its end so far.
  let runFirst = order[0]!;
  const runEnd = new Uint32Array(4);
  setEnd(runEnd, words, prefixes, runFirst);
  const end = new Uint32Array(4);
  let alone = runFirst;
  for (let k = 1; k < n; k++) {
    const i = order[k]!;
    if (startsAfterGap(words, i, runEnd)) {
      if (alone >= 0) emitAlone(alone);
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
  if (alone >= 0) emitAlone(alone);
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

function emitV6(start: bigint, end: bigint, out: Output): void {
  while (start <= end) {
    const aligned = start === 0n ? 128 : trailingZeros(start);
    const fits = bitLength(end - start + 1n) - 1;
    const hostBits = aligned < fits ? aligned : fits;
    const at = 4 * out.push(128 - hostBits, NO_REF);
    for (let w = 0; w < 4; w++) out.words[at + w] = Number((start >> BigInt(96 - 32 * w)) & 0xffffffffn);
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

/** The merged entries as texts: an entry that is one input target unchanged is that input's string. */
function textsOf(merged: Output, columns: Columns, family: 4 | 6): string[] {
  const out = new Array<string>(merged.size);
  const { words, prefixes, refs } = merged;
  for (let i = 0; i < merged.size; i++) {
    const ref = refs![i]!;
    out[i] = ref !== NO_REF ? columns.text(ref) : entryText(family, words, prefixes, i);
  }
  return out;
}

function entryText(family: 4 | 6, words: Uint32Array, prefixes: Uint8Array, i: number): string {
  const prefix = prefixes[i]!;
  if (family === 4) return prefix === 32 ? formatV4(words[i]!) : `${formatV4(words[i]!)}/${prefix}`;
  const address = formatWords(words, 4 * i);
  return prefix === 128 ? address : `${address}/${prefix}`;
}

/** RFC 5952 text of the IPv6 address in words[at..at+3]. */
function formatWords(words: Uint32Array, at: number): string {
  const g = SCRATCH_GROUPS;
  for (let w = 0; w < 4; w++) {
    g[2 * w] = words[at + w]! >>> 16;
    g[2 * w + 1] = words[at + w]! & 0xffff;
  }
  return formatGroups(g);
}

// ---------------------------------------------------------------------------------------------------------------
// Rendering into bytes: every format is ASCII, and writing digits into one buffer costs a fraction of
// building a million strings and joining them.

const DIGITS = new Uint8Array(256 * 3);
const DIGIT_COUNT = new Uint8Array(256);
for (let i = 0; i < 256; i++) {
  const text = String(i);
  DIGIT_COUNT[i] = text.length;
  for (let k = 0; k < text.length; k++) DIGITS[3 * i + k] = text.charCodeAt(k);
}

class ByteWriter {
  private buffer: Uint8Array;
  private length = 0;

  constructor(capacity: number) {
    this.buffer = new Uint8Array(Math.max(256, capacity));
  }

  private room(n: number): void {
    if (this.length + n <= this.buffer.length) return;
    let capacity = this.buffer.length * 2;
    while (capacity < this.length + n) capacity *= 2;
    this.buffer = grow(this.buffer, new Uint8Array(capacity));
  }

  ascii(text: string): void {
    this.room(text.length);
    for (let i = 0; i < text.length; i++) this.buffer[this.length++] = text.charCodeAt(i);
  }

  private octet(value: number): void {
    const count = DIGIT_COUNT[value]!;
    for (let k = 0; k < count; k++) this.buffer[this.length++] = DIGITS[3 * value + k]!;
  }

  /** Entry i of a family's columns, as its canonical CIDR text. */
  entry(family: 4 | 6, ranges: FamilyRanges, i: number): void {
    if (family === 6) {
      this.ascii(entryText(6, ranges.words, ranges.prefixes, i));
      return;
    }
    this.room(18);
    const value = ranges.words[i]!;
    this.octet(value >>> 24);
    this.buffer[this.length++] = 46;
    this.octet((value >>> 16) & 0xff);
    this.buffer[this.length++] = 46;
    this.octet((value >>> 8) & 0xff);
    this.buffer[this.length++] = 46;
    this.octet(value & 0xff);
    const prefix = ranges.prefixes[i]!;
    if (prefix !== 32) {
      this.buffer[this.length++] = 47;
      this.octet(prefix);
    }
  }

  /** Every entry, each as `before` + entry + `after`, with `between` between entries. */
  entries(family: 4 | 6, ranges: FamilyRanges, before: string, after: string, between = ''): void {
    for (let i = 0; i < ranges.size; i++) {
      if (i > 0 && between) this.ascii(between);
      if (before) this.ascii(before);
      this.entry(family, ranges, i);
      if (after) this.ascii(after);
    }
  }

  /** The bytes written; copied when the buffer is much larger, so a cached answer holds no slack. */
  bytes(): Uint8Array {
    return this.length < this.buffer.length * 0.75
      ? this.buffer.slice(0, this.length)
      : this.buffer.subarray(0, this.length);
  }
}

/**
 * A buffer that fits the entries with `perEntry` bytes of decoration each: IPv4 texts are measured exactly
 * (a million of them is a few milliseconds), IPv6 at their longest, so the buffer neither grows nor needs
 * a trimmed copy — at 1M entries either would briefly double the memory of the answer.
 */
function writerFor(v4: FamilyRanges | null, v6: FamilyRanges | null, perEntry: number): ByteWriter {
  let bytes = 512 + (v6?.size ?? 0) * (43 + perEntry);
  if (v4) {
    bytes += v4.size * (3 + perEntry);
    for (let i = 0; i < v4.size; i++) {
      const value = v4.words[i]!;
      const prefix = v4.prefixes[i]!;
      bytes +=
        DIGIT_COUNT[value >>> 24]! +
        DIGIT_COUNT[(value >>> 16) & 0xff]! +
        DIGIT_COUNT[(value >>> 8) & 0xff]! +
        DIGIT_COUNT[value & 0xff]! +
        (prefix === 32 ? 0 : 1 + DIGIT_COUNT[prefix]!);
    }
  }
  return new ByteWriter(bytes);
}

function familyLabel(options: RenderOptions): string {
  return options.family === 'all' ? 'all' : `ipv${options.family}`;
}

function countOf(v4: FamilyRanges | null, v6: FamilyRanges | null): number {
  return (v4?.size ?? 0) + (v6?.size ?? 0);
}

function header(v4: FamilyRanges | null, v6: FamilyRanges | null, options: RenderOptions): string {
  return (
    `# banbus blocklist\n` +
    `# generated: ${options.generatedAt.toISOString()}\n` +
    `# seq: ${options.seq}\n` +
    `# count: ${countOf(v4, v6)}\n` +
    `# family: ${familyLabel(options)}\n`
  );
}

function renderPlain(v4: FamilyRanges | null, v6: FamilyRanges | null, options: RenderOptions): Uint8Array {
  const out = writerFor(v4, v6, 1);
  out.ascii(header(v4, v6, options));
  if (v4) out.entries(4, v4, '', '\n');
  if (v6) out.entries(6, v6, '', '\n');
  return out.bytes();
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
  v4: FamilyRanges | null,
  v6: FamilyRanges | null,
  table: string,
  options: RenderOptions,
): Uint8Array {
  const sets: Array<[name: string, type: string, family: 4 | 6, list: FamilyRanges]> = [];
  if (v4) sets.push(['blocklist4', 'ipv4_addr', 4, v4]);
  if (v6) sets.push(['blocklist6', 'ipv6_addr', 6, v6]);
  const out = writerFor(v4, v6, 5);
  out.ascii(header(v4, v6, options));
  const declare = (withElements: boolean) => {
    out.ascii(`table inet ${table} {\n`);
    for (const [name, type, family, list] of sets) {
      if (withElements && list.size === 0) continue;
      out.ascii(`\tset ${name} {\n\t\ttype ${type}\n\t\tflags interval\n`);
      if (withElements) {
        out.ascii('\t\telements = {\n');
        out.entries(family, list, '\t\t\t', '', ',\n');
        out.ascii('\n\t\t}\n');
      }
      out.ascii('\t}\n');
    }
    out.ascii('}\n');
  };
  declare(false);
  for (const [name] of sets) out.ascii(`flush set inet ${table} ${name}\n`);
  if (sets.some(([, , , list]) => list.size > 0)) declare(true);
  return out.bytes();
}

/** maxelem we write unless a list needs more: a ceiling, not an allocation, and it must not change (below). */
export const IPSET_MAXELEM = 16_777_216;

/**
 * `ipset restore` input. maxelem stays at IPSET_MAXELEM unless the list needs more, because `create -exist`
 * fails when the set already exists with another maxelem. hash:net refuses /0, so a whole-family entry is
 * written as its two halves.
 */
function renderIpset(
  v4: FamilyRanges | null,
  v6: FamilyRanges | null,
  base: string,
  options: RenderOptions,
): Uint8Array {
  const out = writerFor(v4, v6, base.length + 6);
  out.ascii(header(v4, v6, options));
  const section = (name: string, family: 4 | 6, list: FamilyRanges) => {
    const maxelem = Math.max(IPSET_MAXELEM, nextPowerOfTwo(list.size * 2));
    out.ascii(
      `create ${name} hash:net family ${family === 4 ? 'inet' : 'inet6'} maxelem ${maxelem} -exist\n` +
        `flush ${name}\n`,
    );
    if (list.size === 1 && list.prefixes[0] === 0) {
      const halves = family === 4 ? ['0.0.0.0/1', '128.0.0.0/1'] : ['::/1', '8000::/1'];
      for (const half of halves) out.ascii(`add ${name} ${half}\n`);
      return;
    }
    out.entries(family, list, `add ${name} `, '\n');
  };
  if (v4) section(`${base}4`, 4, v4);
  if (v6) section(`${base}6`, 6, v6);
  return out.bytes();
}

function nextPowerOfTwo(n: number): number {
  let p = 1;
  while (p < n) p *= 2;
  return p;
}

/** `{"generated_at","seq","count","v4"?,"v6"?}`: CIDR texts need no JSON escaping. */
function renderJson(v4: FamilyRanges | null, v6: FamilyRanges | null, options: RenderOptions): Uint8Array {
  const out = writerFor(v4, v6, 3);
  out.ascii(
    `{"generated_at":${JSON.stringify(options.generatedAt.toISOString())},"seq":${options.seq},` +
      `"count":${countOf(v4, v6)}`,
  );
  if (v4) {
    out.ascii(',"v4":[');
    out.entries(4, v4, '"', '"', ',');
    out.ascii(']');
  }
  if (v6) {
    out.ascii(',"v6":[');
    out.entries(6, v6, '"', '"', ',');
    out.ascii(']');
  }
  out.ascii('}\n');
  return out.bytes();
}
