import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';
import autocannon from 'autocannon';
import { waitFor } from '../harness/wait.js';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));

export interface BenchRow {
  part: string;
  measure: string;
  /** Median of the runs. */
  value: number;
  unit: string;
  /** The side-by-side reference measured in the same run, if the issue names one. */
  reference?: { name: string; value: number };
  target: string;
  pass: boolean;
  runs: number[];
}

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

/** Starts a TypeScript entry point of this repo in its own process (from source) and waits for /healthz. */
export async function startProcess(
  entry: string,
  args: string[],
  env: Record<string, string>,
  port: number,
  readyPath = '/readyz',
): Promise<ChildProcess> {
  const child = spawn(process.execPath, ['--import', 'tsx', '--conditions=banbus-source', entry, ...args], {
    cwd: ROOT,
    env: { ...process.env, LOG_LEVEL: 'warn', ...env },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  let exited = false;
  child.once('exit', () => (exited = true));
  await waitFor(
    async () => {
      if (exited) throw new Error(`${entry} exited before it was ready`);
      const res = await fetch(`http://127.0.0.1:${port}${readyPath}`).catch(() => undefined);
      return res?.ok;
    },
    { timeoutMs: 30_000, what: `${entry} on port ${port}` },
  );
  return child;
}

export async function stopProcess(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  await exited;
}

export interface LoadResult {
  requestsPerSecond: number;
  non2xx: number;
  errors: number;
  p50ms: number;
  p99ms: number;
}

/** Drives an HTTP endpoint with autocannon for `seconds`; returns the mean request rate. */
export async function load(options: {
  url: string;
  body: string;
  headers?: Record<string, string>;
  connections?: number;
  pipelining?: number;
  seconds?: number;
}): Promise<LoadResult> {
  const result = await autocannon({
    url: options.url,
    method: 'POST',
    body: options.body,
    headers: { 'content-type': 'application/json', ...options.headers },
    connections: options.connections ?? 50,
    pipelining: options.pipelining ?? 1,
    duration: options.seconds ?? 5,
  });
  return {
    requestsPerSecond: result.requests.average,
    non2xx: result.non2xx,
    errors: result.errors,
    p50ms: result.latency.p50,
    p99ms: result.latency.p99,
  };
}
