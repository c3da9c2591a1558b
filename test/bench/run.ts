// `npm run bench [part …]`: runs the benchmarks, prints a table and writes it under test/bench/results/.
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { ROOT, type BenchRow } from './lib.js';
import { benchAggregator } from './aggregator.js';
import { benchApplier } from './applier.js';
import { benchBlocklist } from './blocklist.js';
import { benchConsole } from './console.js';
import { benchIngest, benchPersister } from './pipeline.js';

const PARTS: Record<string, () => Promise<BenchRow[]>> = {
  ingest: benchIngest,
  persister: benchPersister,
  blocklist: benchBlocklist,
  aggregator: benchAggregator,
  applier: benchApplier,
  console: benchConsole,
};

const wanted = process.argv.slice(2);
const unknown = wanted.filter((p) => !(p in PARTS));
if (unknown.length) {
  console.error(`unknown part ${unknown.join(', ')}; parts: ${Object.keys(PARTS).join(', ')}`);
  process.exit(2);
}
const parts = wanted.length ? wanted : Object.keys(PARTS);

const fmt = (n: number) => (n >= 100 ? Math.round(n).toLocaleString('en-US') : n.toFixed(2));

const rows: BenchRow[] = [];
for (const part of parts) {
  console.error(`bench: ${part} …`);
  rows.push(...(await PARTS[part]!()));
}

const header = '| part | measure | median | reference (same run) | ratio | target | met | runs |';
const lines = [
  header,
  '|---|---|---|---|---|---|---|---|',
  ...rows.map((r) =>
    [
      '',
      r.part,
      r.measure,
      `${fmt(r.value)} ${r.unit}`,
      r.reference ? `${r.reference.name}: ${fmt(r.reference.value)}` : '',
      r.reference ? (r.value / r.reference.value).toFixed(2) : '',
      r.target,
      r.pass ? 'yes' : 'NO',
      r.runs.map(fmt).join(', '),
      '',
    ]
      .join(' | ')
      .trim(),
  ),
];
const machine = `${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}, ${Math.round(totalmem() / 2 ** 30)} GiB, Node ${process.version}`;
const stamp = new Date().toISOString();
const text = `# banbus benchmarks\n\n${stamp} — ${machine}\n\n${lines.join('\n')}\n`;
console.log(text);
const dir = join(ROOT, 'test/bench/results');
mkdirSync(dir, { recursive: true });
// The full run is the one the docs quote; a part run alone is named after its parts.
const name = wanted.length ? parts.join('-') : 'all';
writeFileSync(join(dir, `${name}.md`), text);
writeFileSync(join(dir, `${name}.json`), JSON.stringify({ at: stamp, machine, rows }, null, 2) + '\n');
