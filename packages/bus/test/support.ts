// Helpers for the bus tests: a raw AMQP connection that reads the dead-letter queue and feeds queues
// directly (bytes the Bus itself would never publish).
import { connect, type Channel, type ChannelModel, type ConsumeMessage } from 'amqplib';
import { topology } from '../src/index.js';

export interface DeadLetter {
  body: string;
  reason: string;
  queue: string;
  attempts: number;
  messageId: string | undefined;
}

/** Consumes `${ns}.dead-letter` and hands out the dead letters of one queue as they arrive. */
export class DeadLetterReader {
  readonly letters: DeadLetter[] = [];
  private waiters: { queue: string; count: number; resolve: () => void }[] = [];

  private constructor(
    private readonly connection: ChannelModel,
    readonly channel: Channel,
  ) {}

  static async start(url: string, namespace: string): Promise<DeadLetterReader> {
    const connection = await connect(url);
    connection.on('error', () => undefined);
    const channel = await connection.createChannel();
    channel.on('error', () => undefined);
    const reader = new DeadLetterReader(connection, channel);
    await channel.consume(topology(namespace).deadLetterQueue, (m) => reader.onMessage(m), { noAck: true });
    return reader;
  }

  private onMessage(message: ConsumeMessage | null): void {
    if (!message) return;
    const headers = message.properties.headers ?? {};
    this.letters.push({
      body: message.content.toString('utf8'),
      reason: String(headers['x-banbus-reason'] ?? ''),
      queue: String(headers['x-banbus-queue'] ?? ''),
      attempts: Number(headers['x-banbus-attempts']),
      messageId: message.properties.messageId as string | undefined,
    });
    for (const w of [...this.waiters]) {
      if (this.of(w.queue).length >= w.count) {
        this.waiters = this.waiters.filter((x) => x !== w);
        w.resolve();
      }
    }
  }

  of(queue: string): DeadLetter[] {
    return this.letters.filter((l) => l.queue === queue);
  }

  /** Resolves with the dead letters of `queue` once there are `count` of them. */
  async wait(queue: string, count: number, timeoutMs = 10_000): Promise<DeadLetter[]> {
    if (this.of(queue).length < count) {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(
          () =>
            reject(new Error(`expected ${count} dead letters from ${queue}, got ${this.of(queue).length}`)),
          timeoutMs,
        );
        this.waiters.push({
          queue,
          count,
          resolve: () => {
            clearTimeout(timer);
            resolve();
          },
        });
      });
    }
    return this.of(queue);
  }

  async close(): Promise<void> {
    await this.connection.close().catch(() => undefined);
  }
}

/** A promise with its resolve function outside, for "wait until the handler saw X". */
export function deferred<T = void>(
  timeoutMs = 10_000,
  what = 'event',
): { promise: Promise<T>; resolve: (v: T) => void } {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((res, rej) => {
    const timer = setTimeout(
      () => rej(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)),
      timeoutMs,
    );
    resolve = (v) => {
      clearTimeout(timer);
      res(v);
    };
  });
  return { promise, resolve };
}
