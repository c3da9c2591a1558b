// Bench part 'applier': a 100k-decision snapshot into a fresh network namespace per backend, next to
// the bare tool loading the same list in the same run; report → applied latency on 20 dry-run appliers
// at 500 reports/s through the whole pipeline; the applier process's peak RSS.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import http from 'node:http';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Bus } from '@banbus/bus';
import { runCli } from '@banbus/cli';
import { parseEnv, RouteApplierEnvSchema, type ApplierBackendName } from '@banbus/core';
import { createLogger, createRegistry } from '@banbus/runtime';
import {
  Applier,
  DryRunBackend,
  HttpDecisionSource,
  IpsetBackend,
  NeverBlock,
  NftablesBackend,
  RouteBackend,
  startRouteApplier,
  type KernelBackend,
  type RouteApplierRunning,
} from '@banbus/route-applier';
import {
  amqpTestUrl,
  createTestDatabase,
  DecisionListener,
  deleteNamespace,
  testNamespace,
  waitFor,
} from '../harness/index.js';
import { createNetns, FakeAggregator, type Netns } from '../../services/route-applier/test/support.js';
import { ROOT, freePort, median, stopProcess, type BenchRow } from './lib.js';

const SIZE = Number(process.env.BENCH_APPLIER_SIZE ?? 100_000);
const RUNS = Number(process.env.BENCH_APPLIER_RUNS ?? 3);
const HOSTS = Number(process.env.BENCH_APPLIER_HOSTS ?? 20);
const RATE = Number(process.env.BENCH_APPLIER_RATE ?? 500);
const SECONDS = Number(process.env.BENCH_APPLIER_SECONDS ?? 10);
/** Measured windows of SECONDS each, one after the other on the same processes; the row is their median. */
const TRIALS = Number(process.env.BENCH_APPLIER_TRIALS ?? 3);
const logger = createLogger({ level: 'warn' });
const silent = createLogger({ level: 'silent' });

/** SIZE distinct addresses in 10.0.0.0/8, spread (an odd multiplier is a bijection modulo 2^24). */
function targets(): string[] {
  const out: string[] = [];
  for (let i = 1; i <= SIZE; i++) {
    const v = (i * 2654435761) % 2 ** 24;
    out.push(`10.${v >>> 16}.${(v >>> 8) & 255}.${v & 255}`);
  }
  return out;
}

function seconds(start: bigint): number {
  return Number(process.hrtime.bigint() - start) / 1e9;
}

/** The bare tool loading the same list into a fresh namespace: the reference. */
function bareLoad(backend: ApplierBackendName, list: string[], ns: Netns, dir: string): number {
  const file = join(dir, `${backend}.txt`);
  let command: string[];
  if (backend === 'route') {
    writeFileSync(file, list.map((t) => `route add blackhole ${t} proto 201`).join('\n') + '\n');
    command = ['ip', '-n', ns.name, '-batch', file];
  } else if (backend === 'ipset') {
    const lines = [
      'create banbus4 hash:net family inet hashsize 65536 maxelem 4194304',
      ...list.map((t) => `add banbus4 ${t}`),
    ];
    writeFileSync(file, lines.join('\n') + '\n');
    command = ['ip', 'netns', 'exec', ns.name, 'ipset', 'restore', '-f', file];
  } else {
    const lines = ['table inet banbus {', '  set v4 { type ipv4_addr; flags interval; }', '}'];
    for (let i = 0; i < list.length; i += 5000) {
      lines.push(`add element inet banbus v4 { ${list.slice(i, i + 5000).join(', ')} }`);
    }
    writeFileSync(file, lines.join('\n') + '\n');
    command = ['ip', 'netns', 'exec', ns.name, 'nft', '-f', file];
  }
  const start = process.hrtime.bigint();
  const r = spawnSync(command[0]!, command.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
  const took = seconds(start);
  if (r.status !== 0) throw new Error(`${command.join(' ')} failed: ${r.stderr.toString().slice(0, 300)}`);
  return took;
}

function backendFor(name: ApplierBackendName, ns: Netns): KernelBackend {
  if (name === 'route') return new RouteBackend({ type: 'blackhole', proto: 201, netns: ns.name, logger });
  if (name === 'ipset')
    return new IpsetBackend({ name: 'banbus', maxelem: 4_194_304, netns: ns.name, logger });
  return new NftablesBackend({ table: 'banbus', netns: ns.name, logger });
}

/** Our applier taking the snapshot from an aggregator over HTTP into a fresh namespace. */
async function applierLoad(name: ApplierBackendName, fake: FakeAggregator, ns: Netns): Promise<number> {
  const backend = backendFor(name, ns);
  await backend.init();
  const applier = new Applier({
    source: new HttpDecisionSource({ url: fake.url, timeoutMs: 60_000 }),
    backend,
    neverBlock: new NeverBlock([]),
    logger,
    guard: { min: 100, ratio: 0.1 },
    deltaMax: 200_000,
    retry: { minMs: 100, maxMs: 1000 },
  });
  const start = process.hrtime.bigint();
  applier.start();
  await applier.whenReady();
  const took = seconds(start);
  const held = (await backend.list()).size;
  await applier.stop();
  await backend.close();
  if (held !== SIZE) throw new Error(`${name}: the kernel holds ${held} entries, not ${SIZE}`);
  return took;
}

async function benchSnapshots(): Promise<BenchRow[]> {
  const list = targets();
  const fake = await new FakeAggregator().start();
  for (const t of list) fake.push('add', t);
  const dir = mkdtempSync(join(tmpdir(), 'banbus-bench-applier-'));
  const rows: BenchRow[] = [];
  const limits: Record<ApplierBackendName, number> = { route: 3, ipset: 1, nftables: 3, 'dry-run': 0 };
  const references: Record<ApplierBackendName, string> = {
    route: 'ip -batch',
    ipset: 'ipset restore',
    nftables: 'nft -f',
    'dry-run': '',
  };
  try {
    for (const name of ['route', 'ipset', 'nftables'] as const) {
      const ours: number[] = [];
      const bare: number[] = [];
      for (let run = 0; run < RUNS; run++) {
        for (const which of run % 2 ? (['bare', 'ours'] as const) : (['ours', 'bare'] as const)) {
          const ns = createNetns();
          try {
            if (which === 'bare') bare.push(bareLoad(name, list, ns, dir));
            else ours.push(await applierLoad(name, fake, ns));
          } finally {
            ns.remove();
          }
        }
      }
      const value = median(ours);
      rows.push({
        part: 'applier',
        measure: `${SIZE.toLocaleString('en-US')}-decision snapshot into a namespace, ${name} backend (HTTP snapshot → kernel)`,
        value,
        unit: 's',
        reference: { name: references[name], value: median(bare) },
        target: `≤ ${limits[name]} s`,
        pass: value <= limits[name],
        runs: ours,
      });
    }
  } finally {
    await fake.stop();
    rmSync(dir, { recursive: true, force: true });
  }
  return rows;
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

/** 20 dry-run appliers following the real pipeline; reports posted to ingest at RATE per second. */
async function benchLatency(): Promise<BenchRow[]> {
  const db = await createTestDatabase({ migrate: false });
  const amqpUrl = await amqpTestUrl();
  const namespace = testNamespace();
  const ingestPort = await freePort();
  const aggregatorPort = await freePort();
  const env = { DATABASE_URL: db.url, AMQP_URL: amqpUrl, BANBUS_NAMESPACE: namespace };
  // BENCH_CENTRAL_ARGS: node flags for the central process, e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof".
  const nodeFlags = process.env.BENCH_CENTRAL_ARGS?.split(' ').filter(Boolean) ?? [];
  const central = spawn(process.execPath, [...nodeFlags, 'packages/cli/bin/banbus.js', 'run', 'all'], {
    cwd: ROOT,
    env: {
      ...process.env,
      ...env,
      INGEST_PORT: String(ingestPort),
      AGGREGATOR_PORT: String(aggregatorPort),
      CONSOLE_PORT: '0',
      BANBUS_LISTEN: '127.0.0.1',
      INGEST_RATE_LIMIT: '100000',
      INGEST_RATE_BURST: '100000',
      LOG_LEVEL: 'warn',
    },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  const appliers: { running: RouteApplierRunning; bus: Bus }[] = [];
  let listener: DecisionListener | undefined;
  let agent: http.Agent | undefined;
  try {
    await waitFor(
      async () => (await fetch(`http://127.0.0.1:${ingestPort}/readyz`).catch(() => undefined))?.ok,
      {
        timeoutMs: 60_000,
        what: 'banbus run all',
      },
    );
    let token = '';
    const code = await runCli(['hosts', 'add', 'bench', '--scopes', 'report,read'], {
      env,
      out: (t) => void (token += t),
      err: (t) => void process.stderr.write(t),
    });
    if (code !== 0) throw new Error('banbus hosts add failed');
    token = token.trim();

    const posted = new Map<string, number>();
    const latencies: number[] = [];
    // When each change reaches the stream, seen from here: the pipeline's share of the latency.
    const onStream: number[] = [];
    // Timed as each message arrives: searching the listener's kept changes once per change (next()) cost
    // this process quadratic CPU over a run, time the appliers beside it waited for.
    listener = await DecisionListener.start(amqpUrl, namespace, {
      onChange: (change, at) => {
        const sent = posted.get(change.target);
        if (sent !== undefined && change.op === 'add') onStream.push(at - sent);
      },
    });
    for (let i = 0; i < HOSTS; i++) {
      const bus = await Bus.connect({
        url: amqpUrl,
        namespace,
        logger: silent,
        registry: createRegistry(false),
        // As banbus run route-applier connects.
        declares: 'own-queues',
      });
      const backend = new DryRunBackend(silent);
      backend.onWrite((adds, _dels, at) => {
        for (const t of adds) {
          const sent = posted.get(t);
          if (sent !== undefined) latencies.push(at - sent);
        }
      });
      const config = parseEnv(RouteApplierEnvSchema, {
        ...env,
        BANBUS_URL: `http://127.0.0.1:${aggregatorPort}`,
        BANBUS_TOKEN: token,
        APPLIER_HOST: `bench-${i}`,
        APPLIER_BACKEND: 'dry-run',
        APPLIER_PORT: '0',
        BANBUS_LISTEN: '127.0.0.1',
        LOG_LEVEL: 'silent',
      });
      const running = await startRouteApplier({
        config,
        logger: silent,
        registry: createRegistry(false),
        bus,
        backend,
        neverBlock: new NeverBlock([]),
      });
      appliers.push({ running, bus });
    }
    await waitFor(() => appliers.every((a) => a.running.ready()), {
      timeoutMs: 30_000,
      what: 'appliers ready',
    });

    // node:http with kept-alive connections: fetch (undici and its web streams) cost this process, which
    // also runs the 20 appliers, about a quarter of its CPU at 500 requests/s.
    agent = new http.Agent({ keepAlive: true, maxSockets: 32 });
    let n = 0;
    const post = (measure: boolean) => {
      n++;
      const target = `100.${64 + Math.floor(n / 65536)}.${(n >> 8) & 255}.${n & 255}`;
      if (measure) posted.set(target, performance.now());
      const body = JSON.stringify({ ip: target, jail: 'sshd', bantime: 3600 });
      http
        .request(
          {
            host: '127.0.0.1',
            port: ingestPort,
            path: '/v1/reports',
            method: 'POST',
            agent,
            headers: {
              authorization: `Bearer ${token}`,
              'content-type': 'application/json',
              'content-length': Buffer.byteLength(body),
            },
          },
          (res) => res.resume(),
        )
        .on('error', () => undefined)
        .end(body);
    };
    // Paced by the clock, not by a fixed sleep: every tick sends what is due since the start.
    const drive = async (secondsLong: number, measure: boolean) => {
      const start = performance.now();
      let sent = 0;
      while (performance.now() - start < secondsLong * 1000) {
        const due = Math.floor(((performance.now() - start) / 1000) * RATE);
        while (sent < due) {
          post(measure);
          sent++;
        }
        await new Promise((r) => setTimeout(r, 2));
      }
      return sent;
    };
    await drive(2, false); // warm-up
    // The machine's speed drifts from minute to minute (its IPC cost doubled within an hour once): several
    // windows, each a p50 and p99 of its own, and their median.
    const trials: { p50: number; p99: number; s50: number; s99: number }[] = [];
    let applied = 0;
    let expected = 0;
    for (let trial = 0; trial < TRIALS; trial++) {
      latencies.length = 0;
      onStream.length = 0;
      posted.clear();
      const measured = await drive(SECONDS, true);
      await waitFor(() => latencies.length >= measured * HOSTS, {
        timeoutMs: 30_000,
        what: `${measured * HOSTS} applied reports`,
      }).catch(() => undefined);
      applied += latencies.length;
      expected += measured * HOSTS;
      const sorted = [...latencies].sort((a, b) => a - b);
      const stream = [...onStream].sort((a, b) => a - b);
      trials.push({
        p50: percentile(sorted, 50),
        p99: percentile(sorted, 99),
        s50: percentile(stream, 50),
        s99: percentile(stream, 99),
      });
    }
    const complete = applied === expected;
    const what = `report → applied on ${HOSTS} dry-run appliers at ${RATE} reports/s, median of ${TRIALS} × ${SECONDS} s (${applied.toLocaleString('en-US')} of ${expected.toLocaleString('en-US')} applied)`;
    return ([50, 99] as const).map((p) => {
      const runs = trials.map((t) => (p === 50 ? t.p50 : t.p99));
      const value = median(runs);
      const limit = p === 50 ? 10 : 50;
      return {
        part: 'applier',
        measure: `${what}, p${p}`,
        value,
        unit: 'ms',
        reference: {
          name: 'report → change on the stream',
          value: median(trials.map((t) => (p === 50 ? t.s50 : t.s99))),
        },
        target: `≤ ${limit} ms`,
        pass: complete && value <= limit,
        runs,
      };
    });
  } finally {
    for (const a of appliers) {
      await a.running.stop().catch(() => undefined);
      await a.bus.close().catch(() => undefined);
    }
    await listener?.close().catch(() => undefined);
    agent?.destroy();
    await stopProcess(central);
    await deleteNamespace(
      amqpUrl,
      namespace,
      Array.from({ length: HOSTS }, (_, i) => `${namespace}.applier.bench-${i}`),
    ).catch(() => undefined);
    await db.drop();
  }
}

function rssMb(pid: number): { peak: number; now: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (key: string) => Number(new RegExp(`${key}:\\s+(\\d+)\\s+kB`).exec(status)?.[1] ?? NaN);
  return { peak: kb('VmHWM') / 1024, now: kb('VmRSS') / 1024 };
}

/** `banbus run route-applier` (built) holding a SIZE snapshot in a namespace, after live changes. */
async function benchRss(): Promise<BenchRow[]> {
  const amqpUrl = await amqpTestUrl();
  const namespace = testNamespace();
  const fake = await new FakeAggregator().start();
  const list = targets();
  for (const t of list) fake.push('add', t);
  const ns = createNetns();
  const port = await freePort();
  const bus = await Bus.connect({ url: amqpUrl, namespace, logger: silent, registry: createRegistry(false) });
  const child = spawn(process.execPath, ['packages/cli/bin/banbus.js', 'run', 'route-applier'], {
    cwd: ROOT,
    env: {
      ...process.env,
      AMQP_URL: amqpUrl,
      BANBUS_NAMESPACE: namespace,
      BANBUS_URL: fake.url,
      APPLIER_HOST: 'rss',
      // As deploy/systemd/banbus-route-applier.service runs it.
      NODE_OPTIONS: '--max-semi-space-size=1',
      APPLIER_NETNS: ns.name,
      APPLIER_PORT: String(port),
      BANBUS_LISTEN: '127.0.0.1',
      LOG_LEVEL: 'warn',
    },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  try {
    const status = async () =>
      (await fetch(`http://127.0.0.1:${port}/v1/status`)
        .then((r) => r.json())
        .catch(() => undefined)) as { ready: boolean; seq: number } | undefined;
    await waitFor(async () => (await status())?.ready, { timeoutMs: 120_000, what: 'the applier process' });
    // Live changes on top: up to 10,000 adds and deletes in messages of 100.
    const live = Math.min(10_000, Math.floor(list.length / 100) * 100);
    for (let i = 0; i < live; i += 100) {
      const changes = [];
      for (let k = i; k < i + 100; k++) {
        changes.push(k % 2 ? fake.push('del', list[k]!) : fake.push('add', `100.64.${k >> 8}.${k & 255}`));
      }
      await bus.publishDecisionChanges(changes);
    }
    await waitFor(async () => (await status())?.seq === fake.seq, {
      timeoutMs: 60_000,
      what: 'the live changes',
    });
    const rss = rssMb(child.pid!);
    return [
      {
        part: 'applier',
        measure: `peak RSS of banbus run route-applier as the systemd unit runs it (route backend, ${SIZE.toLocaleString('en-US')}-decision snapshot + ${live.toLocaleString('en-US')} live changes)`,
        value: rss.peak,
        unit: 'MB',
        target: '≤ 80 MB',
        pass: rss.peak <= 80,
        runs: [rss.peak, rss.now],
      },
    ];
  } finally {
    await stopProcess(child);
    await bus.close();
    await fake.stop();
    ns.remove();
    await deleteNamespace(amqpUrl, namespace, [`${namespace}.applier.rss`]).catch(() => undefined);
  }
}

/** BENCH_APPLIER_ONLY=snapshot,latency,rss runs a subset. */
const ONLY = (process.env.BENCH_APPLIER_ONLY ?? 'snapshot,latency,rss').split(',');

export async function benchApplier(): Promise<BenchRow[]> {
  // The RSS and latency parts run the built CLI.
  execFileSync(process.execPath, [`${ROOT}/node_modules/typescript/bin/tsc`, '-b'], {
    cwd: ROOT,
    stdio: 'inherit',
  });
  const rows: BenchRow[] = [];
  if (ONLY.includes('snapshot')) rows.push(...(await benchSnapshots()));
  if (ONLY.includes('latency')) rows.push(...(await benchLatency()));
  if (ONLY.includes('rss')) rows.push(...(await benchRss()));
  return rows;
}
