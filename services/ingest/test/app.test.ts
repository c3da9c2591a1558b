// The HTTP app with fake bus and repositories: the failure paths that are hard to provoke for real.
import { test, describe, after } from 'node:test';
import assert from 'node:assert/strict';
import { createLogger, createRegistry, listen, type Listening } from '@banbus/runtime';
import { policyFromEnv, PolicyEnvSchema, parseEnv, type Report } from '@banbus/core';
import { createIngestApp, type ReportHandoff, type ReportPublisher } from '../src/app.js';
import { TokenAuthenticator, type AuthHost } from '../src/auth.js';
import { AllowlistCache } from '../src/checks.js';
import { ReportRateLimiter } from '../src/rate.js';

const logger = createLogger({ level: 'silent' });
const TOKEN = 'bb_' + 't'.repeat(43);
const policy = policyFromEnv(parseEnv(PolicyEnvSchema, {}));

class FakeBus implements ReportPublisher {
  connected = true;
  published: Report[] = [];
  behaviour: 'ok' | 'reject' | 'hang' = 'ok';
  async publishReports(reports: readonly Report[]): Promise<void> {
    if (this.behaviour === 'reject') throw new Error('message nacked');
    if (this.behaviour === 'hang') return new Promise(() => undefined);
    this.published.push(...reports);
  }
}

/** The persister of the same process (`banbus run all`), as ingest sees it. */
class FakeHandoff implements ReportHandoff {
  submitted: string[] = [];
  unpublishedIds: string[] = [];
  submit(reports: readonly Report[]): void {
    this.submitted.push(...reports.map((r) => r.id));
  }
  unpublished(ids: readonly string[]): void {
    this.unpublishedIds.push(...ids);
  }
}

const servers: Listening[] = [];
after(async () => {
  for (const s of servers) await s.close();
});

async function start(options: { dbDown?: boolean; allowlistDown?: boolean } = {}) {
  const bus = new FakeBus();
  const handoff = new FakeHandoff();
  const hosts = {
    down: options.dbDown ?? false,
    async findByToken(token: string): Promise<AuthHost | null> {
      if (this.down) throw new Error('ECONNREFUSED');
      return token === TOKEN ? { name: 'web1', scopes: ['report'], revokedAt: null } : null;
    },
    async touch() {},
  };
  const auth = new TokenAuthenticator({ hosts, ttlSeconds: 30, logger });
  const allowlist = new AllowlistCache(
    {
      load: async () => {
        if (options.allowlistDown) throw new Error('ECONNREFUSED');
        return ['203.0.113.0/24'];
      },
    },
    logger,
    { retryMs: 3_600_000 },
  );
  await allowlist.start();
  const registry = createRegistry(false);
  const app = createIngestApp({
    logger,
    registry,
    bus,
    auth,
    allowlist,
    limiter: new ReportRateLimiter(1000, 1000),
    policy,
    maxBatch: 10,
    publishTimeoutMs: 200,
    handoff,
  });
  const server = await listen(app, 0, '127.0.0.1');
  servers.push(server);
  const post = (body: unknown) =>
    fetch(`http://127.0.0.1:${server.port}/v1/reports`, {
      method: 'POST',
      headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
  const metrics = async () => registry.metrics();
  after(() => allowlist.stop());
  after(() => auth.stop());
  return { bus, hosts, post, server, metrics, handoff };
}

describe('ingest app', () => {
  test('202 carries the ids; the report has the token host', async () => {
    const { bus, post } = await start();
    const res = await post({ ip: '192.0.2.1', host: 'forged' });
    assert.equal(res.status, 202);
    const body = (await res.json()) as { ids: string[] };
    assert.deepEqual(
      bus.published.map((r) => [r.id, r.host]),
      [[body.ids[0], 'web1']],
    );
    // Time-ordered (UUIDv7): new rows go to the right edge of the reports' primary key.
    assert.match(body.ids[0]!, /^[0-9a-f]{8}-[0-9a-f]{4}-7/);
  });

  test('accepted reports are handed to the persister of the process as they are published', async () => {
    const { post, handoff } = await start();
    const res = await post([{ ip: '192.0.2.1' }, { ip: '192.0.2.2', action: 'unban' }]);
    assert.equal(res.status, 202);
    assert.deepEqual(handoff.submitted, ((await res.json()) as { ids: string[] }).ids);
    assert.deepEqual(handoff.unpublishedIds, []);
    // Refused reports are not handed over.
    assert.equal((await post({ ip: '203.0.113.7' })).status, 422);
    assert.equal(handoff.submitted.length, 2);
  });

  test('a failed publish tells the handoff that no broker copy will come', async () => {
    const { bus, post, handoff } = await start();
    bus.behaviour = 'reject';
    assert.equal((await post({ ip: '192.0.2.3' })).status, 503);
    assert.equal(handoff.submitted.length, 1);
    assert.deepEqual(handoff.unpublishedIds, handoff.submitted);
  });

  for (const [what, setup] of [
    ['bus not connected', (b: FakeBus) => (b.connected = false)],
    ['publish rejected (nack / channel closed)', (b: FakeBus) => (b.behaviour = 'reject')],
    ['no confirm in time', (b: FakeBus) => (b.behaviour = 'hang')],
  ] as const) {
    test(`503 with Retry-After: 5 when ${what}`, async () => {
      const { bus, post, metrics } = await start();
      setup(bus);
      const res = await post([{ ip: '192.0.2.1' }, { ip: '192.0.2.2', action: 'unban' }]);
      assert.equal(res.status, 503);
      assert.equal(res.headers.get('retry-after'), '5');
      assert.equal(bus.published.length, 0);
      const text = await metrics();
      assert.match(text, /banbus_ingest_reports_total\{action="ban",outcome="unavailable"\} 1/);
      assert.match(text, /banbus_ingest_reports_total\{action="unban",outcome="unavailable"\} 1/);
    });
  }

  test('token cannot be checked (PostgreSQL away, nothing cached) → 503, not 401', async () => {
    const { post } = await start({ dbDown: true });
    const res = await post({ ip: '192.0.2.1' });
    assert.equal(res.status, 503);
    assert.equal(res.headers.get('retry-after'), '5');
  });

  test('a cached token keeps working while PostgreSQL is away', async () => {
    const { post, hosts } = await start();
    assert.equal((await post({ ip: '192.0.2.1' })).status, 202);
    hosts.down = true;
    assert.equal((await post({ ip: '192.0.2.2' })).status, 202);
  });

  test('allowlist not loaded: not ready, reports still accepted (the persister enforces it)', async () => {
    const { post, server } = await start({ allowlistDown: true });
    const ready = await fetch(`http://127.0.0.1:${server.port}/readyz`);
    assert.equal(ready.status, 503);
    assert.deepEqual(((await ready.json()) as { checks: unknown }).checks, { bus: true, allowlist: false });
    assert.equal((await post({ ip: '192.0.2.1' })).status, 202);
  });

  test('unknown routes are JSON 404', async () => {
    const { server } = await start();
    const res = await fetch(`http://127.0.0.1:${server.port}/v1/nope`);
    assert.equal(res.status, 404);
    assert.equal(((await res.json()) as { error: string }).error, 'not found');
  });
});
