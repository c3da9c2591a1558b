// Rule 1 with the broker gone: ingest answers 503 + Retry-After at once (never 202, never a hang) and
// recovers by itself when the broker is back. Stops the shared RabbitMQ, hence serial.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { IngestEnvSchema, parseEnv } from '@banbus/core';
import { createLogger, createRegistry, type Running } from '@banbus/runtime';
import { Bus } from '@banbus/bus';
import { HostRepository, createPool } from '@banbus/db';
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

const run = promisify(execFile);
const logger = createLogger({ level: process.env.TEST_LOG_LEVEL ?? 'silent' });

let db: TestDatabase;
let amqpUrl: string;
let ns: string;
let pool: pg.Pool;
let bus: Bus;
let ingest: Running & { port: number };
let token: string;

async function post(ip: string): Promise<Response> {
  return fetch(`http://127.0.0.1:${ingest.port}/v1/reports`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ ip, jail: 'sshd' }),
    signal: AbortSignal.timeout(30_000),
  });
}

async function readyStatus(): Promise<number> {
  return (await fetch(`http://127.0.0.1:${ingest.port}/readyz`)).status;
}

async function rabbitmqctl(command: 'stop_app' | 'start_app'): Promise<void> {
  await run('rabbitmqctl', [command], { timeout: 120_000 });
}

before(async () => {
  db = await createTestDatabase();
  amqpUrl = await amqpTestUrl();
  ns = testNamespace();
  pool = createPool(db.url, { logger });
  const registry = createRegistry(false);
  bus = await Bus.connect({ url: amqpUrl, namespace: ns, logger, registry });
  token = (await new HostRepository(pool).add('web1', ['report'])).token;
  const config = parseEnv(IngestEnvSchema, {
    DATABASE_URL: db.url,
    AMQP_URL: amqpUrl,
    BANBUS_NAMESPACE: ns,
    BANBUS_LISTEN: '127.0.0.1',
    INGEST_PORT: '0',
  });
  ingest = await startIngest({ config, logger, registry, pool, bus });
  await waitFor(async () => (await readyStatus()) === 200, { what: 'ingest ready' });
});

after(async () => {
  await ingest?.stop();
  await bus?.close();
  await pool?.end();
  if (amqpUrl && ns) await deleteNamespace(amqpUrl, ns).catch(() => undefined);
  await db?.drop();
});

test('broker stopped → 503 with Retry-After quickly; started again → ingest recovers without a restart', async () => {
  assert.equal((await post('192.0.2.1')).status, 202, 'baseline');
  try {
    await rabbitmqctl('stop_app');
    const started = Date.now();
    const res = await post('192.0.2.2');
    const elapsed = Date.now() - started;
    assert.equal(res.status, 503, await res.text());
    assert.equal(res.headers.get('retry-after'), '5');
    assert.ok(elapsed < 6_000, `answered after ${elapsed} ms`);
    // Once the bus noticed, the answer is immediate and /readyz says so.
    await waitFor(async () => (await readyStatus()) === 503, {
      what: '/readyz 503 while the broker is down',
    });
    const again = Date.now();
    assert.equal((await post('192.0.2.3')).status, 503);
    assert.ok(Date.now() - again < 1_000, 'fails fast while disconnected');
  } finally {
    await rabbitmqctl('start_app');
  }
  await waitFor(async () => (await readyStatus()) === 200, {
    what: '/readyz 200 after start_app',
    timeoutMs: 60_000,
    intervalMs: 200,
  });
  const reader = await QueueReader.open(amqpUrl, bus.topology.persisterQueue);
  try {
    const res = await post('192.0.2.4');
    const text = await res.text();
    assert.equal(res.status, 202, text);
    const { ids } = JSON.parse(text) as { ids: string[] };
    // The baseline message survives in the quorum queue; 192.0.2.2 and .3 were refused, so not there.
    const got = await reader.take(2);
    assert.deepEqual(
      got.map((m) => m.report.target),
      ['192.0.2.1', '192.0.2.4'],
    );
    assert.equal(got[1]!.report.id, ids[0]);
  } finally {
    await reader.close();
  }
});
