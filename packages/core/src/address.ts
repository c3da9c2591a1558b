// Ban targets: IPv4/IPv6 addresses and CIDR networks, parsed strictly and rendered canonically.
//
// Hand-written rather than delegated to node:net or ipaddr.js because the rules are stricter than theirs
// (no leading zeros in IPv4 octets, no zone ids, no host bits in networks, mapped IPv6 folded to IPv4) and
// ingest parses tens of thousands of addresses per second, so the common IPv4 case must not allocate much.

export type Family = 4 | 6;

/** A parsed, normalized ban target. */
export interface Target {
  /** Canonical text: a single address without prefix ("192.0.2.1", "2001:db8::1"), a network with it ("10.0.0.0/8"). */
  text: string;
  family: Family;
  prefix: number;
  /** True for /32 (v4) and /128 (v6). */
  isHost: boolean;
  /** First and last address as integers, for containment and merging. */
  start: bigint;
  end: bigint;
}

export class TargetError extends Error {
  override name = 'TargetError';
}

/** Longest accepted input after trimming; the longest valid target ("ffff:…:255.255.255.255/128") has 49. */
export const MAX_TARGET_LENGTH = 64;

/** Bits of each family. */
export const FAMILY_BITS: Readonly<Record<Family, number>> = { 4: 32, 6: 128 };

const WHITESPACE = /\s/;
const HEX_GROUP = /^[0-9a-fA-F]{1,4}$/;

/** The input as it may appear in an error message: quoted when odd, cut when long. */
function show(input: string): string {
  if (input.length <= MAX_TARGET_LENGTH && /^[\x21-\x7e]*[\x21-\x39\x3b-\x7e]$/.test(input)) return input;
  const cut = input.length > MAX_TARGET_LENGTH ? input.slice(0, MAX_TARGET_LENGTH) + '…' : input;
  return JSON.stringify(cut);
}

function fail(input: string, reason: string): never {
  throw new TargetError(`${show(input)}: ${reason}`);
}

/**
 * Parses an IPv4/IPv6 address or CIDR. IPv4-mapped IPv6 becomes IPv4. Rejects (TargetError with a
 * sentence): empty or over-long input, leading zeros in IPv4 octets, zone ids, host bits set in a CIDR.
 */
export function parseTarget(input: string): Target {
  if (typeof input !== 'string') throw new TargetError(`target must be a string, not ${typeof input}`);
  const s = input.trim();
  if (s.length === 0) throw new TargetError('target is empty');
  if (s.length > MAX_TARGET_LENGTH) {
    throw new TargetError(
      `target is longer than ${MAX_TARGET_LENGTH} characters (${s.length}); no IP address or network is`,
    );
  }

  const slash = s.indexOf('/');
  const addr = slash < 0 ? s : s.slice(0, slash);

  // IPv4 fast path: a valid dotted quad is already canonical, so the input text can be reused as is.
  const v4 = parseV4(addr);
  if (v4 >= 0) {
    if (slash < 0) {
      const start = BigInt(v4);
      return { text: s, family: 4, prefix: 32, isHost: true, start, end: start };
    }
    const prefix = parsePrefix(s, s.slice(slash + 1), 32);
    return v4Target(s, v4, prefix, prefix === 32 ? addr : s);
  }

  checkOddCharacters(s);
  if (slash >= 0 && s.indexOf('/', slash + 1) >= 0) fail(s, 'more than one "/"');
  if (addr.length === 0) fail(s, 'the address before "/" is missing');

  if (addr.indexOf(':') < 0) {
    if (addr.indexOf('.') < 0) fail(s, 'not an IPv4 or IPv6 address');
    fail(s, `not a valid IPv4 address: ${describeV4Error(addr)}`);
  }

  const groups = parseV6(addr);
  if (typeof groups === 'string') fail(s, `not a valid IPv6 address: ${groups}`);
  const prefix = slash < 0 ? 128 : parsePrefix(s, s.slice(slash + 1), 128);

  if (isMappedV4(groups)) {
    // ::ffff:a.b.c.d/p is the IPv4 network a.b.c.d/(p-96); shorter prefixes would reach outside ::ffff:0:0/96.
    if (prefix < 96) fail(s, `an IPv4-mapped network needs a prefix of /96 or longer, not /${prefix}`);
    const value = groups[6]! * 0x10000 + groups[7]!;
    return v4Target(s, value, prefix - 96);
  }

  const start = groupsToBigInt(groups);
  return v6Target(s, start, prefix);
}

/** parseTarget(input).text */
export function normalizeTarget(input: string): string {
  return parseTarget(input).text;
}

/** Canonical text of a PostgreSQL cidr/inet value ("192.0.2.1/32" → "192.0.2.1"). */
export function targetFromDb(value: string): string {
  return parseTarget(value).text;
}

/** True when a and b share at least one address. */
export function overlaps(a: Target, b: Target): boolean {
  return a.family === b.family && a.start <= b.end && b.start <= a.end;
}

/** True when outer covers every address of inner. */
export function contains(outer: Target, inner: Target): boolean {
  return outer.family === inner.family && outer.start <= inner.start && inner.end <= outer.end;
}

/** The network of the given prefix that contains target's first address (prefix ≤ target.prefix keeps it inside). */
export function networkOf(target: Target, prefix: number): Target {
  const bits = FAMILY_BITS[target.family];
  if (!Number.isInteger(prefix) || prefix < 0 || prefix > bits) {
    throw new TargetError(`prefix /${prefix} is out of range for IPv${target.family} (0-${bits})`);
  }
  const hostBits = BigInt(bits - prefix);
  const start = (target.start >> hostBits) << hostBits;
  return makeTarget(target.family, start, prefix);
}

/** The target for a network start (host bits must be clear) and prefix. */
export function makeTarget(family: Family, start: bigint, prefix: number): Target {
  const bits = FAMILY_BITS[family];
  const hostMask = (1n << BigInt(bits - prefix)) - 1n;
  const isHost = prefix === bits;
  const address = family === 4 ? formatV4(Number(start)) : formatV6(start);
  return {
    text: isHost ? address : `${address}/${prefix}`,
    family,
    prefix,
    isHost,
    start,
    end: start | hostMask,
  };
}

/** Dotted-quad text of a 32-bit value. */
export function formatV4(value: number): string {
  return `${Math.floor(value / 0x1000000) & 0xff}.${(value >>> 16) & 0xff}.${(value >>> 8) & 0xff}.${value & 0xff}`;
}

/** RFC 5952 text of a 128-bit value: lowercase, no leading zeros, the longest run (≥ 2) of zero groups as "::". */
export function formatV6(value: bigint): string {
  const groups = new Array<number>(8);
  for (let i = 7; i >= 0; i--) {
    groups[i] = Number(value & 0xffffn);
    value >>= 16n;
  }
  return formatGroups(groups);
}

// ---------------------------------------------------------------------------------------------------------------

function v4Target(input: string, value: number, prefix: number, text?: string): Target {
  const size = 2 ** (32 - prefix);
  const offset = value % size;
  if (offset !== 0) {
    fail(input, `host bits set; the network is ${formatV4(value - offset)}/${prefix}`);
  }
  const start = BigInt(value);
  const isHost = prefix === 32;
  return {
    text: text ?? (isHost ? formatV4(value) : `${formatV4(value)}/${prefix}`),
    family: 4,
    prefix,
    isHost,
    start,
    end: isHost ? start : BigInt(value + size - 1),
  };
}

function v6Target(input: string, start: bigint, prefix: number): Target {
  const hostMask = (1n << BigInt(128 - prefix)) - 1n;
  if ((start & hostMask) !== 0n) {
    fail(input, `host bits set; the network is ${formatV6(start & ~hostMask)}/${prefix}`);
  }
  const isHost = prefix === 128;
  const address = formatV6(start);
  return {
    text: isHost ? address : `${address}/${prefix}`,
    family: 6,
    prefix,
    isHost,
    start,
    end: start | hostMask,
  };
}

/** The 32-bit value of a strict dotted quad (4 decimal octets 0-255, no leading zeros), or -1. */
function parseV4(s: string): number {
  const n = s.length;
  if (n < 7 || n > 15) return -1;
  let value = 0;
  let octet = 0;
  let digits = 0;
  let dots = 0;
  for (let i = 0; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c === 46) {
      if (digits === 0 || dots === 3) return -1;
      value = value * 256 + octet;
      octet = 0;
      digits = 0;
      dots++;
    } else if (c >= 48 && c <= 57) {
      if (digits === 1 && octet === 0) return -1; // "0" followed by a digit: a leading zero
      octet = octet * 10 + (c - 48);
      if (++digits > 3 || octet > 255) return -1;
    } else {
      return -1;
    }
  }
  if (digits === 0 || dots !== 3) return -1;
  return value * 256 + octet;
}

/** Why parseV4 refused s (slow path, only for error messages). */
function describeV4Error(s: string): string {
  const parts = s.split('.');
  if (parts.length !== 4) return `it has ${parts.length} octets; an IPv4 address has 4`;
  for (const part of parts) {
    if (part === '') return 'an octet is empty';
    if (!/^[0-9]+$/.test(part)) return `octet "${part}" is not a decimal number`;
    if (part.length > 1 && part[0] === '0') {
      return `octet ${part} has a leading zero, which is ambiguous (octal or decimal)`;
    }
    if (Number(part) > 255) return `octet ${part} is above 255`;
  }
  return 'expected four decimal octets like 192.0.2.1';
}

/** The prefix after "/" as a number, rejecting signs, leading zeros and values above max. */
function parsePrefix(input: string, text: string, max: number): number {
  if (text === '') fail(input, 'the prefix after "/" is missing');
  if (!/^[0-9]+$/.test(text)) {
    if (WHITESPACE.test(text)) fail(input, 'whitespace inside a target is not allowed');
    if (/^[+-]/.test(text)) fail(input, `prefix /${text} must be a plain number without a sign`);
    fail(input, `prefix /${text} is not a number`);
  }
  if (text.length > 1 && text[0] === '0') fail(input, `prefix /${text} has a leading zero`);
  const prefix = text.length > 3 ? Infinity : Number(text);
  if (prefix > max) fail(input, `prefix /${text} is out of range (0-${max} for IPv${max === 32 ? 4 : 6})`);
  return prefix;
}

/** Rejects characters that no target may contain, with a reason more helpful than "not an address". */
function checkOddCharacters(s: string): void {
  if (WHITESPACE.test(s)) fail(s, 'whitespace inside a target is not allowed');
  if (s.indexOf('%') >= 0) fail(s, 'zone ids ("%eth0") are not allowed in a ban target');
  if (s.indexOf('[') >= 0 || s.indexOf(']') >= 0)
    fail(s, 'brackets are not allowed; write the address without [ ]');
}

/** The 8 groups of an IPv6 address, or a reason why it is not one. */
function parseV6(a: string): number[] | string {
  const gap = a.indexOf('::');
  let head: string[];
  let tail: string[];
  if (gap >= 0) {
    if (a.indexOf('::', gap + 1) >= 0) return '"::" may appear only once';
    head = gap === 0 ? [] : a.slice(0, gap).split(':');
    tail = gap + 2 === a.length ? [] : a.slice(gap + 2).split(':');
  } else {
    head = a.split(':');
    tail = [];
  }
  const headGroups = parseGroups(head, gap < 0);
  if (typeof headGroups === 'string') return headGroups;
  const tailGroups = parseGroups(tail, true);
  if (typeof tailGroups === 'string') return tailGroups;

  const count = headGroups.length + tailGroups.length;
  if (gap >= 0) {
    if (count > 7) return `it has ${count} groups besides "::"; at most 7 fit`;
    const zeros = new Array<number>(8 - count).fill(0);
    return headGroups.concat(zeros, tailGroups);
  }
  if (count !== 8) return `it has ${count} groups; an IPv6 address has 8 (or uses "::")`;
  return headGroups;
}

/** Hex groups (an IPv4 dotted quad may end the address when `endsAddress`), or a reason. */
function parseGroups(parts: string[], endsAddress: boolean): number[] | string {
  const out: number[] = [];
  for (let i = 0; i < parts.length; i++) {
    const part = parts[i]!;
    if (part.indexOf('.') >= 0) {
      if (!endsAddress || i !== parts.length - 1)
        return `an embedded IPv4 address (${part}) may only end the address`;
      const v4 = parseV4(part);
      if (v4 < 0) return `embedded IPv4 address ${part}: ${describeV4Error(part)}`;
      out.push(Math.floor(v4 / 0x10000), v4 & 0xffff);
    } else if (HEX_GROUP.test(part)) {
      out.push(parseInt(part, 16));
    } else if (part === '') {
      return 'a group is empty (a single ":" at the start or end, or ":::")';
    } else if (part.length > 4 && /^[0-9a-fA-F]+$/.test(part)) {
      return `group ${part} has more than 4 hex digits`;
    } else {
      return `group "${part}" is not hexadecimal`;
    }
  }
  return out;
}

function isMappedV4(g: number[]): boolean {
  return g[0] === 0 && g[1] === 0 && g[2] === 0 && g[3] === 0 && g[4] === 0 && g[5] === 0xffff;
}

function groupsToBigInt(g: number[]): bigint {
  const w0 = g[0]! * 0x10000 + g[1]!;
  const w1 = g[2]! * 0x10000 + g[3]!;
  const w2 = g[4]! * 0x10000 + g[5]!;
  const w3 = g[6]! * 0x10000 + g[7]!;
  return (BigInt(w0) << 96n) | (BigInt(w1) << 64n) | (BigInt(w2) << 32n) | BigInt(w3);
}

function formatGroups(g: number[]): string {
  // Longest run of zero groups, the first one on a tie; a single zero group is not compressed (RFC 5952 4.2.2).
  let bestStart = -1;
  let bestLength = 1;
  for (let i = 0; i < 8;) {
    if (g[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLength) {
      bestStart = i;
      bestLength = j - i;
    }
    i = j;
  }
  const hex = (from: number, to: number) =>
    g
      .slice(from, to)
      .map((x) => x.toString(16))
      .join(':');
  if (bestStart < 0) return hex(0, 8);
  return `${hex(0, bestStart)}::${hex(bestStart + bestLength, 8)}`;
}

/** Orders targets by family, then first address, then prefix (wider first): a network precedes what it contains. */
export function compareTargets(a: Target, b: Target): number {
  if (a.family !== b.family) return a.family - b.family;
  if (a.start !== b.start) return a.start < b.start ? -1 : 1;
  return a.prefix - b.prefix;
}
