// The aggregator at fleet scale: 1M IPv4 + 100k IPv6 decisions loaded, then the time from one new
// decision on the stream to the list served over HTTP, and the service's peak RSS after it also served
// the full lists and the decision snapshot. Runs the built
// service (dist) in its own process, as production does, so tsx's overhead is not counted.
import { spawn, execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import pg from 'pg';
import { parse as parseYaml } from 'yaml';
import { Bus } from '@banbus/bus';
import { createLogger } from '@banbus/runtime';
import {
  amqpTestUrl,
  createTestDatabase,
  deleteNamespace,
  testNamespace,
  waitFor,
} from '../harness/index.js';
import { ROOT, freePort, median, stopProcess, type BenchRow } from './lib.js';

const V4 = Number(process.env.BENCH_AGGREGATOR_V4 ?? 1_000_000);
const V6 = Number(process.env.BENCH_AGGREGATOR_V6 ?? 100_000);
const CHANGES = 7;

function peakRssMb(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = Number(/VmHWM:\s+(\d+)\s+kB/.exec(status)?.[1] ?? NaN);
  return kb / 1024;
}

export async function benchAggregator(): Promise<BenchRow[]> {
  execFileSync(process.execPath, [`${ROOT}/node_modules/typescript/bin/tsc`, '-b'], {
    cwd: ROOT,
    stdio: 'inherit',
  });
  const db = await createTestDatabase();
  const url = await amqpTestUrl();
  const namespace = testNamespace();
  const client = new pg.Client({ connectionString: db.url });
  await client.connect();
  // Distinct pseudo-random addresses: multiplying by an odd constant modulo 2^32 is a bijection.
  await client.query(
    `INSERT INTO decisions (target, origin, first_seen, last_seen, expires_at, reporters, ban_count, reason)
     SELECT set_masklen('0.0.0.0'::inet + ((g::bigint * 2654435761) % 4294967296), 32)::cidr, 'fail2ban',
            now(), now(), NULL, 1, 1, 'sshd'
     FROM generate_series(1, $1::int) g`,
    [V4],
  );
  await client.query(
    `INSERT INTO decisions (target, origin, first_seen, last_seen, expires_at, reporters, ban_count, reason)
     SELECT set_masklen('2001:db8::'::inet + (g::bigint * 65537), 128)::cidr, 'fail2ban', now(), now(), NULL, 1, 1, 'sshd'
     FROM generate_series(1, $1::int) g`,
    [V6],
  );
  const base = V4 + V6;
  await client.query('UPDATE decision_seq SET last = $1', [base]);
  await client.query('UPDATE decision_relay SET published_seq = $1', [base]);

  const port = await freePort();
  const child = spawn(process.execPath, ['packages/cli/bin/banbus.js', 'run', 'aggregator'], {
    cwd: ROOT,
    env: {
      ...process.env,
      // As docker-compose.yml runs it.
      NODE_OPTIONS: composeNodeOptions('aggregator'),
      DATABASE_URL: db.url,
      AMQP_URL: url,
      BANBUS_NAMESPACE: namespace,
      AGGREGATOR_PORT: String(port),
      BANBUS_LISTEN: '127.0.0.1',
      AGGREGATOR_ANONYMOUS: '127.0.0.0/8',
      LOG_LEVEL: 'warn',
    },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  const bus = await Bus.connect({ url, namespace, logger: createLogger({ level: 'warn' }) });
  const probe = `http://127.0.0.1:${port}/v1/blocklist.txt?family=6&max=1&part=1`;
  const servedSeq = async (): Promise<number> => {
    const res = await fetch(probe).catch(() => undefined);
    if (!res?.ok) return -1;
    await res.arrayBuffer();
    return Number(res.headers.get('x-banbus-seq') ?? -1);
  };
  try {
    const startedAt = performance.now();
    await waitFor(async () => (await servedSeq()) >= base, {
      timeoutMs: 300_000,
      intervalMs: 100,
      what: 'the aggregator to serve its first build',
    });
    const firstBuildSeconds = (performance.now() - startedAt) / 1000;

    const latencies: number[] = [];
    for (let i = 1; i <= CHANGES; i++) {
      const seq = base + i;
      const target = `198.18.${i}.1`;
      await client.query(
        `WITH d AS (INSERT INTO decisions (target, origin, first_seen, last_seen, expires_at, reporters, ban_count, reason)
                    VALUES ($1, 'fail2ban', now(), now(), NULL, 1, 1, 'sshd'))
         INSERT INTO decision_log (seq, op, target) VALUES ($2, 'add', $1)`,
        [target, seq],
      );
      await client.query('UPDATE decision_seq SET last = $1', [seq]);
      const sent = performance.now();
      await bus.publishDecisionChanges([{ seq, op: 'add', target, expires_at: null, reason: 'sshd' }]);
      await waitFor(async () => (await servedSeq()) >= seq, {
        timeoutMs: 30_000,
        intervalMs: 2,
        what: `seq ${seq} served`,
      });
      latencies.push((performance.now() - sent) / 1000);
    }
    const rssBuilt = peakRssMb(child.pid!);
    // What firewalls and appliers fetch, so the second peak includes serving them: the whole plain and
    // nftables lists and the full decision snapshot, each read to the end.
    const origin = `http://127.0.0.1:${port}`;
    for (const path of ['/v1/blocklist.txt', '/v1/blocklist.txt?format=nftables', '/v1/decisions']) {
      const res = await fetch(origin + path);
      if (!res.ok) throw new Error(`GET ${path}: ${res.status}`);
      await res.arrayBuffer();
    }
    const rss = peakRssMb(child.pid!);
    const latency = median(latencies);
    return [
      {
        part: 'aggregator',
        measure: `first build served at start (${V4.toLocaleString('en-US')} IPv4 + ${V6.toLocaleString('en-US')} IPv6)`,
        value: firstBuildSeconds,
        unit: 's',
        target: 'informational',
        pass: true,
        runs: [firstBuildSeconds],
      },
      {
        part: 'aggregator',
        measure: 'one new decision → served list',
        value: latency,
        unit: 's',
        target: '≤ 1 s',
        pass: latency <= 1,
        runs: latencies,
      },
      {
        part: 'aggregator',
        measure: 'peak RSS of the service (snapshot loaded, 7 rebuilds)',
        value: rssBuilt,
        unit: 'MB',
        target: '≤ 300 MB',
        pass: rssBuilt <= 300,
        runs: [rssBuilt],
      },
      {
        part: 'aggregator',
        measure: 'peak RSS after also serving the full plain and nftables lists and the decision snapshot',
        value: rss,
        unit: 'MB',
        target: '≤ 300 MB',
        pass: rss <= 300,
        runs: [rss],
      },
    ];
  } finally {
    await stopProcess(child);
    await bus.close();
    await client.end();
    await deleteNamespace(url, namespace);
    await db.drop();
  }
}

/** The NODE_OPTIONS docker-compose.yml gives a service (empty when it sets none). */
function composeNodeOptions(service: string): string {
  const compose = parseYaml(readFileSync(`${ROOT}/docker-compose.yml`, 'utf8')) as {
    services: Record<string, { environment?: Record<string, string> }>;
  };
  return compose.services[service]?.environment?.NODE_OPTIONS ?? '';
}
