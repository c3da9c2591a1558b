// Live updates for open consoles (Server-Sent Events on GET /v1/admin/events). Decision changes are learnt
// from PostgreSQL's `banbus_decision_log` notification, which every persister sends at commit with the
// newest seq — so a console sees changes made by any process, without a queue of its own on the broker.
// Audit entries and applier heartbeats are sent by this process as they happen.
import type { Request, Response } from 'express';
import { CHANNELS, listenChannel, type Listener } from '@banbus/db';
import type { Logger } from '@banbus/runtime';

export type LiveEvent = 'decisions' | 'audit' | 'appliers';

export class LiveEvents {
  private readonly clients = new Set<Response>();
  private listener: Listener | undefined;
  private pendingSeq: number | undefined;
  private throttle: NodeJS.Timeout | undefined;
  private keepalive: NodeJS.Timeout | undefined;
  private retry: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(
    private readonly options: {
      databaseUrl: string;
      logger: Logger;
      /** Decision events are sent at most this often: a burst of thousands of bans is one refresh. */
      throttleMs?: number;
      keepaliveMs?: number;
    },
  ) {}

  get connected(): number {
    return this.clients.size;
  }

  /** Starts listening; when PostgreSQL is away it keeps trying in the background (clients just wait). */
  async start(): Promise<void> {
    this.keepalive = setInterval(() => {
      // A comment line keeps proxies from closing an idle stream.
      for (const res of this.clients) res.write(': keepalive\n\n');
    }, this.options.keepaliveMs ?? 15_000);
    this.keepalive.unref();
    await this.listen();
  }

  private async listen(): Promise<void> {
    if (this.stopped) return;
    try {
      this.listener = await listenChannel(
        this.options.databaseUrl,
        CHANNELS.decisionLog,
        (payload) => this.decisionsChanged(Number(payload)),
        { logger: this.options.logger, onReconnect: () => this.decisionsChanged(undefined) },
      );
    } catch (err) {
      this.options.logger.warn(
        { err: (err as Error).message },
        'cannot listen for decision changes; retrying',
      );
      this.retry = setTimeout(() => void this.listen(), 5_000);
      this.retry.unref();
    }
  }

  private decisionsChanged(seq: number | undefined): void {
    if (seq !== undefined && Number.isFinite(seq)) this.pendingSeq = Math.max(this.pendingSeq ?? 0, seq);
    if (this.throttle) return;
    this.throttle = setTimeout(() => {
      this.throttle = undefined;
      const data = this.pendingSeq === undefined ? {} : { seq: this.pendingSeq };
      this.pendingSeq = undefined;
      this.send('decisions', data);
    }, this.options.throttleMs ?? 250);
  }

  send(event: LiveEvent, data: unknown): void {
    const text = `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
    for (const res of this.clients) res.write(text);
  }

  /** Turns the response into an event stream until the client goes away or the console stops. */
  attach(req: Request, res: Response, hello: unknown): void {
    res.status(200);
    res.set({
      'Content-Type': 'text/event-stream; charset=utf-8',
      'Cache-Control': 'no-store',
      // nginx would otherwise buffer the stream.
      'X-Accel-Buffering': 'no',
    });
    res.flushHeaders();
    res.write(`retry: 3000\nevent: hello\ndata: ${JSON.stringify(hello)}\n\n`);
    this.clients.add(res);
    req.on('close', () => this.clients.delete(res));
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.keepalive);
    clearTimeout(this.throttle);
    clearTimeout(this.retry);
    for (const res of this.clients) res.end();
    this.clients.clear();
    await this.listener?.close();
  }
}
