// docs/rabbitmq.md gives each host's route-applier a RabbitMQ user of its own, limited by permission
// regexes to its own queue. This checks those exact regexes on the local broker: what an applier does
// is allowed, what could harm the fleet (reading reports, touching another host's or the persister's
// queue, publishing reports, redeclaring shared exchanges) is refused.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, type Channel, type ChannelModel } from 'amqplib';
import { z } from 'zod';
import { Bus, topology, type Topology } from '@banbus/bus';
import { parseEnv, RouteApplierEnvSchema } from '@banbus/core';
import { applierQueueArguments } from '@banbus/route-applier';
import { createLogger } from '@banbus/runtime';
import { amqpTestUrl, deleteNamespace, testNamespace, waitFor } from '../harness/index.js';
import { FakeAggregator } from '../../services/route-applier/test/support.js';
import { HostUser, startHostApplier } from './support.js';

const host = 'web1';
let user: HostUser;
let ns: string;
let t: Topology;
let amqpUrl: string;
let restricted: ChannelModel;
let central: Bus;
const silent = createLogger({ level: 'silent' });

/** Runs `fn` on a fresh channel of the restricted user; resolves with the broker's refusal, if any. */
async function attempt(fn: (ch: Channel) => Promise<unknown>): Promise<string | null> {
  const channel = await restricted.createConfirmChannel();
  let closedWith: string | null = null;
  channel.on('error', (err: Error) => (closedWith = err.message));
  try {
    await fn(channel);
    await channel.waitForConfirms();
    await channel.close();
    return null;
  } catch (err) {
    return closedWith ?? (err as Error).message;
  }
}

before(async () => {
  amqpUrl = await amqpTestUrl();
  ns = testNamespace();
  t = topology(ns);
  // The central services declare the shared topology (as ingest, persister and aggregator do).
  central = await Bus.connect({ url: amqpUrl, namespace: ns, logger: silent });
  user = new HostUser(ns, host);
  await user.create();
  restricted = await connect(user.url(amqpUrl));
  restricted.on('error', () => undefined);
});

after(async () => {
  await restricted?.close().catch(() => undefined);
  await central?.close().catch(() => undefined);
  await user?.drop();
  if (amqpUrl) await deleteNamespace(amqpUrl, ns, [t.applierQueue(host), t.applierQueue('web2')]);
});

describe('per-host RabbitMQ user of a route-applier (docs/rabbitmq.md)', () => {
  test('may declare, bind and consume its own queue, check the decision exchange, and dead-letter', async () => {
    const queue = t.applierQueue(host);
    assert.equal(
      await attempt(async (ch) => {
        // The arguments the route-applier declares its queue with.
        await ch.assertQueue(queue, {
          durable: true,
          arguments: applierQueueArguments(parseEnv(RouteApplierEnvSchema, { APPLIER_HOST: host })),
        });
        await ch.checkExchange(t.decisionsExchange);
        await ch.bindQueue(queue, t.decisionsExchange, '');
        await ch.consume(queue, () => undefined);
        ch.publish(t.deadLetterExchange, 'dead', Buffer.from('{}'), { persistent: true });
      }),
      null,
    );
  });

  const refused: [string, (ch: Channel) => Promise<unknown>][] = [
    [
      'read the reports (bind its queue to <ns>.reports)',
      (ch) => ch.bindQueue(t.applierQueue(host), t.reportsExchange, '#'),
    ],
    ['consume the persister queue', (ch) => ch.consume(t.persisterQueue, () => undefined)],
    ['delete the persister queue', (ch) => ch.deleteQueue(t.persisterQueue)],
    [
      "declare another host's queue",
      (ch) =>
        ch.assertQueue(t.applierQueue('web2'), { durable: true, arguments: { 'x-queue-type': 'quorum' } }),
    ],
    [
      'redeclare a shared exchange',
      (ch) => ch.assertExchange(t.decisionsExchange, 'fanout', { durable: true }),
    ],
    ['publish reports', async (ch) => ch.publish(t.reportsExchange, 'report.ban', Buffer.from('{}'))],
    ['publish decisions', async (ch) => ch.publish(t.decisionsExchange, '', Buffer.from('{}'))],
    // The default exchange routes to any queue by name: write on amq.default would mean fake reports.
    [
      'publish to a queue by name (the default exchange)',
      async (ch) => ch.publish('', t.persisterQueue, Buffer.from('{}')),
    ],
  ];
  test('banbus run route-applier runs as this user and follows the stream', async () => {
    const fake = await new FakeAggregator().start();
    fake.push('add', '203.0.113.1');
    const applier = await startHostApplier(user, amqpUrl, fake.url);
    const { status } = applier;
    try {
      await waitFor(async () => (await status()).ready, { what: 'the snapshot' });
      // A change on the stream reaches it through its own queue.
      await central.publishDecisionChanges([fake.push('add', '198.51.100.7')]);
      const s = await waitFor(async () => ((await status()).seq === 2 ? status() : undefined), {
        what: 'seq 2 applied',
      });
      assert.equal(s.entries, 2, JSON.stringify(s));
    } finally {
      await applier.stop();
      await fake.stop();
    }
  });

  test('a consumer of this user retries by requeueing and dead-letters what keeps failing', async () => {
    const bus = await Bus.connect({
      url: user.url(amqpUrl),
      namespace: ns,
      logger: silent,
      declares: 'own-queues',
      initialConnectRetries: 0,
    });
    const queue = t.applierQueue(host);
    const attempts: number[] = [];
    const consumer = await bus.consume({
      queue,
      declare: async (ch) => {
        await ch.assertQueue(queue, {
          durable: true,
          arguments: applierQueueArguments(parseEnv(RouteApplierEnvSchema, { APPLIER_HOST: host })),
        });
        await ch.bindQueue(queue, t.decisionsExchange, '');
      },
      schema: z.unknown(),
      prefetch: 10,
      batchSize: 10,
      maxRetries: 3,
      retry: 'requeue',
      handler: async (deliveries) => {
        for (const d of deliveries) if (d.messageId === 'poison') attempts.push(d.attempt);
        if (deliveries.some((d) => d.messageId === 'poison')) throw new Error('cannot apply');
      },
    });
    // Read the dead-letter queue as the central services do.
    const admin = await connect(amqpUrl);
    const channel = await admin.createChannel();
    try {
      await central.publish(t.decisionsExchange, '', [{ poison: true }], { messageIds: ['poison'] });
      const dead = await waitFor(
        async () => {
          const m = await channel.get(t.deadLetterQueue, { noAck: true });
          return m && m.properties.messageId === 'poison' ? m : undefined;
        },
        { what: 'the dead-lettered message' },
      );
      assert.equal(dead.properties.headers?.['x-banbus-queue'], queue);
      assert.deepEqual(attempts, [1, 2, 3]);
    } finally {
      await consumer.cancel();
      await bus.close();
      await admin.close();
    }
  });

  for (const [what, fn] of refused) {
    test(`may not ${what}`, async () => {
      const error = await attempt(fn);
      assert.match(error ?? 'allowed', /ACCESS_REFUSED|403/, `${what} was allowed`);
    });
  }
});
