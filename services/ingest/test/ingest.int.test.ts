// Ingest against the real PostgreSQL and RabbitMQ: tokens from HostRepository, reports read back off
// `<ns>.persister`. Own database and namespace, so it runs beside other test files.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { IngestEnvSchema, parseEnv, type IngestEnv } from '@banbus/core';
import { createLogger, createRegistry, type Registry, type Running } from '@banbus/runtime';
import { Bus } from '@banbus/bus';
import { AllowlistRepository, HostRepository, createPool } from '@banbus/db';
import type pg from 'pg';
import {
  amqpTestUrl,
  createTestDatabase,
  deleteNamespace,
  testNamespace,
  waitFor,
  type TestDatabase,
} from '../../../test/harness/index.js';
import { startIngest } from '../src/index.js';
import { QueueReader } from './queue-reader.js';

const logger = createLogger({ level: process.env.TEST_LOG_LEVEL ?? 'silent' });
const MAX_BATCH = 50;
const UUID = '7d4e3b1a-2c5f-4e8a-9b6d-1f0e2d3c4b5a';

let db: TestDatabase;
let amqpUrl: string;
let ns: string;
let pool: pg.Pool;
let bus: Bus;
let registry: Registry;
let ingest: Running & { port: number };
let reader: QueueReader;
const tokens: Record<'report' | 'admin' | 'read' | 'revoked' | 'limited', string> = {
  report: '',
  admin: '',
  read: '',
  revoked: '',
  limited: '',
};

function config(overrides: Record<string, string> = {}): IngestEnv {
  return parseEnv(IngestEnvSchema, {
    DATABASE_URL: db.url,
    AMQP_URL: amqpUrl,
    BANBUS_NAMESPACE: ns,
    BANBUS_LISTEN: '127.0.0.1',
    INGEST_PORT: '0',
    INGEST_MAX_BATCH: String(MAX_BATCH),
    INGEST_RATE_LIMIT: '100000',
    INGEST_RATE_BURST: '100000',
    ...overrides,
  });
}

interface Call {
  method?: 'GET' | 'POST';
  path?: string;
  /** A token name, or null for no Authorization header. */
  token?: keyof typeof tokens | null;
  authorization?: string;
  json?: unknown;
  form?: Record<string, string>;
  raw?: string;
  contentType?: string;
  port?: number;
}

async function call(c: Call): Promise<Response> {
  const headers: Record<string, string> = {};
  const token = c.token === undefined ? 'report' : c.token;
  if (c.authorization !== undefined) headers.authorization = c.authorization;
  else if (token !== null) headers.authorization = `Bearer ${tokens[token]}`;
  let body: string | undefined;
  if (c.json !== undefined) {
    body = JSON.stringify(c.json);
    headers['content-type'] = 'application/json';
  } else if (c.form !== undefined) {
    body = new URLSearchParams(c.form).toString();
    headers['content-type'] = 'application/x-www-form-urlencoded';
  } else if (c.raw !== undefined) {
    body = c.raw;
  }
  if (c.contentType !== undefined) headers['content-type'] = c.contentType;
  const method = c.method ?? (body === undefined && c.path?.startsWith('/fail2ban.php') ? 'GET' : 'POST');
  return fetch(`http://127.0.0.1:${c.port ?? ingest.port}${c.path ?? '/v1/reports'}`, {
    method,
    headers,
    body,
  });
}

function compat(params: Record<string, string>): string {
  return `/fail2ban.php?${new URLSearchParams(params).toString()}`;
}

before(async () => {
  db = await createTestDatabase();
  amqpUrl = await amqpTestUrl();
  ns = testNamespace();
  pool = createPool(db.url, { logger });
  registry = createRegistry(false);
  bus = await Bus.connect({ url: amqpUrl, namespace: ns, logger, registry });
  const hosts = new HostRepository(pool);
  tokens.report = (await hosts.add('web1', ['report'])).token;
  tokens.admin = (await hosts.add('ops', ['admin'])).token;
  tokens.read = (await hosts.add('dashboard', ['read'])).token;
  tokens.revoked = (await hosts.add('retired', ['report'])).token;
  tokens.limited = (await hosts.add('noisy', ['report'])).token;
  await hosts.revoke('retired');
  await new AllowlistRepository(pool).add({ network: '203.0.113.0/24', comment: 'office' });
  ingest = await startIngest({ config: config(), logger, registry, pool, bus });
  reader = await QueueReader.open(amqpUrl, bus.topology.persisterQueue);
  await waitFor(async () => (await fetch(`http://127.0.0.1:${ingest.port}/readyz`)).status === 200, {
    what: 'ready',
  });
});

after(async () => {
  await ingest?.stop();
  await reader?.close();
  await bus?.close();
  await pool?.end();
  if (amqpUrl && ns) await deleteNamespace(amqpUrl, ns);
  await db?.drop();
});

describe('accepted reports', () => {
  test('a JSON report → 202 after the broker confirmed; host comes from the token, not the body', async () => {
    const res = await call({
      json: {
        ip: '192.0.2.10',
        jail: 'sshd',
        bantime: 600,
        failures: 5,
        matches: 'Failed password',
        host: 'forged',
        id: UUID,
      },
    });
    assert.equal(res.status, 202);
    assert.deepEqual(await res.json(), { accepted: 1, ids: [UUID] });
    const [m] = await reader.take(1);
    assert.equal(m!.report.host, 'web1');
    assert.equal(m!.report.target, '192.0.2.10');
    assert.equal(m!.report.action, 'ban');
    assert.equal(m!.report.jail, 'sshd');
    assert.equal(m!.report.bantime, 600);
    assert.equal(m!.report.failures, 5);
    assert.equal(m!.report.origin, 'fail2ban');
    assert.equal(m!.messageId, UUID);
    assert.equal(m!.routingKey, 'report.ban');
    assert.ok(m!.persistent, 'persistent message');
  });

  test('an array of 3 → 3 messages with the returned ids, in order', async () => {
    const res = await call({
      token: 'admin',
      json: [
        { ip: '192.0.2.11' },
        { ip: '2001:db8::11', action: 'unban' },
        { ip: '198.51.100.0/24', jail: 'recidive' },
      ],
    });
    assert.equal(res.status, 202);
    const body = (await res.json()) as { accepted: number; ids: string[] };
    assert.equal(body.accepted, 3);
    const got = await reader.take(3);
    assert.deepEqual(
      got.map((m) => [m.report.id, m.report.target, m.report.action, m.report.host]),
      [
        [body.ids[0], '192.0.2.11', 'ban', 'ops'],
        [body.ids[1], '2001:db8::11', 'unban', 'ops'],
        [body.ids[2], '198.51.100.0/24', 'ban', 'ops'],
      ],
    );
  });

  test('form-encoded fields (curl -d) work', async () => {
    const res = await call({
      form: { ip: '::ffff:192.0.2.12', jail: 'postfix-sasl', bantime: '-1', time: '1732000000.5' },
    });
    assert.equal(res.status, 202);
    const [m] = await reader.take(1);
    assert.equal(m!.report.target, '192.0.2.12');
    assert.equal(m!.report.bantime, -1);
    assert.equal(m!.report.time, '2024-11-19T07:06:40.500Z');
    assert.equal(m!.report.host, 'web1');
  });

  test('GET /fail2ban.php (old setup) → 200 "OK"; add → ban, delete → unban', async () => {
    const add = await call({
      token: null,
      path: compat({
        token: tokens.report,
        action: 'add',
        source: 'asterisk',
        reason: 'sip scan',
        ip: '192.0.2.13',
      }),
    });
    assert.equal(add.status, 200);
    assert.match(add.headers.get('content-type') ?? '', /^text\/plain/);
    assert.equal((await add.text()).trim(), 'OK');
    const del = await call({
      token: null,
      path: compat({ token: tokens.report, action: 'delete', source: 'asterisk', ip: '192.0.2.13' }),
    });
    assert.equal(del.status, 200);
    const [a, d] = await reader.take(2);
    assert.deepEqual(
      [a!.report.action, a!.report.jail, a!.report.reason, a!.report.host],
      ['ban', 'asterisk', 'sip scan', 'web1'],
    );
    assert.deepEqual([d!.report.action, d!.report.target], ['unban', '192.0.2.13']);
  });

  test('an unban of an allowlisted address is accepted (it changes nothing, but must not fail fail2ban)', async () => {
    const res = await call({ json: { ip: '203.0.113.9', action: 'unban' } });
    assert.equal(res.status, 202);
    await reader.take(1);
  });
});

interface Bad extends Call {
  name: string;
  status: number;
  field: string;
  reason?: 'too-broad' | 'allowlisted';
}

const big = 'a'.repeat(2 * 1024 * 1024 + 10);
const BAD: Bad[] = [
  { name: 'missing ip', json: { jail: 'sshd' }, status: 400, field: 'ip' },
  { name: 'empty ip', json: { ip: '' }, status: 400, field: 'ip' },
  { name: 'garbage ip', json: { ip: '999.1.2.3' }, status: 400, field: 'ip' },
  { name: 'ip as number', json: { ip: 3221225985 }, status: 400, field: 'ip' },
  { name: 'host bits set in a CIDR', token: 'admin', json: { ip: '10.0.0.1/8' }, status: 400, field: 'ip' },
  {
    name: '0.0.0.0/0 (admin) is too broad',
    token: 'admin',
    json: { ip: '0.0.0.0/0' },
    status: 422,
    field: 'ip',
    reason: 'too-broad',
  },
  { name: '0.0.0.0/0 (report token) is a network', json: { ip: '0.0.0.0/0' }, status: 403, field: 'ip' },
  {
    name: '10.0.0.0/8 (admin) is too broad',
    token: 'admin',
    json: { ip: '10.0.0.0/8' },
    status: 422,
    field: 'ip',
    reason: 'too-broad',
  },
  {
    name: '2001:db8::/16 (admin) is too broad',
    token: 'admin',
    json: { ip: '2001::/16' },
    status: 422,
    field: 'ip',
    reason: 'too-broad',
  },
  {
    name: 'allowlisted address',
    json: { ip: '203.0.113.7' },
    status: 422,
    field: 'ip',
    reason: 'allowlisted',
  },
  {
    name: 'network overlapping the allowlist (admin)',
    token: 'admin',
    json: { ip: '203.0.112.0/23' },
    status: 422,
    field: 'ip',
    reason: 'allowlisted',
  },
  { name: 'network with a report-only token', json: { ip: '198.51.100.0/24' }, status: 403, field: 'ip' },
  {
    name: 'origin manual with a report-only token',
    json: { ip: '192.0.2.50', origin: 'manual' },
    status: 403,
    field: 'origin',
  },
  {
    name: 'oversized JSON body',
    raw: `{"ip":"192.0.2.1","matches":"${big}"}`,
    contentType: 'application/json',
    status: 413,
    field: 'body',
  },
  {
    name: 'oversized form body',
    raw: `ip=192.0.2.1&matches=${'b'.repeat(70_000)}`,
    contentType: 'application/x-www-form-urlencoded',
    status: 413,
    field: 'body',
  },
  {
    name: 'array with one bad item',
    json: [{ ip: '192.0.2.51' }, { ip: 'nope' }, { ip: '192.0.2.52' }],
    status: 400,
    field: '[1].ip',
  },
  {
    name: 'array with an allowlisted item',
    token: 'admin',
    json: [{ ip: '192.0.2.53' }, { ip: '192.0.2.54' }, { ip: '203.0.113.1' }],
    status: 422,
    field: '[2].ip',
    reason: 'allowlisted',
  },
  { name: 'unknown action', json: { ip: '192.0.2.55', action: 'block' }, status: 400, field: 'action' },
  {
    name: 'fail2ban.php action on /v1/reports',
    json: { ip: '192.0.2.55', action: 'add' },
    status: 400,
    field: 'action',
  },
  {
    name: 'jail with control chars',
    json: { ip: '192.0.2.56', jail: 'ssh\r\nd' },
    status: 400,
    field: 'jail',
  },
  {
    name: 'jail over 64 chars',
    json: { ip: '192.0.2.57', jail: 'j'.repeat(65) },
    status: 400,
    field: 'jail',
  },
  {
    name: 'SQL in jail',
    json: { ip: '192.0.2.58', jail: "x'; DROP TABLE reports;--" },
    status: 400,
    field: 'jail',
  },
  {
    name: 'HTML in jail',
    json: { ip: '192.0.2.59', jail: '<img src=x onerror=alert(1)>' },
    status: 400,
    field: 'jail',
  },
  { name: "bantime 'abc'", json: { ip: '192.0.2.60', bantime: 'abc' }, status: 400, field: 'bantime' },
  { name: 'bantime -2', json: { ip: '192.0.2.61', bantime: -2 }, status: 400, field: 'bantime' },
  { name: "form bantime 'abc'", form: { ip: '192.0.2.62', bantime: 'abc' }, status: 400, field: 'bantime' },
  { name: 'failures -1', json: { ip: '192.0.2.63', failures: -1 }, status: 400, field: 'failures' },
  {
    name: 'matches over 1000 chars',
    json: { ip: '192.0.2.64', matches: 'm'.repeat(1001) },
    status: 400,
    field: 'matches',
  },
  { name: 'time garbage', json: { ip: '192.0.2.65', time: 'last tuesday' }, status: 400, field: 'time' },
  { name: 'id not a uuid', json: { ip: '192.0.2.66', id: '12345' }, status: 400, field: 'id' },
  { name: 'empty array', json: [], status: 400, field: 'body' },
  {
    name: 'array over INGEST_MAX_BATCH',
    json: Array.from({ length: MAX_BATCH + 1 }, (_, i) => ({ ip: `192.0.2.${i + 1}` })),
    status: 400,
    field: 'body',
  },
  {
    name: 'invalid JSON',
    raw: '{"ip": "192.0.2.67",',
    contentType: 'application/json',
    status: 400,
    field: 'body',
  },
  {
    name: 'JSON that is a bare string',
    raw: '"192.0.2.68"',
    contentType: 'application/json',
    status: 400,
    field: 'body',
  },
  { name: 'text/plain body', raw: 'ip=192.0.2.69', contentType: 'text/plain', status: 415, field: 'body' },
  { name: 'absent token', token: null, json: { ip: '192.0.2.70' }, status: 401, field: 'token' },
  {
    name: 'unknown token',
    authorization: `Bearer bb_${'x'.repeat(43)}`,
    json: { ip: '192.0.2.71' },
    status: 401,
    field: 'token',
  },
  {
    name: 'malformed token',
    authorization: 'Bearer <script>',
    json: { ip: '192.0.2.72' },
    status: 401,
    field: 'token',
  },
  { name: 'revoked token', token: 'revoked', json: { ip: '192.0.2.73' }, status: 401, field: 'token' },
  { name: 'read-only token', token: 'read', json: { ip: '192.0.2.74' }, status: 403, field: 'token' },
  {
    name: 'Basic auth',
    authorization: `Basic ${Buffer.from('web1:secret').toString('base64')}`,
    json: { ip: '192.0.2.75' },
    status: 401,
    field: 'token',
  },
  {
    name: 'token in the body is ignored',
    token: null,
    json: { ip: '192.0.2.76', token: 'TOKEN_IN_BODY' },
    status: 401,
    field: 'token',
  },
  {
    name: 'fail2ban.php without token',
    token: null,
    path: '/fail2ban.php?action=add&ip=192.0.2.77',
    status: 401,
    field: 'token',
  },
  {
    name: 'fail2ban.php with a bad token',
    token: null,
    path: '/fail2ban.php?token=nope&action=add&ip=192.0.2.78',
    status: 401,
    field: 'token',
  },
  {
    name: 'fail2ban.php action ban',
    token: null,
    path: 'COMPAT:action=ban&ip=192.0.2.79',
    status: 400,
    field: 'action',
  },
  {
    name: 'fail2ban.php missing ip',
    token: null,
    path: 'COMPAT:action=add&source=sshd',
    status: 400,
    field: 'ip',
  },
  {
    name: 'fail2ban.php network with a report token',
    token: null,
    path: 'COMPAT:action=add&ip=198.51.100.0/24',
    status: 403,
    field: 'ip',
  },
  {
    name: 'fail2ban.php allowlisted',
    token: null,
    path: 'COMPAT:action=add&ip=203.0.113.80',
    status: 422,
    field: 'ip',
    reason: 'allowlisted',
  },
  {
    name: 'fail2ban.php source with spaces',
    token: null,
    path: 'COMPAT:action=add&source=a%20b&ip=192.0.2.81',
    status: 400,
    field: 'source',
  },
];

describe('refused requests', () => {
  test('the table has at least 30 cases', () => {
    assert.ok(BAD.length >= 30, `${BAD.length} cases`);
  });

  for (const bad of BAD) {
    test(`${bad.status} ${bad.field}: ${bad.name}`, async () => {
      // COMPAT: paths get the report token in the query, as the old curl lines carry it.
      const path = bad.path?.startsWith('COMPAT:')
        ? `/fail2ban.php?token=${tokens.report}&${bad.path.slice(7)}`
        : bad.path;
      const res = await call({ ...bad, path });
      const text = await res.text();
      assert.equal(res.status, bad.status, text);
      const body = JSON.parse(text) as { error: string; field?: string; reason?: string };
      assert.equal(body.field, bad.field, text);
      assert.ok(body.error.length > 0);
      if (bad.reason) assert.equal(body.reason, bad.reason);
      if (bad.status === 401)
        assert.match(res.headers.get('www-authenticate') ?? '', /^Bearer realm="banbus"/);
      assert.doesNotMatch(text, /TOKEN_IN_BODY|bb_[A-Za-z0-9_-]{43}/, 'answers never echo tokens');
    });
  }

  test('nothing was published for any of them', async () => {
    assert.equal(await reader.messageCount(), 0);
    // The count alone could lag; a sentinel must be the one and only message behind the refused requests.
    const res = await call({ json: { ip: '192.0.2.99', jail: 'sentinel' } });
    assert.equal(res.status, 202);
    const [m] = await reader.take(1);
    assert.equal(m!.report.jail, 'sentinel');
  });
});

test('429 with Retry-After once a host exceeds its rate; other hosts and admin tokens unaffected', async () => {
  const limited = await startIngest({
    config: config({ INGEST_RATE_LIMIT: '1', INGEST_RATE_BURST: '3' }),
    logger,
    registry,
    pool,
    bus,
  });
  try {
    const ok = await call({
      port: limited.port,
      token: 'limited',
      json: [{ ip: '192.0.2.101' }, { ip: '192.0.2.102' }],
    });
    assert.equal(ok.status, 202);
    const over = await call({
      port: limited.port,
      token: 'limited',
      json: [{ ip: '192.0.2.103' }, { ip: '192.0.2.104' }],
    });
    assert.equal(over.status, 429, await over.text());
    assert.ok(Number(over.headers.get('retry-after')) >= 1);
    const other = await call({ port: limited.port, token: 'report', json: { ip: '192.0.2.105' } });
    assert.equal(other.status, 202);
    // An admin token (banbus import, manual bans) is not limited: far beyond the burst, twice.
    const bulk = Array.from({ length: 10 }, (_, i) => ({ ip: `192.0.2.${110 + i}` }));
    for (const part of [bulk.slice(0, 5), bulk.slice(5)]) {
      const res = await call({ port: limited.port, token: 'admin', json: part });
      assert.equal(res.status, 202, await res.text());
    }
    const got = await reader.take(13);
    assert.deepEqual(
      got.map((m) => m.report.target),
      ['192.0.2.101', '192.0.2.102', '192.0.2.105', ...bulk.map((b) => b.ip)],
    );
  } finally {
    await limited.stop();
  }
});

test('an allowlist entry added while running is enforced after its notification', async () => {
  await new AllowlistRepository(pool).add({ network: '192.0.2.200/30', comment: 'added later' });
  // Until the notification arrives a ban may still pass (the persister enforces the allowlist anyway).
  await waitFor(async () => (await call({ json: { ip: '192.0.2.201' } })).status === 422, {
    what: 'allowlisted after NOTIFY',
  });
  while (await reader.get()); // the ones that passed before the notification
});

test('/readyz, /metrics and last_seen', async () => {
  const ready = await fetch(`http://127.0.0.1:${ingest.port}/readyz`);
  assert.equal(ready.status, 200);
  assert.deepEqual(((await ready.json()) as { checks: unknown }).checks, { bus: true, allowlist: true });
  const metrics = await (await fetch(`http://127.0.0.1:${ingest.port}/metrics`)).text();
  assert.match(metrics, /banbus_ingest_reports_total\{action="ban",outcome="accepted"\} \d+/);
  assert.match(metrics, /banbus_ingest_reports_total\{action="ban",outcome="allowlisted"\} \d+/);
  assert.match(metrics, /banbus_ingest_reports_total\{action="unknown",outcome="unauthorized"\} \d+/);
  assert.match(
    metrics,
    /banbus_ingest_request_duration_seconds_bucket\{le="[^"]+",route="\/v1\/reports",status="202"\}/,
  );
  const hosts = new HostRepository(pool);
  await waitFor(async () => (await hosts.list()).find((h) => h.name === 'web1')?.lastSeenAt, {
    what: 'last_seen_at of web1',
    timeoutMs: 10_000,
    intervalMs: 200,
  });
});
