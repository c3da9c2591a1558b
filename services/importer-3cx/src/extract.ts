// Addresses out of free text (a 3CX event's parameters). Candidates are cut out loosely and then parsed
// strictly by @banbus/core's target parser, so "16.0.8.9.1", a MAC address or a clock time never becomes a
// ban, and IPv4-mapped IPv6 folds to IPv4 as everywhere else.
import { parseTarget, type Target } from '@banbus/core';

// Runs of the characters an IPv4 or IPv6 address is written with; everything else separates candidates.
const CANDIDATE = /[0-9A-Fa-f:.]+/g;

/** Addresses that can never be an attacker's: a ban would only hurt (or do nothing). */
function neverAttacker(target: Target): boolean {
  if (target.family === 4) {
    const first = Number(target.start >> 24n);
    return first === 0 || first === 127; // "this network", loopback
  }
  return target.start === 0n || target.start === 1n; // ::, ::1
}

function parseHost(text: string): Target | null {
  if (text.length < 2) return null;
  try {
    const target = parseTarget(text);
    return target.isHost ? target : null;
  } catch {
    return null;
  }
}

function tryParse(text: string): Target | null {
  // Sentence punctuation sticks to the end: "blocked 192.0.2.1." or "from 2001:db8::1:" (but "2001:db8::"
  // is an address as it stands, so the text is tried as it is first).
  return parseHost(text) ?? parseHost(text.replace(/[.:]+$/, ''));
}

/**
 * Every distinct single IPv4/IPv6 address in `text`, canonical, in order of first appearance.
 * Handles `a.b.c.d:port`, `[v6]:port` and `::ffff:a.b.c.d`; skips loopback and unspecified addresses.
 */
export function extractAddresses(text: string): string[] {
  const found: string[] = [];
  const seen = new Set<string>();
  const add = (target: Target | null) => {
    if (target === null || neverAttacker(target) || seen.has(target.text)) return;
    seen.add(target.text);
    found.push(target.text);
  };
  for (const match of text.matchAll(CANDIDATE)) {
    const candidate = match[0];
    const colons = candidate.split(':').length - 1;
    const dotted = candidate.includes('.');
    if (colons >= 2) {
      add(tryParse(candidate));
    } else if (colons === 1) {
      // host:port, or a label glued to an address ("IP:192.0.2.1"): try each side as IPv4.
      for (const part of candidate.split(':')) if (part.includes('.')) add(tryParse(part));
    } else if (dotted) {
      add(tryParse(candidate));
    }
  }
  return found;
}
