#!/usr/bin/env node
// Runs every test file with node's test runner (TypeScript through tsx, workspace packages from source).
//   *.test.ts         run in parallel
//   *.serial.test.ts  run afterwards, one at a time: they stop and restart the shared broker or database
// Flags: --unit (only files without .int./.serial.), any other argument filters paths by substring.
import { spawnSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const args = process.argv.slice(2);
const unitOnly = args.includes('--unit');
const filters = args.filter((a) => !a.startsWith('--'));

function walk(dir, out) {
  for (const name of readdirSync(dir)) {
    if (name === 'node_modules' || name === 'dist' || name.startsWith('.')) continue;
    const path = join(dir, name);
    if (statSync(path).isDirectory()) walk(path, out);
    else if (name.endsWith('.test.ts')) out.push(relative(root, path));
  }
  return out;
}

let files = ['packages', 'services', 'test'].flatMap((d) => walk(join(root, d), [])).sort();
if (unitOnly) files = files.filter((f) => !/\.(int|serial)\.test\.ts$/.test(f));
if (filters.length) files = files.filter((f) => filters.some((s) => f.includes(s)));
const parallel = files.filter((f) => !f.endsWith('.serial.test.ts'));
const serial = files.filter((f) => f.endsWith('.serial.test.ts'));

const base = ['--import', 'tsx', '--conditions=banbus-source', '--test', '--test-reporter=spec'];
let failed = false;
for (const [group, concurrency] of [
  [parallel, 2],
  [serial, 1],
]) {
  if (group.length === 0) continue;
  const r = spawnSync(process.execPath, [...base, `--test-concurrency=${concurrency}`, ...group], {
    cwd: root,
    stdio: 'inherit',
    env: { ...process.env, NODE_ENV: 'test' },
  });
  if (r.status !== 0) failed = true;
}
if (files.length === 0) {
  console.error('no test files matched');
  process.exit(1);
}
process.exit(failed ? 1 : 0);
