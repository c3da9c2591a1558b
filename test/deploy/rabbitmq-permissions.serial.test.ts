// A route-applier running as its host's restricted RabbitMQ user (docs/rabbitmq.md) across a broker
// restart: the reconnect re-runs only what that user may do (check the decision exchange, declare and
// bind its own queue, consume), and the changes published meanwhile arrive. Restarts the shared broker:
// runs alone, after the parallel tests.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import { Bus, topology } from '@banbus/bus';
import { mainRouteApplier } from '@banbus/route-applier';
import { createLogger, createRegistry } from '@banbus/runtime';
import { amqpTestUrl, deleteNamespace, testNamespace, waitFor } from '../harness/index.js';
import { FakeAggregator } from '../../services/route-applier/test/support.js';
import { applierPermissions } from './support.js';

const run = promisify(execFile);
const silent = createLogger({ level: 'silent' });
const user = `bbt-${randomBytes(4).toString('hex')}-web1`;
const password = randomBytes(12).toString('hex');
const host = 'web1';
let brokerStopped = false;
let amqpUrl: string;
let ns: string;

async function rabbitmqctl(...args: string[]): Promise<void> {
  await run('rabbitmqctl', ['-q', ...args], { timeout: 60_000 });
}

before(async () => {
  amqpUrl = await amqpTestUrl();
  ns = testNamespace();
  const p = applierPermissions(ns, host);
  await rabbitmqctl('add_user', user, password);
  await rabbitmqctl('set_permissions', '-p', '/', user, p.configure, p.write, p.read);
});

after(async () => {
  if (brokerStopped) await rabbitmqctl('start_app').catch(() => undefined);
  await rabbitmqctl('delete_user', user).catch(() => undefined);
  if (amqpUrl) await deleteNamespace(amqpUrl, ns, [topology(ns).applierQueue(host)]);
});

test(
  'a route-applier of a restricted user reconnects after a broker restart',
  { timeout: 120_000 },
  async () => {
    const central = await Bus.connect({
      url: amqpUrl,
      namespace: ns,
      logger: silent,
      maxReconnectDelayMs: 500,
    });
    const fake = await new FakeAggregator().start();
    fake.push('add', '203.0.113.1');
    const url = new URL(amqpUrl);
    url.username = user;
    url.password = password;
    const applier = await mainRouteApplier(
      {
        AMQP_URL: url.toString(),
        BANBUS_NAMESPACE: ns,
        BANBUS_URL: fake.url,
        APPLIER_HOST: host,
        APPLIER_BACKEND: 'dry-run',
        APPLIER_PORT: '0',
        BANBUS_LISTEN: '127.0.0.1',
        APPLIER_CHECK_INTERVAL: '0',
      },
      { logger: silent, registry: createRegistry(false) },
    );
    const status = async () =>
      (await fetch(`http://127.0.0.1:${applier.port}/v1/status`).then((r) => r.json())) as {
        ready: boolean;
        seq: number;
        entries: number;
        snapshots: number;
        deltas: number;
      };
    try {
      await waitFor(async () => (await status()).ready, { what: 'the snapshot' });
      brokerStopped = true;
      await rabbitmqctl('stop_app');
      await rabbitmqctl('start_app');
      brokerStopped = false;
      // Published once both are back: the central bus reconnects by itself, as does the applier.
      await waitFor(() => central.connected, { timeoutMs: 60_000, what: 'the central bus' });
      await waitFor(async () => (await status()).ready, {
        timeoutMs: 60_000,
        what: 'the applier reconnected',
      });
      await waitFor(
        async () => {
          await central.publishDecisionChanges([fake.log[1] ?? fake.push('add', '198.51.100.7')]);
          return true;
        },
        { timeoutMs: 30_000, what: 'publishing after the restart' },
      );
      const s = await waitFor(async () => ((await status()).seq === 2 ? status() : undefined), {
        timeoutMs: 30_000,
        what: 'seq 2 applied after the restart',
      });
      assert.equal(s.entries, 2);
      // Through the stream, not by healing: the queue and its binding are back.
      assert.equal(s.snapshots, 1);
      assert.equal(s.deltas, 0);
    } finally {
      await applier.stop();
      await central.close();
      await fake.stop();
    }
  },
);
