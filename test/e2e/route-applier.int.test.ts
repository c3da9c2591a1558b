// End to end: fail2ban's report over HTTP → ingest → persister → decision stream → the route-appliers of
// two "hosts" (network namespaces) → a blackhole route in each kernel; the unban takes it away again.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { runCli, runService, type RunningService } from '@banbus/cli';
import { createLogger, createRegistry, type Running } from '@banbus/runtime';
import { mainRouteApplier } from '@banbus/route-applier';
import {
  amqpTestUrl,
  createTestDatabase,
  deleteNamespace,
  testNamespace,
  waitFor,
} from '../harness/index.js';
import { freePort } from '../bench/lib.js';
import { createNetns, haveTools, routesOf, type Netns } from '../../services/route-applier/test/support.js';

describe('report → blackhole route on two hosts', { skip: !haveTools() && 'needs root and iproute2' }, () => {
  let db: Awaited<ReturnType<typeof createTestDatabase>>;
  let amqpUrl: string;
  let namespace: string;
  let central: RunningService;
  const hosts: { ns: Netns; applier: Running & { ready(): boolean } }[] = [];
  let ingest: string;
  let reportToken: string;

  const env = () => ({
    DATABASE_URL: db.url,
    AMQP_URL: amqpUrl,
    BANBUS_NAMESPACE: namespace,
    LOG_LEVEL: 'silent',
  });

  async function addHost(name: string, scopes: string): Promise<string> {
    let out = '';
    const code = await runCli(['hosts', 'add', name, '--scopes', scopes], {
      env: env(),
      out: (t) => void (out += t),
      err: () => undefined,
    });
    assert.equal(code, 0);
    return out.trim();
  }

  before(async () => {
    db = await createTestDatabase({ migrate: false });
    amqpUrl = await amqpTestUrl();
    namespace = testNamespace();
    const ingestPort = await freePort();
    const aggregatorPort = await freePort();
    ingest = `http://127.0.0.1:${ingestPort}`;
    central = await runService('all', {
      ...env(),
      INGEST_PORT: String(ingestPort),
      AGGREGATOR_PORT: String(aggregatorPort),
      CONSOLE_PORT: '0',
      BANBUS_LISTEN: '127.0.0.1',
    });
    reportToken = await addHost('web1', 'report');
    const readToken = await addHost('appliers', 'read');
    for (const name of ['host-a', 'host-b']) {
      const ns = createNetns();
      hosts.push({
        ns,
        applier: await mainRouteApplier(
          {
            ...env(),
            BANBUS_URL: `http://127.0.0.1:${aggregatorPort}`,
            BANBUS_TOKEN: readToken,
            APPLIER_HOST: name,
            APPLIER_NETNS: ns.name,
            APPLIER_PORT: '0',
            BANBUS_LISTEN: '127.0.0.1',
            APPLIER_SNAPSHOT_RETRY_MIN: '0.1',
          },
          { logger: createLogger({ level: 'silent' }), registry: createRegistry(false) },
        ),
      });
    }
    await waitFor(() => hosts.every((h) => h.applier.ready()), {
      timeoutMs: 30_000,
      what: 'both appliers ready',
    });
  });

  after(async () => {
    for (const h of hosts) {
      await h.applier.stop().catch(() => undefined);
      h.ns.remove();
    }
    await central?.stop();
    if (amqpUrl)
      await deleteNamespace(amqpUrl, namespace, [
        `${namespace}.applier.host-a`,
        `${namespace}.applier.host-b`,
      ]);
    await db?.drop();
  });

  const post = (body: unknown) =>
    fetch(`${ingest}/v1/reports`, {
      method: 'POST',
      headers: { authorization: `Bearer ${reportToken}`, 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });

  test('a ban posted to ingest becomes a blackhole route on both hosts; the unban removes it', async () => {
    assert.equal((await post({ ip: '203.0.113.77', jail: 'sshd', bantime: 3600 })).status, 202);
    for (const { ns } of hosts) {
      await waitFor(() => routesOf(ns).get('203.0.113.77') === 'blackhole', {
        what: `the route in ${ns.name}`,
      });
    }
    assert.equal((await post({ ip: '2001:db8:e2e::5', jail: 'sshd' })).status, 202);
    for (const { ns } of hosts) {
      await waitFor(() => routesOf(ns).get('2001:db8:e2e::5') === 'blackhole', {
        what: `the v6 route in ${ns.name}`,
      });
    }
    assert.equal((await post({ ip: '203.0.113.77', action: 'unban', jail: 'sshd' })).status, 202);
    for (const { ns } of hosts) {
      await waitFor(() => !routesOf(ns).has('203.0.113.77'), { what: `the route gone from ${ns.name}` });
      assert.ok(routesOf(ns).has('2001:db8:e2e::5'));
    }
  });
});
