// The console's ban list at fleet scale: 1M decisions (each with an active ban) bulk-loaded with
// generate_series, then the admin API's first page, a keyset page half-way down, an address search that
// finds the covering network, and filtered first pages — each next to the bare SQL through pg in the same
// run, and OFFSET for the deep page to show what keyset pagination saves. The console runs in this
// process (its HTTP answer includes the jails and hosts of every row, which the bare SELECT does not).
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import { ConsoleEnvSchema, parseEnv } from '@banbus/core';
import { Bus } from '@banbus/bus';
import { createPool, HostRepository } from '@banbus/db';
import { createLogger, createRegistry } from '@banbus/runtime';
import { encodeCursor, startConsole } from '@banbus/console';
import { amqpTestUrl, createTestDatabase, deleteNamespace, testNamespace } from '../harness/index.js';
import { median, type BenchRow } from './lib.js';

const SIZE = Number(process.env.BENCH_CONSOLE_DECISIONS ?? 1_000_000);
const RUNS = Number(process.env.BENCH_CONSOLE_RUNS ?? 21);
/** "Answers in well under a second": a page a human waits for. */
const TARGET_MS = 250;

async function time(fn: () => Promise<void>, runs = RUNS): Promise<number[]> {
  await fn(); // warm: plan cache, connections, buffers
  const out: number[] = [];
  for (let i = 0; i < runs; i++) {
    const start = performance.now();
    await fn();
    out.push(performance.now() - start);
  }
  return out;
}

export async function benchConsole(): Promise<BenchRow[]> {
  const db = await createTestDatabase();
  const amqpUrl = await amqpTestUrl();
  const namespace = testNamespace();
  const client = new pg.Client({ connectionString: db.url });
  await client.connect();
  const logger = createLogger({ level: 'warn' });
  let pool: pg.Pool | undefined;
  let bus: Bus | undefined;
  let stopConsole: (() => Promise<void>) | undefined;
  try {
    const loadStart = performance.now();
    // Distinct pseudo-random IPv4 addresses (multiplying by an odd constant modulo 2^32 is a bijection),
    // last seen over 30 days, 1% manual; plus 1,000 /24 networks in 100.64.0.0/10 for address searches.
    await client.query(
      `INSERT INTO decisions (target, origin, first_seen, last_seen, expires_at, reporters, ban_count, reason)
       SELECT set_masklen('0.0.0.0'::inet + ((g::bigint * 2654435761) % 4294967296), 32)::cidr,
              CASE WHEN g % 100 = 0 THEN 'manual' ELSE 'fail2ban' END,
              now() - interval '31 days', now() - (g % 2592000) * interval '1 second',
              now() + interval '7 days', 1, 1, 'sshd'
         FROM generate_series(1, $1::int) g
       UNION ALL
       SELECT ('100.' || (64 + g / 256) || '.' || (g % 256) || '.0/24')::cidr, 'manual',
              now() - interval '1 day', now() - interval '1 hour', NULL, 1, 1, 'scanner network'
         FROM generate_series(0, 999) g
       ON CONFLICT DO NOTHING`,
      [SIZE],
    );
    await client.query(
      `INSERT INTO active_bans (target, host, jail, origin, report_id, banned_at, expires_at)
       SELECT target, 'web' || (abs(hashtext(target::text)) % 50),
              (ARRAY['sshd', 'postfix', 'nginx', 'dovecot'])[1 + abs(hashtext(target::text)) % 4],
              origin, gen_random_uuid(), last_seen, expires_at
         FROM decisions`,
    );
    await client.query('VACUUM ANALYZE decisions');
    await client.query('VACUUM ANALYZE active_bans');
    const loadSeconds = (performance.now() - loadStart) / 1000;
    const { rows: counted } = await client.query<{ n: string }>('SELECT count(*) AS n FROM decisions');
    const total = Number(counted[0]!.n);
    console.error(`bench console: ${total} decisions loaded in ${loadSeconds.toFixed(1)} s`);

    pool = createPool(db.url, { logger, max: 4 });
    bus = await Bus.connect({ url: amqpUrl, namespace, logger });
    const config = parseEnv(ConsoleEnvSchema, {
      DATABASE_URL: db.url,
      AMQP_URL: amqpUrl,
      BANBUS_NAMESPACE: namespace,
      CONSOLE_PORT: '0',
      BANBUS_LISTEN: '127.0.0.1',
      LOG_LEVEL: 'warn',
    });
    const running = await startConsole({ config, logger, registry: createRegistry(false), pool, bus });
    stopConsole = () => running.stop();
    const base = `http://127.0.0.1:${running.port}/v1/admin`;
    const { token } = await new HostRepository(pool).add('bench', ['read']);
    const get = async (path: string) => {
      const res = await fetch(base + path, { headers: { authorization: `Bearer ${token}` } });
      const body = (await res.json()) as { items?: unknown[] };
      if (res.status !== 200) throw new Error(`${path}: ${res.status} ${JSON.stringify(body)}`);
      return body;
    };
    const bare =
      (sql: string, params: unknown[] = []) =>
      async () => {
        await client.query(sql, params);
      };

    // The row half-way down the default order, and the cursor the API would have handed out there.
    const { rows: middle } = await client.query<{ target: string; key: string }>(
      `SELECT host(target) AS target, (extract(epoch FROM last_seen) * 1000000)::bigint::text AS key
         FROM decisions ORDER BY last_seen DESC, target DESC OFFSET $1 LIMIT 1`,
      [Math.floor(total / 2)],
    );
    const mid = middle[0]!;
    const cursor = encodeCursor({ s: 'last_seen', o: 'desc', k: mid.key, t: mid.target });
    const deep = (await get(`/decisions?limit=50&cursor=${cursor}`)) as { items: { target: string }[] };
    if (deep.items.length !== 50) throw new Error('the deep page is not full');
    const address = '100.64.200.77';
    const found = (await get(`/decisions?target=${address}`)) as { items: { target: string }[] };
    if (!found.items.some((i) => i.target === '100.64.200.0/24'))
      throw new Error(`the address search did not find 100.64.200.0/24: ${JSON.stringify(found)}`);

    const measures: { measure: string; api: string; sql: string; params?: unknown[] }[] = [
      {
        measure: 'first page (50, newest first)',
        api: '/decisions?limit=50',
        sql: 'SELECT target, last_seen FROM decisions ORDER BY last_seen DESC, target DESC LIMIT 50',
      },
      {
        measure: `keyset page ${Math.floor(total / 2).toLocaleString('en-US')} rows deep`,
        api: `/decisions?limit=50&cursor=${cursor}`,
        sql: `SELECT target, last_seen FROM decisions
               WHERE (last_seen, target) < ('epoch'::timestamptz + $1::bigint * interval '1 microsecond', $2::cidr)
               ORDER BY last_seen DESC, target DESC LIMIT 50`,
        params: [mid.key, mid.target],
      },
      {
        measure: 'address search (covering CIDR)',
        api: `/decisions?target=${address}`,
        sql: `SELECT target, last_seen FROM decisions WHERE target >>= $1::inet
               ORDER BY last_seen DESC, target DESC LIMIT 50`,
        params: [address],
      },
      {
        measure: 'first page, jail filter',
        api: '/decisions?limit=50&jail=dovecot',
        sql: `SELECT target, last_seen FROM decisions d WHERE EXISTS (SELECT 1 FROM active_bans a
               WHERE a.target = d.target AND a.jail = 'dovecot') ORDER BY last_seen DESC, target DESC LIMIT 50`,
      },
      {
        measure: 'first page, origin manual',
        api: '/decisions?limit=50&origin=manual',
        sql: `SELECT target, last_seen FROM decisions WHERE origin = 'manual'
               ORDER BY last_seen DESC, target DESC LIMIT 50`,
      },
      {
        measure: 'first page, host filter',
        api: '/decisions?limit=50&host=web7',
        sql: `SELECT target, last_seen FROM decisions d WHERE EXISTS (SELECT 1 FROM active_bans a
               WHERE a.target = d.target AND a.host = 'web7') ORDER BY last_seen DESC, target DESC LIMIT 50`,
      },
    ];

    const rows: BenchRow[] = [];
    for (const m of measures) {
      const apiRuns = await time(async () => {
        await get(m.api);
      });
      const sqlRuns = await time(bare(m.sql, m.params ?? []));
      const value = median(apiRuns);
      rows.push({
        part: 'console',
        measure: `${m.measure}, admin API at ${total.toLocaleString('en-US')} decisions`,
        value,
        unit: 'ms',
        reference: { name: 'bare SELECT … LIMIT through pg', value: median(sqlRuns) },
        target: `< ${TARGET_MS} ms`,
        pass: value < TARGET_MS,
        runs: apiRuns,
      });
    }

    // What keyset pagination avoids: the same deep page with OFFSET reads and drops every row before it.
    const offsetRuns = await time(
      bare(
        'SELECT target, last_seen FROM decisions ORDER BY last_seen DESC, target DESC OFFSET $1 LIMIT 50',
        [Math.floor(total / 2)],
      ),
      5,
    );
    rows.push({
      part: 'console',
      measure: `the same deep page with OFFSET (bare SQL, for comparison)`,
      value: median(offsetRuns),
      unit: 'ms',
      target: 'informative',
      pass: true,
      runs: offsetRuns,
    });

    const overviewRuns = await time(async () => {
      running.queries.invalidate();
      await running.queries.overview();
    }, 5);
    rows.push({
      part: 'console',
      measure: 'overview computed (counts, 24h chart, top jails/hosts), shared 1 s by every viewer',
      value: median(overviewRuns),
      unit: 'ms',
      target: '< 1000 ms',
      pass: median(overviewRuns) < 1000,
      runs: overviewRuns,
    });
    return rows;
  } finally {
    await stopConsole?.().catch(() => undefined);
    await bus?.close().catch(() => undefined);
    await pool?.end().catch(() => undefined);
    await client.end().catch(() => undefined);
    await deleteNamespace(amqpUrl, namespace).catch(() => undefined);
    await db.drop();
  }
}
