// Test helper: reads what ingest published by taking messages off `<ns>.persister` (nobody else consumes
// it in these tests), so a test sees exactly the reports that reached the broker.
import { connect, type Channel, type ChannelModel } from 'amqplib';
import { ReportSchema, type Report } from '@banbus/core';
import { waitFor } from '../../../test/harness/index.js';

export interface Published {
  report: Report;
  messageId: string | undefined;
  routingKey: string;
  persistent: boolean;
}

export class QueueReader {
  private constructor(
    private readonly connection: ChannelModel,
    private readonly channel: Channel,
    readonly queue: string,
  ) {}

  static async open(url: string, queue: string): Promise<QueueReader> {
    const connection = await connect(url);
    connection.on('error', () => undefined);
    const channel = await connection.createChannel();
    channel.on('error', () => undefined);
    return new QueueReader(connection, channel, queue);
  }

  private buffered: Published[] = [];

  /**
   * The next report if there is one; its message is acked at once. The Bus packs a batch of reports
   * into one message whose body is an array (routing key `report.batch`), so one message may hold many.
   */
  async get(): Promise<Published | null> {
    if (this.buffered.length === 0) {
      const msg = await this.channel.get(this.queue, { noAck: true });
      if (msg === false) return null;
      const body: unknown = JSON.parse(msg.content.toString('utf8'));
      const reports = Array.isArray(body) ? body : [body];
      this.buffered = reports.map((r) => ({
        report: ReportSchema.parse(r),
        messageId: msg.properties.messageId as string | undefined,
        routingKey: msg.fields.routingKey,
        persistent: msg.properties.deliveryMode === 2,
      }));
    }
    return this.buffered.shift() ?? null;
  }

  /** Exactly `n` reports: waits for them, then checks that no further one is there. */
  async take(n: number, timeoutMs = 5_000): Promise<Published[]> {
    const out: Published[] = [];
    await waitFor(
      async () => {
        for (let m = await this.get(); m; m = out.length < n ? await this.get() : null) out.push(m);
        return out.length >= n;
      },
      { timeoutMs, what: `${n} report(s) on ${this.queue} (have ${out.length})` },
    );
    const extra = await this.get();
    if (extra)
      throw new Error(
        `expected ${n} report(s) on ${this.queue}, found more: ${JSON.stringify(extra.report)}`,
      );
    return out;
  }

  async messageCount(): Promise<number> {
    return (await this.channel.checkQueue(this.queue)).messageCount;
  }

  async close(): Promise<void> {
    await this.connection.close().catch(() => undefined);
  }
}
