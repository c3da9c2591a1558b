// Bench part "blocklist": full rebuild of the merged blocklist at 1M IPv4 + 100k IPv6 decisions, the way
// the aggregator's worker does it, next to `iprange` (Debian package iprange) on the same IPv4 addresses in
// the same run. The service's own memory is measured by the aggregator part.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  formatV4,
  formatV6,
  mergeRanges,
  mergeTargets,
  renderRanges,
  scanTarget,
  TARGET_V6,
  type FamilyRanges,
} from '@banbus/core';
import { median, type BenchRow } from './lib.js';

const V4_COUNT = 1_000_000;
const V6_COUNT = 100_000;
const RUNS = 3;

/** mulberry32: a small seeded PRNG, so every run merges the same addresses. */
function prng(seed: number): () => number {
  let s = seed | 0;
  return () => {
    s = (s + 0x6d2b79f5) | 0;
    let t = Math.imul(s ^ (s >>> 15), 1 | s);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return (t ^ (t >>> 14)) >>> 0;
  };
}

/**
 * Random single-address decisions in canonical text, as the aggregator holds them. Each goes through JSON.parse
 * because the aggregator's texts arrive parsed from PostgreSQL rows and AMQP messages: flat strings, not the
 * nested cons strings that template literals leave behind (much slower to join into the rendered list).
 */
export function randomTargets(v4Count = V4_COUNT, v6Count = V6_COUNT): { v4: string[]; v6: string[] } {
  const next = prng(20250101);
  const v4 = new Array<string>(v4Count);
  for (let i = 0; i < v4Count; i++) v4[i] = flat(formatV4(next()));
  const v6 = new Array<string>(v6Count);
  for (let i = 0; i < v6Count; i++) {
    // Global unicast (2000::/3), like real offenders.
    const high = (next() & 0x1fffffff) | 0x20000000;
    v6[i] = flat(
      formatV6((BigInt(high) << 96n) | (BigInt(next()) << 64n) | (BigInt(next()) << 32n) | BigInt(next())),
    );
  }
  return { v4, v6 };
}

const flat = (text: string) => JSON.parse(`"${text}"`) as string;

function timed(run: () => unknown): number {
  const t0 = performance.now();
  run();
  return performance.now() - t0;
}

/** The targets as the aggregator holds them: typed columns per family. */
function columnsOf(texts: readonly string[]): { v4: FamilyRanges; v6: FamilyRanges } {
  const make = (wordsPer: 1 | 4, n: number) => ({
    size: 0,
    words: new Uint32Array(n * wordsPer),
    prefixes: new Uint8Array(n),
  });
  const v4 = make(1, texts.length);
  const v6 = make(4, texts.length);
  const key = new Uint32Array(4);
  for (const text of texts) {
    const scanned = scanTarget(text, key);
    const columns = scanned & TARGET_V6 ? v6 : v4;
    const per = scanned & TARGET_V6 ? 4 : 1;
    columns.words.set(key.subarray(0, per), columns.size * per);
    columns.prefixes[columns.size++] = scanned & 0xff;
  }
  return { v4, v6 };
}

/** What the aggregator's worker does per build: merge the columns, render the plain list. */
const rebuild = (columns: { v4: FamilyRanges; v6: FamilyRanges }) =>
  renderRanges(mergeRanges(columns.v4, columns.v6), {
    family: 'all',
    format: 'plain',
    generatedAt: new Date(),
    seq: 1,
  });

function iprangeRun(file: string): number {
  const t0 = performance.now();
  // The merged list as CIDRs on stdout (merge is iprange's default mode; --optimize names it).
  const r = spawnSync('iprange', ['--optimize', file], { stdio: ['ignore', 'ignore', 'pipe'] });
  const ms = performance.now() - t0;
  if (r.error || r.status !== 0) {
    throw new Error(
      `iprange failed (${r.error?.message ?? r.stderr.toString()}); apt-get install -y iprange`,
    );
  }
  return ms;
}

export async function benchBlocklist(): Promise<BenchRow[]> {
  const { v4, v6 } = randomTargets();
  const dir = mkdtempSync(join(tmpdir(), 'banbus-bench-blocklist-'));
  try {
    const file = join(dir, 'v4.txt');
    writeFileSync(file, v4.join('\n') + '\n');
    const all = columnsOf(v4.concat(v6));

    const iprange: number[] = [];
    const mergeV4: number[] = [];
    const fileToText: number[] = [];
    const rebuilds: number[] = [];
    // Interleaved, so every side sees the same machine load.
    for (let r = 0; r < RUNS; r++) {
      iprange.push(iprangeRun(file));
      mergeV4.push(timed(() => mergeTargets(v4)));
      // What iprange does end to end: read the file, parse, merge, write CIDR text.
      fileToText.push(timed(() => rebuild(columnsOf(readFileSync(file, 'utf8').trimEnd().split('\n')))));
      rebuilds.push(timed(() => rebuild(all)));
    }

    const reference = { name: 'iprange --optimize (1M IPv4)', value: median(iprange) };
    const rows: BenchRow[] = [
      {
        part: 'blocklist',
        measure: `full rebuild as the aggregator does it (merge columns + render plain), ${V4_COUNT.toLocaleString('en-US')} IPv4 + ${V6_COUNT.toLocaleString('en-US')} IPv6`,
        value: median(rebuilds),
        unit: 'ms',
        reference,
        target: '≤ 1.5 × iprange',
        pass: median(rebuilds) <= 1.5 * reference.value,
        runs: rebuilds,
      },
      {
        part: 'blocklist',
        measure: 'IPv4 file → merged plain text (read, parse, merge, render)',
        value: median(fileToText),
        unit: 'ms',
        reference,
        target: '≤ 1.5 × iprange',
        pass: median(fileToText) <= 1.5 * reference.value,
        runs: fileToText,
      },
      {
        part: 'blocklist',
        measure: `mergeTargets (texts in, texts out), ${V4_COUNT.toLocaleString('en-US')} random IPv4`,
        value: median(mergeV4),
        unit: 'ms',
        reference,
        target: '≤ 1.5 × iprange',
        pass: median(mergeV4) <= 1.5 * reference.value,
        runs: mergeV4,
      },
    ];
    return rows;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
