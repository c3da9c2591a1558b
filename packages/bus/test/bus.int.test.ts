import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { Channel } from 'amqplib';
import { randomUUID } from 'node:crypto';
import { z } from 'zod';
import {
  DecisionMessageSchema,
  MAX_CHANGES_PER_MESSAGE,
  MAX_REPORTS_PER_MESSAGE,
  ReportMessageSchema,
} from '@banbus/core';
import { createLogger, createRegistry, type Registry } from '@banbus/runtime';
import { amqpTestUrl, DecisionListener, deleteNamespace, testNamespace } from '../../../test/harness/amqp.js';
import { waitFor } from '../../../test/harness/wait.js';
import { Bus, BusUnavailableError, declareQuorumQueue, type Delivery } from '../src/index.js';
import { DeadLetterReader, deferred } from './support.js';

const Item = z.object({ n: z.number().int() });
type Item = z.infer<typeof Item>;

class DatabaseAway extends Error {}

describe('Bus (RabbitMQ)', () => {
  let url: string;
  let namespace: string;
  let bus: Bus;
  let registry: Registry;
  let deadLetters: DeadLetterReader;
  const queues: string[] = [];
  const logger = createLogger({ level: process.env.LOG_LEVEL ?? 'silent' });

  /** A quorum queue of this namespace, empty, declared before anything is published to it. */
  async function testQueue(name: string): Promise<string> {
    const queue = `${namespace}.test-${name}`;
    queues.push(queue);
    await withChannel((ch) => declareQuorumQueue(ch, bus.topology, queue));
    return queue;
  }

  async function withChannel<T>(use: (ch: Channel) => Promise<T>): Promise<T> {
    // The dead-letter reader's connection doubles as the tests' raw access to the broker.
    return use(deadLetters.channel);
  }

  const declareOf = (queue: string) => (ch: Channel) => declareQuorumQueue(ch, bus.topology, queue);

  before(async () => {
    url = await amqpTestUrl();
    namespace = testNamespace();
    registry = createRegistry(false);
    bus = await Bus.connect({ url, namespace, logger, registry });
    deadLetters = await DeadLetterReader.start(url, namespace);
  });

  after(async () => {
    await bus?.close();
    await deadLetters?.close();
    if (url && namespace) await deleteNamespace(url, namespace, queues);
  });

  test('declares the topology and reports itself connected', async () => {
    assert.equal(bus.connected, true);
    assert.match(await registry.getSingleMetricAsString('banbus_bus_connected'), /banbus_bus_connected 1/);
    await withChannel(async (ch) => {
      await ch.checkExchange(bus.topology.reportsExchange);
      await ch.checkExchange(bus.topology.decisionsExchange);
      await ch.checkQueue(bus.topology.persisterQueue);
      await ch.checkQueue(bus.topology.deadLetterQueue);
    });
  });

  test('publish and consume round trip', async () => {
    const queue = await testQueue('roundtrip');
    const got = deferred<Delivery<Item>[]>();
    const consumer = await bus.consume({
      queue,
      schema: Item,
      prefetch: 10,
      batchSize: 10,
      maxRetries: 3,
      handler: async (deliveries) => got.resolve(deliveries),
    });
    await bus.publish('', queue, [{ n: 7 }], { messageIds: ['m-7'] });
    const deliveries = await got.promise;
    assert.deepEqual(deliveries, [{ body: { n: 7 }, attempt: 1, messageId: 'm-7' }]);
    await consumer.cancel();
    assert.match(
      await registry.getSingleMetricAsString('banbus_bus_published_total'),
      /banbus_bus_published_total [1-9]/,
    );
  });

  test('caughtUp: false while messages wait in the queue or for their handler, true once all were handed over', async () => {
    const queue = await testQueue('caught-up');
    const release = deferred();
    const handled: number[] = [];
    // prefetch 2 and a handler that waits: the third message stays in the queue.
    const consumer = await bus.consume({
      queue,
      schema: Item,
      prefetch: 2,
      batchSize: 1,
      maxRetries: 3,
      handler: async (deliveries) => {
        await release.promise;
        handled.push(...deliveries.map((d) => d.body.n));
      },
    });
    assert.equal(await consumer.caughtUp(), true, 'an empty queue');
    await bus.publish('', queue, [{ n: 1 }, { n: 2 }, { n: 3 }]);
    await waitFor(async () => (await withChannel((ch) => ch.checkQueue(queue))).messageCount === 1, {
      what: 'two of three delivered',
    });
    // One handler started, the second delivery waits for its turn, the third is in the queue.
    assert.equal(await consumer.caughtUp(), false);
    release.resolve();
    await waitFor(() => handled.length === 3, { what: 'all three handled' });
    assert.equal(await consumer.caughtUp(), true);
    await consumer.cancel();
    assert.equal(await consumer.caughtUp(), false, 'cancelled');
  });

  test('reports go to the persister queue through the reports exchange', async () => {
    const report = {
      id: '0b8f1d5e-5a52-4d8e-9a0e-1f2a3b4c5d6e',
      action: 'ban' as const,
      target: '192.0.2.1',
      host: 'web1',
      origin: 'fail2ban' as const,
      time: new Date().toISOString(),
    };
    await bus.publishReports([report]);
    const message = await waitFor(
      () => withChannel((ch) => ch.get(bus.topology.persisterQueue, { noAck: true })),
      {
        what: 'the report in the persister queue',
      },
    );
    assert.equal(message.fields.routingKey, 'report.ban');
    assert.equal(message.properties.messageId, report.id);
    assert.equal(message.properties.deliveryMode, 2);
    assert.deepEqual(JSON.parse(message.content.toString()), report);
  });

  test('a batch of reports travels packed, at most MAX_REPORTS_PER_MESSAGE to a message', async () => {
    await withChannel((ch) => ch.purgeQueue(bus.topology.persisterQueue));
    const count = MAX_REPORTS_PER_MESSAGE * 2 + 7;
    const reports = Array.from({ length: count }, (_, k) => ({
      id: randomUUID(),
      action: 'ban' as const,
      target: `198.51.${k >> 8}.${k & 255}`,
      host: 'web1',
      origin: 'fail2ban' as const,
      time: new Date().toISOString(),
    }));
    await bus.publishReports(reports);
    const bodies: unknown[] = [];
    for (let i = 0; i < 3; i++) {
      const message = await waitFor(() =>
        withChannel((ch) => ch.get(bus.topology.persisterQueue, { noAck: true })),
      );
      assert.equal(message.fields.routingKey, 'report.batch');
      bodies.push(JSON.parse(message.content.toString()));
    }
    assert.deepEqual(
      bodies.map((b) => (b as unknown[]).length),
      [MAX_REPORTS_PER_MESSAGE, MAX_REPORTS_PER_MESSAGE, 7],
    );
    // Every body reads back, through the consumers' schema, as the reports in their order.
    const read = bodies.flatMap((b) => ReportMessageSchema.parse(b));
    assert.deepEqual(
      read.map((r) => r.id),
      reports.map((r) => r.id),
    );
  });

  test('decision changes travel packed, in seq order, at most MAX_CHANGES_PER_MESSAGE to a message', async () => {
    const queue = await testQueue('decisions-packed');
    await withChannel((ch) => ch.bindQueue(queue, bus.topology.decisionsExchange, ''));
    const count = MAX_CHANGES_PER_MESSAGE * 2 + 3;
    const changes = Array.from({ length: count }, (_, k) => ({
      seq: k + 1,
      op: 'add' as const,
      target: `198.51.${k >> 8}.${k & 255}`,
      expires_at: null,
    }));
    await bus.publishDecisionChanges(changes);
    const bodies: unknown[] = [];
    for (let i = 0; i < 3; i++) {
      const message = await waitFor(() => withChannel((ch) => ch.get(queue, { noAck: true })));
      bodies.push(JSON.parse(message.content.toString()));
    }
    assert.deepEqual(
      bodies.map((b) => (b as unknown[]).length),
      [MAX_CHANGES_PER_MESSAGE, MAX_CHANGES_PER_MESSAGE, 3],
    );
    const read = bodies.flatMap((b) => DecisionMessageSchema.parse(b));
    assert.deepEqual(
      read.map((c) => c.seq),
      changes.map((c) => c.seq),
    );
    // A lone change is published as itself.
    await bus.publishDecisionChanges([{ seq: count + 1, op: 'del', target: '192.0.2.9' }]);
    const lone = await waitFor(() => withChannel((ch) => ch.get(queue, { noAck: true })));
    assert.deepEqual(JSON.parse(lone.content.toString()), { seq: count + 1, op: 'del', target: '192.0.2.9' });
    // Transient: decision_log is the record, and consumers heal from it (see publishDecisionChanges).
    assert.equal(lone.properties.deliveryMode, 1);
  });

  test('decision changes reach a DecisionListener in seq order', async () => {
    const listener = await DecisionListener.start(url, namespace);
    try {
      const later = listener.next((c) => c.seq === 3);
      await bus.publishDecisionChanges([
        { seq: 1, op: 'add', target: '192.0.2.1', expires_at: null, reason: 'sshd' },
        { seq: 2, op: 'del', target: '192.0.2.1' },
        { seq: 3, op: 'add', target: '2001:db8::/48' },
      ]);
      assert.equal((await later).target, '2001:db8::/48');
      assert.deepEqual(await listener.next(), {
        seq: 1,
        op: 'add',
        target: '192.0.2.1',
        expires_at: null,
        reason: 'sshd',
      });
      assert.equal((await listener.next()).seq, 2);
      assert.deepEqual(
        listener.changes.map((c) => c.seq),
        [1, 2, 3],
      );
      await assert.rejects(listener.next(undefined, 50), /no matching decision change/);
    } finally {
      await listener.close();
    }
  });

  test('a batch handler gets several deliveries, in queue order', async () => {
    const queue = await testQueue('batch');
    await bus.publish(
      '',
      queue,
      Array.from({ length: 20 }, (_, n) => ({ n })),
    );
    const batches: number[][] = [];
    const all = deferred();
    const consumer = await bus.consume({
      queue,
      schema: Item,
      prefetch: 50,
      batchSize: 8,
      maxRetries: 3,
      handler: async (deliveries) => {
        batches.push(deliveries.map((d) => d.body.n));
        if (batches.flat().length === 20) all.resolve();
      },
    });
    await all.promise;
    await consumer.cancel();
    assert.deepEqual(
      batches.flat(),
      Array.from({ length: 20 }, (_, n) => n),
    );
    assert.ok(Math.max(...batches.map((b) => b.length)) > 1, `batches: ${JSON.stringify(batches)}`);
    assert.ok(Math.max(...batches.map((b) => b.length)) <= 8);
  });

  test('poison messages (not JSON, schema-invalid) are dead-lettered with the reason; the next is processed', async () => {
    const queue = await testQueue('poison');
    await withChannel(async (ch) => {
      ch.sendToQueue(queue, Buffer.from('{not json'), { messageId: 'bad-json', persistent: true });
      ch.sendToQueue(queue, Buffer.from(JSON.stringify({ n: 'seven' })), { messageId: 'bad-schema' });
    });
    await bus.publish('', queue, [{ n: 3 }]);
    const handled = deferred<number>();
    const consumer = await bus.consume({
      queue,
      schema: Item,
      prefetch: 10,
      batchSize: 10,
      maxRetries: 3,
      handler: async (deliveries) => {
        for (const d of deliveries) handled.resolve(d.body.n);
      },
    });
    assert.equal(await handled.promise, 3);
    const letters = await deadLetters.wait(queue, 2);
    await consumer.cancel();
    const byId = new Map(letters.map((l) => [l.messageId, l]));
    assert.equal(byId.get('bad-json')?.body, '{not json');
    assert.match(byId.get('bad-json')?.reason ?? '', /not JSON/);
    assert.match(byId.get('bad-schema')?.reason ?? '', /schema at n/);
    assert.equal(byId.get('bad-schema')?.attempts, 1);
    assert.match(
      await registry.getSingleMetricAsString('banbus_bus_dead_lettered_total'),
      new RegExp(`queue="${queue.replace(/[.-]/g, '\\$&')}"} 2`),
    );
  });

  test('a message that keeps failing is dead-lettered after maxRetries; the others are handled once', async () => {
    const queue = await testQueue('failing');
    await bus.publish(
      '',
      queue,
      [1, 2, 3, 4].map((n) => ({ n })),
      { messageIds: ['1', '2', '3', '4'] },
    );
    const succeeded: number[] = [];
    const attemptsOfTwo: number[] = [];
    const othersDone = deferred();
    const consumer = await bus.consume({
      queue,
      schema: Item,
      prefetch: 10,
      batchSize: 10,
      maxRetries: 3,
      handler: async (deliveries) => {
        const two = deliveries.find((d) => d.body.n === 2);
        if (two) {
          if (deliveries.length === 1) attemptsOfTwo.push(two.attempt);
          throw new Error('cannot store n=2');
        }
        succeeded.push(...deliveries.map((d) => d.body.n));
        if (succeeded.length === 3) othersDone.resolve();
      },
    });
    const [letter] = await deadLetters.wait(queue, 1);
    await othersDone.promise;
    await consumer.cancel();
    assert.deepEqual(
      succeeded.sort((a, b) => a - b),
      [1, 3, 4],
    );
    assert.deepEqual(attemptsOfTwo, [1, 2, 3]);
    assert.equal(letter?.messageId, '2');
    assert.equal(letter?.reason, 'cannot store n=2');
    assert.equal(letter?.attempts, 3);
    assert.deepEqual(JSON.parse(letter?.body ?? ''), { n: 2 });
    const { messageCount } = await withChannel((ch) => ch.checkQueue(queue));
    assert.equal(messageCount, 0);
  });

  test('a transient error requeues without counting an attempt or dead-lettering', async () => {
    const queue = await testQueue('transient');
    const calls: { n: number; attempt: number }[] = [];
    const done = deferred<Delivery<Item>>();
    const consumer = await bus.consume({
      queue,
      schema: Item,
      prefetch: 10,
      batchSize: 10,
      maxRetries: 1, // one counted failure would already dead-letter it
      isTransient: (err) => err instanceof DatabaseAway,
      handler: async (deliveries) => {
        for (const d of deliveries) calls.push({ n: d.body.n, attempt: d.attempt });
        if (calls.length <= 3) throw new DatabaseAway('database is away');
        done.resolve(deliveries[0]!);
      },
    });
    await bus.publish('', queue, [{ n: 5 }]);
    const delivery = await done.promise;
    await consumer.cancel();
    assert.equal(delivery.attempt, 1);
    assert.deepEqual(
      calls,
      Array.from({ length: 4 }, () => ({ n: 5, attempt: 1 })),
    );
    assert.equal(deadLetters.of(queue).length, 0);
  });

  test('with concurrency 2 the next batch is handed over while the first is still in its handler, in order', async () => {
    const queue = await testQueue('concurrent');
    const firstStarted = deferred();
    const secondStarted = deferred();
    const release = deferred();
    const handled: number[][] = [];
    const consumer = await bus.consume({
      queue,
      schema: Item,
      prefetch: 20,
      batchSize: 2,
      maxRetries: 3,
      concurrency: 2,
      handler: async (deliveries) => {
        const ns = deliveries.map((d) => d.body.n);
        handled.push(ns);
        if (handled.length === 1) {
          firstStarted.resolve();
          // Held until the second batch reached its handler: only concurrency lets it.
          await release.promise;
        } else if (handled.length === 2) {
          secondStarted.resolve();
        }
      },
    });
    await bus.publish(
      '',
      queue,
      Array.from({ length: 6 }, (_, n) => ({ n })),
    );
    await firstStarted.promise;
    await secondStarted.promise;
    release.resolve();
    await waitFor(() => handled.flat().length === 6, { what: 'every message handled' });
    await consumer.cancel();
    // Handlers started in queue order, and every message was acked once (none came back).
    assert.deepEqual(
      handled.flat(),
      Array.from({ length: 6 }, (_, n) => n),
    );
    const { messageCount } = await withChannel((ch) => ch.checkQueue(queue));
    assert.equal(messageCount, 0);
  });

  test('with concurrency, a transient error requeues only after the other batch settled; nothing is lost', async () => {
    const queue = await testQueue('concurrent-transient');
    let failing = true;
    const seen = new Map<number, number>();
    const secondStarted = deferred();
    const consumer = await bus.consume({
      queue,
      schema: Item,
      prefetch: 20,
      batchSize: 1,
      maxRetries: 1, // one counted failure would dead-letter
      concurrency: 2,
      isTransient: (err) => err instanceof DatabaseAway,
      handler: async (deliveries) => {
        const n = deliveries[0]!.body.n;
        seen.set(n, (seen.get(n) ?? 0) + 1);
        if (n === 0 && failing) {
          // Fails while message 1 is still in its handler; that one must be acked, not requeued under it.
          await secondStarted.promise;
          failing = false;
          throw new DatabaseAway('database is away');
        }
        if (n === 1) {
          secondStarted.resolve();
          await new Promise((resolve) => setImmediate(resolve));
        }
      },
    });
    await bus.publish('', queue, [{ n: 0 }, { n: 1 }, { n: 2 }]);
    await waitFor(() => [0, 1, 2].every((n) => seen.has(n)) && (seen.get(0) ?? 0) >= 2, {
      what: 'every message handled, the failed one again',
    });
    await consumer.cancel();
    assert.equal(deadLetters.of(queue).length, 0);
    const { messageCount } = await withChannel((ch) => ch.checkQueue(queue));
    assert.equal(messageCount, 0);
  });

  test('with ackDelayMs, handled messages are acked together (multiple), each exactly once', async () => {
    const queue = await testQueue('ack-delay');
    // Every Channel shares this prototype: count the acks the consumer's channel sends.
    const probe = await bus.currentModel()!.createChannel();
    const proto = Object.getPrototypeOf(probe) as {
      ack(message: { fields: { deliveryTag: number } }, allUpTo?: boolean): void;
    };
    await probe.close();
    const original = proto.ack;
    const acks: { tag: number; allUpTo: boolean }[] = [];
    proto.ack = function (this: unknown, message, allUpTo) {
      acks.push({ tag: message.fields.deliveryTag, allUpTo: allUpTo === true });
      return original.call(this, message, allUpTo);
    };
    try {
      const handled: number[] = [];
      const consumer = await bus.consume({
        queue,
        schema: Item,
        prefetch: 50,
        batchSize: 1,
        maxRetries: 3,
        ackDelayMs: 50,
        handler: async ([d]) => void handled.push(d!.body.n),
      });
      await bus.publish(
        '',
        queue,
        Array.from({ length: 10 }, (_, n) => ({ n })),
      );
      await waitFor(() => handled.length === 10 && acks.some((a) => a.tag >= 10), {
        what: 'every message handled and acked',
      });
      // One ack frame for many deliveries, each covering everything before it.
      assert.ok(acks.length < 10, `${acks.length} ack frames for 10 messages`);
      assert.ok(acks.every((a) => a.allUpTo));
      await consumer.cancel();
      const { messageCount } = await withChannel((ch) => ch.checkQueue(queue));
      assert.equal(messageCount, 0, 'nothing came back after the channel closed');
      assert.deepEqual(
        handled,
        Array.from({ length: 10 }, (_, n) => n),
      );
    } finally {
      proto.ack = original;
    }
  });

  test('acks still owed go out on cancel, and before a transient failure requeues the rest', async () => {
    const queue = await testQueue('ack-owed');
    const seen = new Map<number, number>();
    let failing = true;
    const consumer = await bus.consume({
      queue,
      schema: Item,
      prefetch: 20,
      batchSize: 1,
      maxRetries: 1,
      // Longer than the test: only cancel and the requeue can send these acks.
      ackDelayMs: 600_000,
      isTransient: (err) => err instanceof DatabaseAway,
      handler: async ([d]) => {
        const n = d!.body.n;
        seen.set(n, (seen.get(n) ?? 0) + 1);
        if (n === 2 && failing) {
          failing = false;
          throw new DatabaseAway('database is away');
        }
      },
    });
    await bus.publish('', queue, [{ n: 0 }, { n: 1 }, { n: 2 }, { n: 3 }]);
    await waitFor(() => seen.size === 4 && seen.get(2) === 2, {
      what: 'every message handled, the failed one again',
    });
    // 0 and 1 were handled before 2 failed: acked, not requeued with it.
    assert.equal(seen.get(0), 1);
    assert.equal(seen.get(1), 1);
    await consumer.cancel();
    const { messageCount } = await withChannel((ch) => ch.checkQueue(queue));
    assert.equal(messageCount, 0, 'what was handled was acked at cancel, not returned to the queue');
  });

  test('a consumer declares its own queue and keeps it across cancel', async () => {
    const queue = `${namespace}.test-declared`;
    queues.push(queue);
    const got = deferred<number>();
    const consumer = await bus.consume({
      queue,
      declare: declareOf(queue),
      schema: Item,
      prefetch: 1,
      batchSize: 1,
      maxRetries: 1,
      handler: async ([d]) => got.resolve(d!.body.n),
    });
    await bus.publish('', queue, [{ n: 11 }]);
    assert.equal(await got.promise, 11);
    await consumer.cancel();
  });

  test('publishing to a missing exchange rejects, and the bus publishes again afterwards', async () => {
    await assert.rejects(bus.publish(`${namespace}.no-such-exchange`, 'x', [{ n: 1 }]), BusUnavailableError);
    const queue = await testQueue('after-error');
    await waitFor(
      () =>
        bus.publish('', queue, [{ n: 1 }]).then(
          () => true,
          () => false,
        ),
      { what: 'the publisher channel to reopen' },
    );
  });

  test('publish after close rejects with BusUnavailableError', async () => {
    const other = await Bus.connect({ url, namespace, logger });
    await other.close();
    assert.equal(other.connected, false);
    await assert.rejects(
      other.publish(bus.topology.reportsExchange, 'report.ban', [{ n: 1 }]),
      BusUnavailableError,
    );
  });

  test('many messages are pipelined', async () => {
    const queue = await testQueue('bulk');
    const bodies = Array.from({ length: 5_000 }, (_, n) => ({ n }));
    await Promise.all([bus.publish('', queue, bodies), bus.publish('', queue, bodies)]);
    const { messageCount } = await withChannel((ch) => ch.checkQueue(queue));
    assert.equal(messageCount, 10_000);
  });
});
