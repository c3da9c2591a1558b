import { randomBytes } from 'node:crypto';
import { connect, type Channel, type ChannelModel, type ConsumeMessage } from 'amqplib';
import type { DecisionChange } from '@banbus/core';
import { topology } from '@banbus/bus';

const LOCAL_URL = 'amqp://guest:guest@127.0.0.1:5672';

let resolved: Promise<string> | undefined;

/**
 * Where the tests' RabbitMQ is: AMQP_URL, else the local broker if it answers, else a testcontainers
 * RabbitMQ when a Docker engine answers (one per test process, removed by testcontainers' reaper).
 */
export function amqpTestUrl(): Promise<string> {
  resolved ??= findBroker();
  return resolved;
}

async function findBroker(): Promise<string> {
  const fromEnv = process.env.AMQP_URL;
  if (fromEnv) return fromEnv;
  if (await answers(LOCAL_URL)) return LOCAL_URL;
  if (await dockerAnswers()) {
    const { RabbitMQContainer } = await import('@testcontainers/rabbitmq');
    const container = await new RabbitMQContainer('rabbitmq:3.13-alpine').start();
    return container.getAmqpUrl();
  }
  throw new Error(
    'No RabbitMQ: set AMQP_URL or start RabbitMQ on 127.0.0.1:5672 with user guest/guest (or a Docker engine for testcontainers).',
  );
}

async function answers(url: string): Promise<boolean> {
  try {
    const connection = await connect(url, { timeout: 2_000 });
    await connection.close();
    return true;
  } catch {
    return false;
  }
}

async function dockerAnswers(): Promise<boolean> {
  try {
    const { getContainerRuntimeClient } = await import('testcontainers');
    await getContainerRuntimeClient();
    return true;
  } catch {
    return false;
  }
}

/** A namespace of its own for one test file: 'bbt-<random hex>'. */
export function testNamespace(): string {
  return `bbt-${randomBytes(6).toString('hex')}`;
}

/**
 * Deletes every queue and exchange of topology(namespace) that exists, plus `extraQueues` (applier
 * queues, say: pass their full names). Missing ones are fine.
 */
export async function deleteNamespace(
  url: string,
  namespace: string,
  extraQueues: readonly string[] = [],
): Promise<void> {
  const t = topology(namespace);
  const queues = [t.persisterQueue, t.aggregatorQueue, t.deadLetterQueue, ...extraQueues];
  const exchanges = [t.reportsExchange, t.decisionsExchange, t.deadLetterExchange];
  const connection = await connect(url);
  connection.on('error', () => undefined);
  try {
    // A delete of something missing is fine on RabbitMQ 3.10+, but an error on a channel closes it: use a
    // fresh channel whenever one died.
    let channel = await openChannel(connection);
    for (const queue of queues) {
      try {
        await channel.deleteQueue(queue);
      } catch {
        channel = await openChannel(connection);
      }
    }
    for (const exchange of exchanges) {
      try {
        await channel.deleteExchange(exchange);
      } catch {
        channel = await openChannel(connection);
      }
    }
  } finally {
    await connection.close().catch(() => undefined);
  }
}

async function openChannel(connection: ChannelModel): Promise<Channel> {
  const channel = await connection.createChannel();
  channel.on('error', () => undefined);
  return channel;
}

interface Waiter {
  predicate: (c: DecisionChange) => boolean;
  resolve: (c: DecisionChange) => void;
}

/** Collects the decision changes published on `${ns}.decisions` through an exclusive, auto-delete queue. */
export class DecisionListener {
  readonly changes: DecisionChange[] = [];
  private readonly taken = new Set<number>();
  private waiters: Waiter[] = [];

  private constructor(
    private readonly connection: ChannelModel,
    private readonly channel: Channel,
    private readonly onChange?: (change: DecisionChange, receivedAt: number) => void,
  ) {}

  /**
   * `onChange`, when given, sees each change as its message arrives (with performance.now() of the
   * arrival): for timing, where searching the kept changes once per change would cost quadratic time.
   */
  static async start(
    url: string,
    namespace: string,
    options: { onChange?: (change: DecisionChange, receivedAt: number) => void } = {},
  ): Promise<DecisionListener> {
    const t = topology(namespace);
    const connection = await connect(url);
    connection.on('error', () => undefined);
    const channel = await connection.createChannel();
    channel.on('error', () => undefined);
    await channel.assertExchange(t.decisionsExchange, 'fanout', { durable: true });
    const { queue } = await channel.assertQueue('', { exclusive: true, autoDelete: true, durable: false });
    await channel.bindQueue(queue, t.decisionsExchange, '');
    const listener = new DecisionListener(connection, channel, options.onChange);
    await channel.consume(queue, (message) => listener.onMessage(message), { noAck: true });
    return listener;
  }

  private onMessage(message: ConsumeMessage | null): void {
    if (!message) return;
    const receivedAt = performance.now();
    let body: unknown;
    try {
      body = JSON.parse(message.content.toString('utf8'));
    } catch {
      return; // not a decision change: nothing a test could wait for
    }
    // One change or a packed array of them, as the relay publishes.
    const changes = (Array.isArray(body) ? body : [body]) as DecisionChange[];
    for (const change of changes) {
      this.onChange?.(change, receivedAt);
      const index = this.changes.length;
      this.changes.push(change);
      const waiter = this.waiters.find((w) => w.predicate(change));
      if (waiter) {
        this.taken.add(index);
        this.waiters = this.waiters.filter((w) => w !== waiter);
        waiter.resolve(change);
      }
    }
  }

  /** The first change not yet taken by an earlier next() that matches; waits for it if none arrived yet. */
  next(predicate: (c: DecisionChange) => boolean = () => true, timeoutMs = 10_000): Promise<DecisionChange> {
    const index = this.changes.findIndex((c, i) => !this.taken.has(i) && predicate(c));
    if (index >= 0) {
      this.taken.add(index);
      return Promise.resolve(this.changes[index]!);
    }
    return new Promise<DecisionChange>((resolve, reject) => {
      const waiter: Waiter = {
        predicate,
        resolve: (c) => {
          clearTimeout(timer);
          resolve(c);
        },
      };
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        reject(
          new Error(`no matching decision change within ${timeoutMs} ms (got ${this.changes.length} in all)`),
        );
      }, timeoutMs);
      this.waiters.push(waiter);
    });
  }

  async close(): Promise<void> {
    await this.channel.close().catch(() => undefined);
    await this.connection.close().catch(() => undefined);
  }
}
