// Bench part "blocklist": full rebuild of the merged blocklist at 1M IPv4 + 100k IPv6 decisions, next to
// `iprange` (Debian package iprange) on the same IPv4 addresses in the same run, and the peak RSS of a
// separate process doing the whole rebuild.
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { formatV4, formatV6, mergeTargets, renderBlocklist } from '@banbus/core';
import { ROOT, median, type BenchRow } from './lib.js';

const V4_COUNT = 1_000_000;
const V6_COUNT = 100_000;
const RUNS = 3;
const RSS_BUDGET_MB = 300;

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

const plain = (list: { v4: string[]; v6: string[] }) =>
  renderBlocklist(list, { family: 'all', format: 'plain', generatedAt: new Date(), seq: 1 });

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

    const iprange: number[] = [];
    const mergeV4: number[] = [];
    const fileToText: number[] = [];
    const rebuild: number[] = [];
    // Interleaved, so both sides see the same machine load.
    for (let r = 0; r < RUNS; r++) {
      iprange.push(iprangeRun(file));
      mergeV4.push(timed(() => mergeTargets(v4)));
      // What iprange does end to end: read the file, merge, write CIDR text.
      fileToText.push(timed(() => plain(mergeTargets(readFileSync(file, 'utf8').trimEnd().split('\n')))));
    }
    const all = v4.concat(v6);
    for (let r = 0; r < RUNS; r++) rebuild.push(timed(() => plain(mergeTargets(all))));

    const reference = { name: 'iprange --optimize', value: median(iprange) };
    const rss = await childPeakRss();
    const rows: BenchRow[] = [
      {
        part: 'blocklist',
        measure: `mergeTargets, ${V4_COUNT.toLocaleString('en-US')} random IPv4`,
        value: median(mergeV4),
        unit: 'ms',
        reference,
        target: '≤ 1.5 × iprange',
        pass: median(mergeV4) <= 1.5 * reference.value,
        runs: mergeV4,
      },
      {
        part: 'blocklist',
        measure: 'IPv4 file → merged plain text (read, split, merge, render)',
        value: median(fileToText),
        unit: 'ms',
        reference,
        target: '≤ 1.5 × iprange',
        pass: median(fileToText) <= 1.5 * reference.value,
        runs: fileToText,
      },
      {
        part: 'blocklist',
        measure: `full rebuild (merge + plain render), ${V4_COUNT.toLocaleString('en-US')} IPv4 + ${V6_COUNT.toLocaleString('en-US')} IPv6`,
        value: median(rebuild),
        unit: 'ms',
        target: '≤ 1,000 ms',
        pass: median(rebuild) <= 1000,
        runs: rebuild,
      },
      {
        part: 'blocklist',
        measure: 'peak RSS, compiled code holding 1.1M decision targets and rebuilding (VmHWM)',
        value: rss,
        unit: 'MB',
        target: `≤ ${RSS_BUDGET_MB} MB`,
        pass: rss <= RSS_BUDGET_MB,
        runs: [rss],
      },
    ];
    return rows;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Peak RSS (VmHWM, MB) of a fresh Node process that creates the decisions and rebuilds the plain list, running
 * the compiled @banbus/core (dist, built first) as `banbus run` does, so tsx's own memory is not counted.
 */
async function childPeakRss(): Promise<number> {
  const tsc = join(ROOT, 'node_modules/typescript/bin/tsc');
  const build = spawnSync(process.execPath, [tsc, '-b', 'packages/core'], { cwd: ROOT, stdio: 'inherit' });
  if (build.status !== 0) throw new Error('tsc -b packages/core failed');
  const child = spawn(process.execPath, ['--input-type=module', '-e', RSS_CHILD], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => (out += chunk));
  const code = await new Promise<number | null>((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', resolve);
  });
  if (code !== 0) throw new Error(`blocklist RSS child exited with ${code}`);
  const { peakMb } = JSON.parse(out.trim().split('\n').pop()!) as { peakMb: number };
  return peakMb;
}

// The same decisions as randomTargets() (mulberry32, same seed), in plain JavaScript for a process without tsx.
const RSS_CHILD = `
import { readFileSync } from 'node:fs';
import { formatV4, formatV6, mergeTargets, renderBlocklist } from '@banbus/core';
let s = 20250101;
const next = () => {
  s = (s + 0x6d2b79f5) | 0;
  let t = Math.imul(s ^ (s >>> 15), 1 | s);
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
  return (t ^ (t >>> 14)) >>> 0;
};
const flat = (text) => JSON.parse('"' + text + '"');
const targets = [];
for (let i = 0; i < ${V4_COUNT}; i++) targets.push(flat(formatV4(next())));
for (let i = 0; i < ${V6_COUNT}; i++) {
  const high = (next() & 0x1fffffff) | 0x20000000;
  targets.push(flat(formatV6((BigInt(high) << 96n) | (BigInt(next()) << 64n) | (BigInt(next()) << 32n) | BigInt(next()))));
}
const list = mergeTargets(targets);
const text = renderBlocklist(list, { family: 'all', format: 'plain', generatedAt: new Date(), seq: 1 });
const kb = Number(/^VmHWM:\\s+(\\d+) kB$/m.exec(readFileSync('/proc/self/status', 'utf8'))[1]);
console.log(JSON.stringify({ entries: list.v4.length + list.v6.length, bytes: text.length, peakMb: Math.round(kb / 1024) }));
`;
