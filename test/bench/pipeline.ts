// Ingest and persister throughput, each next to its reference measured in the same run.
import amqp from 'amqplib';
import pg from 'pg';
import { PersisterEnvSchema, newReportId, parseEnv, type Report } from '@banbus/core';
import { Bus, topology } from '@banbus/bus';
import { HostRepository, createPool } from '@banbus/db';
import { createLogger, createRegistry, type Registry } from '@banbus/runtime';
import { startPersister } from '@banbus/persister';
import {
  amqpTestUrl,
  createTestDatabase,
  deleteNamespace,
  testNamespace,
  waitFor,
} from '../harness/index.js';
import { ROOT, freePort, load, median, startProcess, stopProcess, type BenchRow } from './lib.js';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5);
const LOAD_SECONDS = Number(process.env.BENCH_SECONDS ?? 5);

function ipv4(n: number): string {
  return `${(n >>> 24) & 255 || 11}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255 || 1}`;
}

export async function benchIngest(): Promise<BenchRow[]> {
  const db = await createTestDatabase();
  const url = await amqpTestUrl();
  const namespace = testNamespace();
  const pool = createPool(db.url, { max: 2 });
  const { token } = await new HostRepository(pool).add('bench', ['report', 'admin']);
  await pool.end();
  const connection = await amqp.connect(url);
  const channel = await connection.createChannel();
  const barePort = await freePort();
  const ingestPort = await freePort();
  const bare = await startProcess(
    'test/bench/servers/bare-express.ts',
    [],
    { PORT: String(barePort) },
    barePort,
  );
  const ingest = await startProcess(
    'packages/cli/src/bin.ts',
    ['run', 'ingest'],
    {
      DATABASE_URL: db.url,
      AMQP_URL: url,
      BANBUS_NAMESPACE: namespace,
      INGEST_PORT: String(ingestPort),
      BANBUS_LISTEN: '127.0.0.1',
      INGEST_RATE_LIMIT: '100000000',
      INGEST_RATE_BURST: '100000000',
    },
    ingestPort,
  );
  const persisterQueue = topology(namespace).persisterQueue;
  try {
    const single = JSON.stringify({ ip: '198.51.100.7', jail: 'sshd', bantime: 600 });
    const headers = { authorization: `Bearer ${token}` };
    const bareRuns: number[] = [];
    const ingestRuns: number[] = [];
    // Both servers warm up first (JIT, connection pools, token cache): the rounds measure steady state.
    await load({ url: `http://127.0.0.1:${barePort}/v1/reports`, body: single, seconds: 2 });
    await load({ url: `http://127.0.0.1:${ingestPort}/v1/reports`, body: single, headers, seconds: 2 });
    await channel.purgeQueue(persisterQueue);
    for (let round = 0; round < ROUNDS; round++) {
      const b = await load({
        url: `http://127.0.0.1:${barePort}/v1/reports`,
        body: single,
        seconds: LOAD_SECONDS,
      });
      const i = await load({
        url: `http://127.0.0.1:${ingestPort}/v1/reports`,
        body: single,
        headers,
        seconds: LOAD_SECONDS,
      });
      if (i.non2xx > 0 || i.errors > 0)
        throw new Error(`ingest answered ${i.non2xx} non-2xx, ${i.errors} errors`);
      bareRuns.push(b.requestsPerSecond);
      ingestRuns.push(i.requestsPerSecond);
      await channel.purgeQueue(persisterQueue);
    }
    const bareMedian = median(bareRuns);
    const ingestMedian = median(ingestRuns);

    const batchSize = 5000;
    const batch = JSON.stringify(
      Array.from({ length: batchSize }, (_, k) => ({ ip: ipv4(0x0b000000 + k), jail: 'sshd' })),
    );
    const batchRuns: number[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      const r = await load({
        url: `http://127.0.0.1:${ingestPort}/v1/reports`,
        body: batch,
        headers,
        connections: 4,
        seconds: LOAD_SECONDS,
      });
      if (r.non2xx > 0 || r.errors > 0)
        throw new Error(`ingest batch: ${r.non2xx} non-2xx, ${r.errors} errors`);
      batchRuns.push(r.requestsPerSecond * batchSize);
      await channel.purgeQueue(persisterQueue);
    }
    return [
      {
        part: 'ingest',
        measure: 'single reports (req/s)',
        value: ingestMedian,
        unit: 'req/s',
        reference: { name: 'bare express 5 JSON endpoint', value: bareMedian },
        target: '≥ 0.8 × reference',
        pass: ingestMedian >= 0.8 * bareMedian,
        runs: ingestRuns,
      },
      {
        part: 'ingest',
        measure: `batch of ${batchSize} (IPs/s)`,
        value: median(batchRuns),
        unit: 'IPs/s',
        target: '≥ 50,000',
        pass: median(batchRuns) >= 50_000,
        runs: batchRuns,
      },
    ];
  } finally {
    await stopProcess(ingest);
    await stopProcess(bare);
    await connection.close();
    await deleteNamespace(url, namespace);
    await db.drop();
  }
}

/** Raw `unnest` insert of report-shaped rows, `batch` rows per statement: the persister's floor. */
async function rawUnnest(databaseUrl: string, count: number, batch: number): Promise<number> {
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  await client.query(
    `CREATE TEMP TABLE raw_reports (id uuid PRIMARY KEY, action text, target cidr, host text, jail text,
       bantime integer, reported_at timestamptz)`,
  );
  const started = performance.now();
  for (let offset = 0; offset < count; offset += batch) {
    const n = Math.min(batch, count - offset);
    const ids = Array.from({ length: n }, () => newReportId());
    const targets = Array.from({ length: n }, (_, k) => ipv4(0x0c000000 + offset + k));
    await client.query(
      `INSERT INTO raw_reports (id, action, target, host, jail, bantime, reported_at)
       SELECT id, 'ban', target, 'bench', 'sshd', 600, now() FROM unnest($1::uuid[], $2::cidr[]) AS u(id, target)`,
      [ids, targets],
    );
  }
  const seconds = (performance.now() - started) / 1000;
  await client.end();
  return count / seconds;
}

/** Reports the persister committed, from its own counter (every outcome, duplicates included). */
async function appliedReports(registry: Registry): Promise<number> {
  const metric = registry.getSingleMetric('banbus_persister_reports_total');
  if (!metric) return 0;
  const { values } = await metric.get();
  return values.reduce((sum, v) => sum + v.value, 0);
}

/** Ban reports of distinct targets never seen before: every one creates a decision (the worst case). */
function newTargets(count: number, round: number): Report[] {
  const base = 0x0d000000 + round * count;
  const time = new Date().toISOString();
  return Array.from({ length: count }, (_, k) => ({
    id: newReportId(),
    action: 'ban',
    target: ipv4(base + k),
    host: 'bench',
    origin: 'fail2ban',
    jail: 'sshd',
    bantime: 600,
    time,
  }));
}

/**
 * A fleet's day: a quarter as many targets as reports, each reported by four hosts over the run (the
 * first report bans, the others extend the decision and add reporters), one in ten reports an unban.
 */
function repeatOffenders(count: number, round: number): Report[] {
  const targets = Math.max(1, Math.floor(count / 4));
  const base = 0x0e000000 + round * targets;
  const time = new Date().toISOString();
  return Array.from({ length: count }, (_, k) => {
    const host = `host-${Math.floor(k / targets) % 4}`;
    return {
      id: newReportId(),
      action: k % 10 === 9 ? 'unban' : 'ban',
      target: ipv4(base + ((k * 7919) % targets)),
      host,
      origin: 'fail2ban',
      jail: k % 3 === 0 ? 'postfix' : 'sshd',
      bantime: 600 + (k % 5) * 60,
      time,
    };
  });
}

export async function benchPersister(): Promise<BenchRow[]> {
  const db = await createTestDatabase();
  const url = await amqpTestUrl();
  const namespace = testNamespace();
  const count = Number(process.env.BENCH_PERSISTER_REPORTS ?? 50_000);
  const logger = createLogger({ level: 'warn' });
  const config = parseEnv(PersisterEnvSchema, {
    DATABASE_URL: db.url,
    AMQP_URL: url,
    BANBUS_NAMESPACE: namespace,
    PERSISTER_PORT: '0',
  });
  const pool = createPool(db.url, { max: 4 });
  const bus = await Bus.connect({ url, namespace, logger });
  const storedReports = async () => Number((await pool.query('SELECT count(*) AS n FROM reports')).rows[0].n);

  /** Fills the queue, then times one persister draining it into PostgreSQL; reports/s. */
  async function drain(reports: Report[]): Promise<number> {
    for (let k = 0; k < reports.length; k += 5000) await bus.publishReports(reports.slice(k, k + 5000));
    const before = await storedReports();
    const registry = createRegistry(false);
    const started = performance.now();
    const persister = await startPersister({ config, logger, registry, pool, bus });
    // The persister counts reports after their transaction committed. Watching that counter costs the
    // database nothing; polling count(*) every 25 ms took CPU from the very backend being measured.
    await waitFor(async () => (await appliedReports(registry)) >= reports.length, {
      timeoutMs: 300_000,
      intervalMs: 5,
      what: 'the persister to commit every report',
    });
    const rate = reports.length / ((performance.now() - started) / 1000);
    await persister.stop();
    const stored = (await storedReports()) - before;
    if (stored !== reports.length)
      throw new Error(`the persister stored ${stored} of ${reports.length} reports`);
    return rate;
  }

  const rawRuns: number[] = [];
  const newRuns: number[] = [];
  const mixRuns: number[] = [];
  try {
    // One unmeasured drain first: JIT, plan caches and the first pages of every table warm up.
    await drain(newTargets(10_000, 1000));
    for (let round = 0; round < ROUNDS; round++) {
      rawRuns.push(await rawUnnest(db.url, count, config.PERSISTER_BATCH_SIZE));
      newRuns.push(await drain(newTargets(count, round)));
    }
    // After the measured case, so that its tables grow exactly as they always did.
    for (let round = 0; round < ROUNDS; round++) mixRuns.push(await drain(repeatOffenders(count, round)));
  } finally {
    await bus.close();
    await pool.end();
    await deleteNamespace(url, namespace);
    await db.drop();
  }
  const value = median(newRuns);
  const mix = median(mixRuns);
  const reference = {
    name: `raw unnest insert, ${config.PERSISTER_BATCH_SIZE} rows/statement`,
    value: median(rawRuns),
  };
  return [
    {
      part: 'persister',
      measure: `reports/s (${count} queued, batch ${config.PERSISTER_BATCH_SIZE})`,
      value,
      unit: 'reports/s',
      reference,
      target: '≥ 20,000',
      pass: value >= 20_000,
      runs: newRuns,
    },
    {
      part: 'persister',
      measure: `reports/s, repeat offenders from 4 hosts (${count} queued)`,
      value: mix,
      unit: 'reports/s',
      reference,
      target: '≥ 20,000',
      pass: mix >= 20_000,
      runs: mixRuns,
    },
  ];
}

export { ROOT };
