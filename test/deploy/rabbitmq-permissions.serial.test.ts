// A route-applier running as its host's restricted RabbitMQ user (docs/rabbitmq.md) across a broker
// restart: the reconnect re-runs only what that user may do (check the decision exchange, declare and
// bind its own queue, consume, ask the aggregator for a delta), and changes published afterwards arrive
// through the queue. Restarts the shared broker:
// runs alone, after the parallel tests.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { Bus, topology } from '@banbus/bus';
import { createLogger } from '@banbus/runtime';
import { amqpTestUrl, deleteNamespace, testNamespace, waitFor } from '../harness/index.js';
import { FakeAggregator } from '../../services/route-applier/test/support.js';
import { HostUser, rabbitmqctl, startHostApplier } from './support.js';

const silent = createLogger({ level: 'silent' });
const host = 'web1';
let user: HostUser;
let brokerStopped = false;
let amqpUrl: string;
let ns: string;

before(async () => {
  amqpUrl = await amqpTestUrl();
  ns = testNamespace();
  user = new HostUser(ns, host);
  await user.create();
});

after(async () => {
  if (brokerStopped) await rabbitmqctl('start_app').catch(() => undefined);
  await user?.drop();
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
    // No periodic check: what arrives after the restart must come through the queue itself.
    const applier = await startHostApplier(user, amqpUrl, fake.url, { APPLIER_CHECK_INTERVAL: '0' });
    const { status } = applier;
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
      assert.equal(s.snapshots, 1);
      // Seq 2 may have come through the delta the applier asks for on reconnecting (a restart empties
      // its queue: decision messages are transient). The next one comes through the stream, not by
      // healing: the queue and its binding are back.
      await central.publishDecisionChanges([fake.push('add', '198.51.100.8')]);
      const after = await waitFor(async () => ((await status()).seq === 3 ? status() : undefined), {
        timeoutMs: 30_000,
        what: 'seq 3 applied through the queue',
      });
      assert.equal(after.entries, 3);
      assert.equal(after.deltas, s.deltas);
      assert.equal(after.snapshots, 1);
    } finally {
      await applier.stop();
      await central.close();
      await fake.stop();
    }
  },
);
