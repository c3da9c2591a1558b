import { EventEmitter } from 'node:events';
import { performance } from 'node:perf_hooks';
import {
  connect,
  type Channel,
  type ChannelModel,
  type ConfirmChannel,
  type ConsumeMessage,
  type MessageProperties,
  type Options,
  type RecoveringChannelModel,
} from 'amqplib';
import type { ZodType } from 'zod';
import {
  MAX_CHANGES_PER_MESSAGE,
  MAX_REPORTS_PER_MESSAGE,
  type DecisionChange,
  type Report,
} from '@banbus/core';
import { Counter, Gauge, metric, type Logger, type Registry } from '@banbus/runtime';
import { declareTopology, topology, type Topology } from './topology.js';

/** The broker cannot take the message now: not connected, the channel closed, it nacked, or it did not confirm in time. */
export class BusUnavailableError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'BusUnavailableError';
  }
}

export interface BusOptions {
  url: string;
  namespace: string;
  logger: Logger;
  registry?: Registry;
  /** How long a publish waits for the broker's confirms before rejecting. Default 5000 ms. */
  publishTimeoutMs?: number;
  /** Reconnect attempts before the first connection counts as failed (`connect` rejects). Default 8 (~15 s).
   *  After the first connection the Bus retries forever. */
  initialConnectRetries?: number;
  /** Longest pause between reconnect attempts. Default 5000 ms. */
  maxReconnectDelayMs?: number;
  /**
   * What this process declares on every (re)connect. `'shared'` (default): the shared topology (reports
   * exchange and persister queue, decisions fanout, dead-letter exchange and queue), as the central services
   * need. `'own-queues'`: nothing shared, only a check that the decisions fanout exists (a passive declare,
   * which needs no permission); consumers still declare their own queues in `declare`. For clients whose
   * RabbitMQ user may configure nothing but their own queue, such as a host's route-applier
   * (docs/rabbitmq.md): declaring the shared names needs configure permission on every one of them.
   */
  declares?: 'shared' | 'own-queues';
}

export interface PublishOptions {
  /** One per body, same order. */
  messageIds?: string[];
  headers?: Record<string, unknown>;
}

export interface Delivery<T> {
  body: T;
  /** 1 on the first delivery; counts failed handler runs of this message (survives redelivery). */
  attempt: number;
  messageId: string | undefined;
}

export interface ConsumeOptions<T> {
  queue: string;
  /** Extra topology for this consumer (declare/bind its queue); re-run on every reconnect. */
  declare?: (channel: Channel) => Promise<void>;
  /** Invalid body (not JSON / fails the schema) → dead-letter at once with the reason, acked. */
  schema: ZodType<T>;
  prefetch: number;
  /** The handler gets 1..batchSize deliveries at once, in queue order. */
  batchSize: number;
  /** Attempts before dead-lettering a message that keeps failing. */
  maxRetries: number;
  /** Errors for which retrying is pointless to count (e.g. the database is away): the batch is requeued after
   *  a backoff without counting an attempt, consumption paused meanwhile. */
  isTransient?: (err: unknown) => boolean;
  handler: (deliveries: Delivery<T>[]) => Promise<void>;
  /**
   * Batches handled at once (default 1). The next batch is taken and parsed while earlier ones are still in
   * their handler, so a handler that waits on I/O can overlap its batches. Handlers are still called in queue
   * order (each call starts after the previous one started); each batch is acked when its own handler
   * resolved. A transient failure requeues only once every batch in flight has settled.
   */
  concurrency?: number;
  /**
   * How a message that failed (not transiently) comes back before its last attempt. `'republish'` (default):
   * a copy with x-banbus-attempts goes to the queue's tail through the default exchange and the original is
   * acked, so it holds up nothing behind it. `'requeue'`: it is returned to its place (nack) and its attempts
   * are counted in this process. Publishing to the default exchange needs write permission on
   * `amq.default`, which would let a user publish to any queue by name (the persister's among them): a
   * client restricted to its own queue (docs/rabbitmq.md) uses `'requeue'`.
   */
  retry?: 'republish' | 'requeue';
  /**
   * Acks of handled messages go out together, at most this long after their handler resolved: one
   * basic.ack (multiple) for a run of settled deliveries instead of one frame each, which is a socket
   * write and a wake-up for the client and the broker. 0 (default): at the end of the event-loop turn,
   * which still joins the acks of one batch. Rule 2 holds either way (nothing is acked before its handler
   * resolved); unacked messages count against prefetch, and a crash before the ack delivers them again
   * (handlers are idempotent).
   */
  ackDelayMs?: number;
}

export interface Consumer {
  cancel(): Promise<void>;
  /**
   * True when nothing older than this call is left on the way to the handler: the queue holds no ready
   * message, and every delivery received so far has been handed to a started handler call. Asked twice of
   * the broker: a delivery the broker dispatched just before its first answer is in this process by the
   * second. False while disconnected, paused after a transient failure, or cancelled.
   */
  caughtUp(): Promise<boolean>;
}

type BusEvent = 'connected' | 'disconnected';

/** One message ready for a confirm channel. */
interface Outgoing {
  exchange: string;
  routingKey: string;
  content: Buffer;
  options: Options.Publish;
}

interface Metrics {
  published: Counter;
  publishFailures: Counter;
  deadLettered: Counter<'queue'>;
  connected: Gauge;
}

export const ATTEMPTS_HEADER = 'x-banbus-attempts';
export const REASON_HEADER = 'x-banbus-reason';
export const QUEUE_HEADER = 'x-banbus-queue';

const DEFAULT_PUBLISH_TIMEOUT_MS = 5_000;

/**
 * One AMQP connection with a confirm channel for publishing and one channel per consumer. amqplib's
 * `recovery` reconnects with backoff after the broker goes away and re-runs `setup`, where the topology is
 * declared again and the publisher and every consumer get fresh channels.
 */
export class Bus {
  readonly topology: Topology;
  private readonly logger: Logger;
  private readonly events = new EventEmitter();
  private readonly metrics: Metrics | null;
  private readonly publishTimeoutMs: number;
  private readonly consumers = new Set<QueueConsumer<unknown>>();
  private connection: RecoveringChannelModel | null = null;
  /** The live connection (null while disconnected); consumers create their channels on it. */
  private model: ChannelModel | null = null;
  private publisher: ConfirmChannel | null = null;
  /** Why the publisher channel closed last (e.g. 404 no exchange), to put in the error of the publishes it took down. */
  private publisherError: Error | null = null;
  private isConnected = false;
  private blocked = false;
  private closing = false;

  private constructor(private readonly options: BusOptions) {
    this.topology = topology(options.namespace);
    this.logger = options.logger.child({ component: 'bus' });
    this.publishTimeoutMs = options.publishTimeoutMs ?? DEFAULT_PUBLISH_TIMEOUT_MS;
    this.metrics = options.registry ? createMetrics(options.registry) : null;
    // Nobody has to listen; an EventEmitter without listeners is fine for these two events.
    this.events.setMaxListeners(100);
  }

  /** Connects (retrying a few times), declares the topology and keeps reconnecting after that by itself. */
  static async connect(options: BusOptions): Promise<Bus> {
    const bus = new Bus(options);
    await bus.start();
    return bus;
  }

  get connected(): boolean {
    return this.isConnected;
  }

  on(event: BusEvent, listener: () => void): this {
    this.events.on(event, listener);
    return this;
  }

  off(event: BusEvent, listener: () => void): this {
    this.events.off(event, listener);
    return this;
  }

  once(event: BusEvent, listener: () => void): this {
    this.events.once(event, listener);
    return this;
  }

  private async start(): Promise<void> {
    const connection = await connect(this.options.url, {
      // Without it Nagle's algorithm holds small frames (an ack, a lone publish) for up to 40 ms, which
      // alone would exceed the whole report → applied latency budget.
      noDelay: true,
      recovery: {
        initialDelay: 100,
        maxDelay: this.options.maxReconnectDelayMs ?? 5_000,
        factor: 2,
        jitter: 0.2,
        maxRetries: Infinity,
        initialMaxRetries: this.options.initialConnectRetries ?? 8,
        waitForConnect: false,
        setup: (model: ChannelModel) => this.setup(model),
      },
    });
    this.connection = connection;
    connection.on('connect', () => {
      if (this.closing) return;
      this.blocked = false;
      this.isConnected = true;
      this.metrics?.connected.set(1);
      this.logger.info({ namespace: this.topology.namespace }, 'connected to RabbitMQ');
      this.events.emit('connected');
    });
    connection.on('disconnect', (err: Error) => this.onDisconnected(err));
    connection.on('connect-failed', (err: Error) => {
      this.logger.warn({ err: describe(err) }, 'RabbitMQ connection attempt failed');
    });
    connection.on('reconnect-scheduled', (info: { attempt: number; delay: number }) => {
      this.logger.debug(info, 'reconnecting to RabbitMQ');
    });
    connection.on('reconnect-failed', (err: Error) => {
      this.logger.error({ err: describe(err) }, 'gave up reconnecting to RabbitMQ');
    });
    connection.on('error', (err: Error) => {
      this.logger.warn({ err: describe(err) }, 'RabbitMQ connection error');
    });
    connection.on('handler-error', (err: Error, event: string) => {
      this.logger.error({ err, event }, 'error thrown in an AMQP event handler');
    });
    // While the broker blocks publishers (memory or disk alarm) a publish would only wait for its timeout.
    connection.on('blocked', (reason: string) => {
      this.blocked = true;
      this.logger.warn({ reason }, 'RabbitMQ blocked publishing');
    });
    connection.on('unblocked', () => {
      this.blocked = false;
      this.logger.info('RabbitMQ unblocked publishing');
    });
    try {
      await connection.waitForConnect();
    } catch (err) {
      throw new BusUnavailableError(
        `cannot connect to RabbitMQ at ${redactUrl(this.options.url)}: ${describe(err)}`,
        {
          cause: err,
        },
      );
    }
  }

  /** Runs after every (re)connect, before amqplib reports 'connect'. Throwing makes amqplib retry. */
  private async setup(model: ChannelModel): Promise<void> {
    // amqplib binds its own listeners only after setup resolved: without this an 'error' would be thrown.
    model.on('error', (err: Error) => this.logger.debug({ err: describe(err) }, 'AMQP connection error'));
    model.once('close', () => {
      if (this.model === model) {
        this.model = null;
        this.publisher = null;
      }
    });
    const declaring = await model.createChannel();
    declaring.on('error', (err: Error) =>
      this.logger.warn({ err: describe(err) }, 'declaring the topology failed'),
    );
    if ((this.options.declares ?? 'shared') === 'shared') {
      await declareTopology(declaring, this.topology);
    } else {
      // Binding a queue to a missing exchange fails anyway; checking first names the cause, and the
      // reconnect loop waits until the central services have declared it.
      await declaring.checkExchange(this.topology.decisionsExchange).catch((err: unknown) => {
        throw new Error(
          `the decision exchange ${this.topology.decisionsExchange} is not there (the central services declare it): ${describe(err)}`,
          { cause: err },
        );
      });
    }
    await declaring.close();
    this.model = model;
    await this.openPublisher(model);
    for (const consumer of this.consumers) {
      // One consumer failing to attach (say, its declare throws) must not keep the rest of the bus down.
      await consumer.attach(model).catch((err: unknown) => consumer.attachFailed(model, err));
    }
  }

  private async openPublisher(model: ChannelModel): Promise<void> {
    const channel = await model.createConfirmChannel();
    channel.on('error', (err: Error) => {
      this.publisherError = err;
      this.logger.warn({ err: describe(err) }, 'publisher channel error');
    });
    channel.on('close', () => {
      if (this.publisher !== channel) return;
      this.publisher = null;
      // A channel-level error (publish to a missing exchange) closes only this channel: open a new one. When
      // the whole connection went, model is already cleared (connection 'close' comes after the channels').
      setImmediate(() => void this.reopenPublisher(model, 1));
    });
    this.publisherError = null;
    this.publisher = channel;
  }

  private async reopenPublisher(model: ChannelModel, attempt: number): Promise<void> {
    if (this.closing || this.model !== model || this.publisher) return;
    try {
      await this.openPublisher(model);
    } catch (err) {
      if (this.model !== model) return;
      const delay = Math.min(5_000, 100 * 2 ** attempt);
      this.logger.warn({ err: describe(err), delay }, 'reopening the publisher channel failed');
      setTimeout(() => void this.reopenPublisher(model, attempt + 1), delay).unref();
    }
  }

  private onDisconnected(err: Error): void {
    this.model = null;
    this.publisher = null;
    const was = this.isConnected;
    this.isConnected = false;
    this.metrics?.connected.set(0);
    if (this.closing) return;
    this.logger.warn({ err: describe(err) }, 'lost the RabbitMQ connection; reconnecting');
    if (was) this.events.emit('disconnected');
  }

  /** Persistent JSON messages on a confirm channel; resolves only when the broker confirmed all of them.
   *  Rejects with BusUnavailableError when not connected, nacked or the channel closed (never hangs: timeout). */
  async publish(
    exchange: string,
    routingKey: string,
    bodies: readonly unknown[],
    opts: PublishOptions = {},
  ): Promise<void> {
    const messages = bodies.map((body, i) => ({
      exchange,
      routingKey,
      content: encode(body),
      options: publishProperties(opts.messageIds?.[i], opts.headers),
    }));
    await this.send(messages);
  }

  /** To the reports exchange with routing key `report.<action>`, messageId = report.id, in the given order. */
  async publishReports(reports: readonly Report[]): Promise<void> {
    // A lone report travels as itself; more are packed MAX_REPORTS_PER_MESSAGE to a message, which is
    // what lets a batch of thousands be confirmed in milliseconds. The messageId is the first report's id.
    const messages = [];
    for (let i = 0; i < reports.length; i += MAX_REPORTS_PER_MESSAGE) {
      const chunk = reports.slice(i, i + MAX_REPORTS_PER_MESSAGE);
      const first = chunk[0]!;
      messages.push({
        exchange: this.topology.reportsExchange,
        routingKey: chunk.length === 1 ? `report.${first.action}` : 'report.batch',
        content: encode(chunk.length === 1 ? first : chunk),
        options: publishProperties(first.id),
      });
    }
    await this.send(messages);
  }

  /**
   * To the decisions fanout in the given order (one channel keeps it), messageId = String(seq).
   *
   * Transient (delivery mode 1): PostgreSQL's decision_log is the record of every change, and every
   * consumer heals from it (snapshot/delta API, or the log itself for the aggregator) when a seq is
   * missing. Persistent, each message was written to disk once per host queue (one per host of the fleet),
   * which cost the broker about a third of its CPU at 500 reports/s with 20 hosts. A quorum queue (the
   * aggregator's) keeps every message durably whatever the mode. What a broker restart takes from a
   * classic host queue is caught up by its applier with a delta when it reconnects.
   */
  async publishDecisionChanges(changes: readonly DecisionChange[]): Promise<void> {
    // Packed like reports: a relay round of thousands of changes is a handful of messages for the broker
    // and for every consumer, not thousands. A lone change travels as itself; messageId = first seq.
    const messages = [];
    for (let i = 0; i < changes.length; i += MAX_CHANGES_PER_MESSAGE) {
      const chunk = changes.slice(i, i + MAX_CHANGES_PER_MESSAGE);
      messages.push({
        exchange: this.topology.decisionsExchange,
        routingKey: '',
        content: encode(chunk.length === 1 ? chunk[0] : chunk),
        options: { ...publishProperties(String(chunk[0]!.seq)), persistent: false },
      });
    }
    await this.send(messages);
  }

  /**
   * Publishes every message at once (pipelined: one round trip for the whole batch, not one per message)
   * and resolves when the broker confirmed the last of them.
   * @internal also used by consumers to republish retries and dead letters.
   */
  async send(messages: readonly Outgoing[]): Promise<void> {
    if (messages.length === 0) return;
    try {
      await this.sendConfirmed(messages);
      this.metrics?.published.inc(messages.length);
    } catch (err) {
      this.metrics?.publishFailures.inc(messages.length);
      throw err;
    }
  }

  private sendConfirmed(messages: readonly Outgoing[]): Promise<void> {
    const channel = this.publisher;
    if (this.closing) return Promise.reject(new BusUnavailableError('the bus is closed'));
    if (!this.isConnected || !channel) {
      return Promise.reject(new BusUnavailableError('not connected to RabbitMQ'));
    }
    if (this.blocked)
      return Promise.reject(new BusUnavailableError('RabbitMQ is blocking publishers (resource alarm)'));
    return new Promise<void>((resolve, reject) => {
      let unconfirmed = messages.length;
      let settled = false;
      const finish = (err?: Error): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (err) reject(err);
        else resolve();
      };
      const timer = setTimeout(() => {
        finish(
          new BusUnavailableError(
            `RabbitMQ did not confirm ${unconfirmed} of ${messages.length} messages within ${this.publishTimeoutMs} ms`,
          ),
        );
      }, this.publishTimeoutMs);
      const onConfirm = (err: unknown): void => {
        if (err) {
          finish(this.publishError(err));
          return;
        }
        unconfirmed -= 1;
        if (unconfirmed === 0) finish();
      };
      try {
        for (const m of messages) channel.publish(m.exchange, m.routingKey, m.content, m.options, onConfirm);
      } catch (err) {
        // amqplib throws synchronously when the channel is already closing or closed.
        finish(this.publishError(err));
      }
    });
  }

  private publishError(err: unknown): BusUnavailableError {
    const message = describe(err);
    if (message === 'message nacked') return new BusUnavailableError('RabbitMQ refused (nacked) the message');
    const why = this.publisherError ? `: ${describe(this.publisherError)}` : '';
    return new BusUnavailableError(
      `the publisher channel closed before RabbitMQ confirmed (${message})${why}`,
      {
        cause: err,
      },
    );
  }

  /** Starts consuming; when not connected the consumer starts with the next connection. */
  async consume<T>(options: ConsumeOptions<T>): Promise<Consumer> {
    if (this.closing) throw new BusUnavailableError('the bus is closed');
    validateConsumeOptions(options);
    const consumer = new QueueConsumer<T>(
      this,
      options,
      this.logger.child({ queue: options.queue }),
      this.metrics,
    );
    const model = this.model;
    if (model) await consumer.attach(model);
    this.consumers.add(consumer as QueueConsumer<unknown>);
    return consumer;
  }

  /** @internal */
  currentModel(): ChannelModel | null {
    return this.model;
  }

  /** @internal */
  forget(consumer: QueueConsumer<unknown>): void {
    this.consumers.delete(consumer);
  }

  /** Stops the consumers (their unacked messages go back to the queue) and closes the connection. */
  async close(): Promise<void> {
    if (this.closing) return;
    const consumers = [...this.consumers];
    await Promise.allSettled(consumers.map((c) => c.cancel()));
    this.closing = true;
    const wasConnected = this.isConnected;
    this.isConnected = false;
    this.model = null;
    this.publisher = null;
    this.metrics?.connected.set(0);
    await this.connection?.close().catch(() => undefined);
    if (wasConnected) this.events.emit('disconnected');
  }
}

interface Held {
  message: ConsumeMessage;
  /** The channel it came on: its delivery tag only means something there. */
  channel: Channel;
  /** Handled: an ack is owed (sent with the next flush), or it was nacked (nothing owed). */
  settled?: 'ack' | 'nacked';
}

interface Parsed<T> {
  held: Held;
  delivery: Delivery<T>;
}

const MAX_TRANSIENT_BACKOFF_MS = 10_000;
/** Longest time a partial batch waits for more deliveries that are still arriving. */
const LINGER_MS = 2;

/**
 * One queue's consumer. Deliveries are collected as they arrive; the handler runs when batchSize are
 * there or when a turn of the event loop brought no more (so one lone message is handled at once, while a
 * burst that arrives while the handler is busy forms the next batch). One batch at a time, in queue order.
 *
 * Attempt counting: a failed message is republished to the tail of its queue with x-banbus-attempts
 * incremented, and the original acked. Not x-delivery-count of quorum queues, because that counter also
 * moves on every requeue that is not a failure (transient backoff, a consumer or broker restart) and
 * RabbitMQ 4.3 changed when it moves (basic.nack no longer counts, basic.reject does); our header counts
 * exactly the handler failures, on any queue type and broker version, and a failing message never holds
 * up the messages behind it.
 */
export class QueueConsumer<T> implements Consumer {
  private channel: Channel | null = null;
  /** The connection `channel` belongs to. */
  private channelModel: ChannelModel | null = null;
  private consumerTag: string | null = null;
  /** A batch never waits for more than prefetch deliveries: the broker would not send them. */
  private readonly batchSize: number;
  private buffer: Held[] = [];
  /** Batches in process() now. */
  private active = 0;
  private readonly concurrency: number;
  /** Resolves when the previous batch's handler was called: handlers start in queue order. */
  private handlerTurn: Promise<void> = Promise.resolve();
  /** Batches parked in handledAsTransient, waiting for the others to settle before requeueing. */
  private parked = 0;
  /** Batches taken from the buffer whose handler has not been called yet. */
  private awaitingTurn = 0;
  private settledWaiters: (() => void)[] = [];
  private flushScheduled = false;
  private paused = false;
  private cancelled = false;
  private attaching = false;
  private transientFailures = 0;
  /** Cut the transient backoffs short (cancel, channel closed). */
  private readonly wakers = new Set<() => void>();
  private idleWaiters: (() => void)[] = [];
  /** retry 'requeue': failed handler runs per message (the message itself cannot carry the count back). */
  private readonly failures = new Map<string, number>();
  /** Deliveries of the current channel in delivery order, until their ack went out (see ackDelayMs). */
  private outstanding: Held[] = [];
  private ackFlush: { cancel(): void } | null = null;

  constructor(
    private readonly bus: Bus,
    private readonly options: ConsumeOptions<T>,
    private readonly logger: Logger,
    private readonly metrics: Metrics | null,
  ) {
    this.batchSize = Math.min(options.batchSize, options.prefetch);
    this.concurrency = options.concurrency ?? 1;
  }

  /** Opens this consumer's channel on the connection, runs its declare and starts consuming. */
  async attach(model: ChannelModel): Promise<void> {
    if (this.cancelled || this.attaching) return;
    if (this.channel && this.channelModel === model) return; // already consuming on this connection
    this.attaching = true;
    let channel: Channel | null = null;
    try {
      channel = await model.createChannel();
      const ch = channel;
      ch.on('error', (err: Error) => this.logger.warn({ err: describe(err) }, 'consumer channel error'));
      ch.on('close', () => this.onChannelClosed(ch, model));
      await ch.prefetch(this.options.prefetch);
      if (this.options.declare) await this.options.declare(ch);
      this.channel = ch;
      this.channelModel = model;
      const { consumerTag } = await ch.consume(this.options.queue, (m) => this.onMessage(ch, m), {
        noAck: false,
      });
      if (this.channel === ch) this.consumerTag = consumerTag;
      if (this.cancelled) await ch.close().catch(() => undefined);
    } catch (err) {
      if (channel && this.channel === channel) this.channel = null;
      await channel?.close().catch(() => undefined);
      throw err;
    } finally {
      this.attaching = false;
    }
  }

  /** @internal after a reconnect the consumer could not start: try again while that connection lives. */
  attachFailed(model: ChannelModel, err: unknown, attempt = 1): void {
    if (this.cancelled) return;
    const delay = Math.min(MAX_TRANSIENT_BACKOFF_MS, 200 * 2 ** attempt);
    this.logger.error({ err: describe(err), delay }, 'starting the consumer failed; retrying');
    setTimeout(() => {
      if (this.cancelled || this.bus.currentModel() !== model || this.channel) return;
      this.attach(model).catch((e: unknown) => this.attachFailed(model, e, attempt + 1));
    }, delay).unref();
  }

  private onChannelClosed(channel: Channel, model: ChannelModel): void {
    if (this.channel !== channel) return;
    this.channel = null;
    this.consumerTag = null;
    // Their delivery tags died with the channel; the broker delivers them again.
    this.buffer = [];
    this.dropAcks();
    for (const wake of this.wakers) wake();
    if (this.cancelled) return;
    // Only this channel closed (e.g. an ack the broker did not accept): start again on the same connection.
    // If the connection went, the bus's setup attaches the consumer on the next one.
    setImmediate(() => {
      if (this.bus.currentModel() === model && !this.channel)
        this.attachFailed(model, new Error('channel closed'), 0);
    });
  }

  private onMessage(channel: Channel, message: ConsumeMessage | null): void {
    if (message === null) {
      // The broker cancelled the consumer (queue deleted): closing the channel makes it start again.
      this.logger.warn('RabbitMQ cancelled the consumer (queue deleted?)');
      if (this.channel === channel) void channel.close().catch(() => undefined);
      return;
    }
    if (this.channel !== channel) return;
    const held: Held = { message, channel };
    this.outstanding.push(held);
    this.buffer.push(held);
    this.schedule();
  }

  private schedule(): void {
    // At the limit, a finishing batch takes what arrived.
    if (this.active >= this.concurrency || this.paused) return;
    if (this.buffer.length >= this.batchSize) {
      void this.run();
      return;
    }
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    const started = performance.now();
    let seen = 0;
    // Deliveries read from the socket together are emitted in the same turn; one more turn lets a burst that
    // is still arriving join the batch, without a fixed wait for a lone message.
    const check = (): void => {
      const grew = this.buffer.length > seen;
      seen = this.buffer.length;
      if (grew && seen < this.batchSize && performance.now() - started < LINGER_MS) {
        setImmediate(check);
        return;
      }
      this.flushScheduled = false;
      void this.run();
    };
    setImmediate(check);
  }

  private run(): void {
    while (!this.paused && this.buffer.length > 0 && this.active < this.concurrency) {
      const batch = this.buffer.splice(0, this.batchSize);
      this.active += 1;
      void this.processBatch(batch);
    }
  }

  private async processBatch(batch: Held[]): Promise<void> {
    try {
      await this.process(batch);
    } catch (err) {
      // process() handles handler errors itself; this is a bug or a broker failure mid-way. The messages
      // stay unacked and come back with the channel.
      this.logger.error({ err }, 'processing a batch failed unexpectedly');
    } finally {
      this.active -= 1;
      this.notifySettled();
      if (this.active === 0) for (const resolve of this.idleWaiters.splice(0)) resolve();
      // What arrived meanwhile forms the next batch at once.
      this.run();
    }
  }

  private notifySettled(): void {
    if (this.active - this.parked > 0) return;
    for (const resolve of this.settledWaiters.splice(0)) resolve();
  }

  private async process(batch: Held[]): Promise<void> {
    // Taken before any await, so in the order batches left the buffer.
    const previous = this.handlerTurn;
    let resolveTurn!: () => void;
    this.handlerTurn = new Promise<void>((resolve) => (resolveTurn = resolve));
    this.awaitingTurn += 1;
    let turned = false;
    const started = () => {
      if (turned) return;
      turned = true;
      this.awaitingTurn -= 1;
      resolveTurn();
    };
    try {
      await this.processInTurn(batch, previous, started);
    } finally {
      // Whatever happened, the next batch's handler must not wait for this one forever.
      started();
    }
  }

  private async processInTurn(batch: Held[], previous: Promise<void>, started: () => void): Promise<void> {
    const valid: Parsed<T>[] = [];
    const invalid: { held: Held; reason: string }[] = [];
    for (const held of batch) {
      const parsed = this.parse(held.message);
      if (parsed.ok) {
        valid.push({
          held,
          delivery: {
            body: parsed.value,
            attempt: this.attemptOf(held.message),
            messageId: held.message.properties.messageId,
          },
        });
      } else {
        invalid.push({ held, reason: parsed.reason });
      }
    }
    if (invalid.length > 0) {
      for (const { held, reason } of invalid) {
        this.logger.warn(
          { messageId: held.message.properties.messageId, reason },
          'invalid message; dead-lettering',
        );
      }
      await this.deadLetter(
        invalid.map(({ held, reason }) => ({ held, reason, attempts: this.attemptOf(held.message) })),
      );
    }
    if (valid.length === 0) {
      started();
      return;
    }
    try {
      await previous;
      let handled: Promise<void>;
      try {
        handled = this.options.handler(valid.map((p) => p.delivery));
      } finally {
        started();
      }
      await handled;
      this.transientFailures = 0;
      for (const p of valid) this.succeeded(p.held);
      return;
    } catch (err) {
      if (await this.handledAsTransient(err)) return;
      if (valid.length === 1) {
        await this.failed(valid[0]!, err);
        return;
      }
      this.logger.warn({ err, size: valid.length }, 'batch failed; retrying its messages one at a time');
    }
    // Isolate the poison message(s): the rest of the batch succeeds one by one.
    for (const p of valid) {
      if (this.channel !== p.held.channel) return; // channel gone: everything left comes back anyway
      try {
        await this.options.handler([p.delivery]);
        this.transientFailures = 0;
        this.succeeded(p.held);
      } catch (err) {
        if (await this.handledAsTransient(err)) return;
        await this.failed(p, err);
      }
    }
  }

  private succeeded(held: Held): void {
    this.ack(held);
    if (this.failures.size > 0) this.failures.delete(failureKey(held.message));
  }

  /** Owes the broker an ack for held: it goes out with the next flush. */
  private ack(held: Held): void {
    held.settled = 'ack';
    this.scheduleAcks();
  }

  private nack(held: Held): void {
    held.settled = 'nacked';
    sendNack(held);
    // Acks owed behind it may have been waiting for it to settle.
    this.scheduleAcks();
  }

  private scheduleAcks(): void {
    if (this.ackFlush) return;
    const delay = this.options.ackDelayMs ?? 0;
    if (delay > 0) {
      const timer = setTimeout(() => this.flushAcks(), delay);
      this.ackFlush = { cancel: () => clearTimeout(timer) };
    } else {
      const immediate = setImmediate(() => this.flushAcks());
      this.ackFlush = { cancel: () => clearImmediate(immediate) };
    }
  }

  /**
   * Sends the acks owed: one multiple ack for the settled deliveries at the front (everything up to the
   * last of them that is owed one), and with `all` one ack each for those behind a delivery still in a
   * handler or in the buffer (cancel, requeue-all).
   */
  private flushAcks(all = false): void {
    this.ackFlush?.cancel();
    this.ackFlush = null;
    const list = this.outstanding;
    let i = 0;
    let last: Held | undefined;
    for (; i < list.length; i++) {
      const held = list[i]!;
      if (held.settled === undefined) break;
      if (held.settled === 'ack') last = held;
    }
    if (last) sendAck(last, true);
    let rest = i === 0 ? list : list.slice(i);
    if (all) {
      for (const held of rest) if (held.settled === 'ack') sendAck(held);
      rest = rest.filter((held) => held.settled === undefined);
    }
    this.outstanding = rest;
    // Acks owed behind a delivery still being handled wait for it; settling it schedules the next flush.
  }

  /** The channel is gone, and with it every delivery tag: nothing is owed any more. */
  private dropAcks(): void {
    this.ackFlush?.cancel();
    this.ackFlush = null;
    this.outstanding = [];
  }

  private attemptOf(message: ConsumeMessage): number {
    const counted = attemptOf(message);
    if (this.failures.size === 0) return counted;
    return Math.max(counted, (this.failures.get(failureKey(message)) ?? 0) + 1);
  }

  private parse(message: ConsumeMessage): { ok: true; value: T } | { ok: false; reason: string } {
    let json: unknown;
    try {
      json = JSON.parse(message.content.toString('utf8'));
    } catch (err) {
      return { ok: false, reason: `body is not JSON: ${describe(err)}` };
    }
    const result = this.options.schema.safeParse(json);
    if (result.success) return { ok: true, value: result.data };
    const issue = result.error.issues[0];
    const where = issue && issue.path.length > 0 ? ` at ${issue.path.map(String).join('.')}` : '';
    return { ok: false, reason: `body does not match the schema${where}: ${issue?.message ?? 'invalid'}` };
  }

  /**
   * The dependency is away: pause (keep holding the deliveries, so the broker sends no more than prefetch),
   * wait a growing backoff, then requeue everything held at once so the queue order is kept and try again.
   * No attempt is counted.
   */
  private async handledAsTransient(err: unknown): Promise<boolean> {
    if (!this.options.isTransient?.(err)) return false;
    const delay = Math.min(MAX_TRANSIENT_BACKOFF_MS, 100 * 2 ** this.transientFailures);
    this.transientFailures += 1;
    this.logger.warn({ err: describe(err), delay }, 'transient failure; requeueing after a pause');
    this.paused = true;
    let wake: (() => void) | undefined;
    try {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, delay);
        wake = () => {
          clearTimeout(timer);
          resolve();
        };
        this.wakers.add(wake);
      });
    } finally {
      if (wake) this.wakers.delete(wake);
    }
    // Requeueing takes back every unacked delivery of the channel: the batches still in their handler must
    // settle (ack or park here too) first, or their acks would name deliveries that are no longer theirs.
    this.parked += 1;
    try {
      this.notifySettled();
      if (this.active - this.parked > 0)
        await new Promise<void>((resolve) => this.settledWaiters.push(resolve));
    } finally {
      this.parked -= 1;
    }
    const channel = this.channel;
    if (channel) {
      // Handled deliveries whose ack was still owed are acked first, or nackAll would return them too.
      this.flushAcks(true);
      try {
        // Every unacked delivery of this channel: the failed batch and whatever arrived meanwhile.
        channel.nackAll(true);
      } catch {
        // channel already closing: the broker requeues them anyway
      }
    }
    this.buffer = [];
    this.outstanding = [];
    this.paused = false;
    return true;
  }

  /** One message failed on its own: retry later (counted) or, after maxRetries attempts, dead-letter it. */
  private async failed(p: Parsed<T>, err: unknown): Promise<void> {
    const reason = describe(err);
    const attempts = p.delivery.attempt;
    if (attempts >= this.options.maxRetries) {
      this.logger.error(
        { messageId: p.delivery.messageId, attempts, reason },
        'message keeps failing; dead-lettering',
      );
      await this.deadLetter([{ held: p.held, reason, attempts }]);
      return;
    }
    this.logger.warn({ messageId: p.delivery.messageId, attempts, reason }, 'message failed; will retry');
    const { message } = p.held;
    if (this.options.retry === 'requeue') {
      if (this.failures.size >= MAX_TRACKED_FAILURES) this.failures.clear();
      this.failures.set(failureKey(message), attempts);
      this.nack(p.held);
      return;
    }
    try {
      // The default exchange routes to the queue by name: the copy goes to this queue only, at its tail.
      await this.bus.send([
        {
          exchange: '',
          routingKey: this.options.queue,
          content: message.content,
          options: copyProperties(message.properties, {
            [ATTEMPTS_HEADER]: attempts,
            [REASON_HEADER]: reason,
          }),
        },
      ]);
      this.ack(p.held);
    } catch (sendErr) {
      this.logger.warn({ err: describe(sendErr) }, 'could not republish the failed message; requeueing it');
      this.nack(p.held);
    }
  }

  private async deadLetter(items: { held: Held; reason: string; attempts: number }[]): Promise<void> {
    const t = this.bus.topology;
    try {
      await this.bus.send(
        items.map(({ held, reason, attempts }) => ({
          exchange: t.deadLetterExchange,
          routingKey: held.message.fields.routingKey || this.options.queue,
          content: held.message.content,
          options: copyProperties(held.message.properties, {
            [REASON_HEADER]: reason.slice(0, 1000),
            [QUEUE_HEADER]: this.options.queue,
            [ATTEMPTS_HEADER]: attempts,
          }),
        })),
      );
      for (const { held } of items) {
        this.ack(held);
        if (this.failures.size > 0) this.failures.delete(failureKey(held.message));
      }
      this.metrics?.deadLettered.inc({ queue: this.options.queue }, items.length);
    } catch (err) {
      this.logger.warn({ err: describe(err) }, 'could not dead-letter; requeueing');
      for (const { held } of items) this.nack(held);
    }
  }

  async caughtUp(): Promise<boolean> {
    const quiet = () =>
      !this.cancelled && !this.paused && this.buffer.length === 0 && this.awaitingTurn === 0;
    for (let round = 0; round < 2; round++) {
      const channel = this.channel;
      if (!channel || !quiet()) return false;
      try {
        const { messageCount } = await channel.checkQueue(this.options.queue);
        if (messageCount !== 0 || this.channel !== channel) return false;
      } catch {
        return false; // the channel closed meanwhile: its deliveries come back
      }
    }
    return quiet();
  }

  /** Stops deliveries, lets the running batch finish, and closes the channel (unacked ones return to the queue). */
  async cancel(): Promise<void> {
    if (this.cancelled) return;
    this.cancelled = true;
    this.bus.forget(this as QueueConsumer<unknown>);
    const channel = this.channel;
    const tag = this.consumerTag;
    if (channel && tag) await channel.cancel(tag).catch(() => undefined);
    this.buffer = [];
    for (const wake of this.wakers) wake();
    if (this.active > 0) await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
    // What was handled is acked now rather than delivered again after the close.
    this.flushAcks(true);
    this.dropAcks();
    this.channel = null;
    if (channel) await channel.close().catch(() => undefined);
  }
}

/** Acks held now (with `multiple`, every delivery of its channel up to it). */
function sendAck(held: Held, multiple = false): void {
  try {
    held.channel.ack(held.message, multiple);
  } catch {
    // The channel closed: the broker redelivers the message, and handlers are idempotent.
  }
}

function sendNack(held: Held): void {
  try {
    held.channel.nack(held.message, false, true);
  } catch {
    // channel closed: requeued by the broker anyway
  }
}

/** Bounds the memory of retry 'requeue' should many different messages fail. */
const MAX_TRACKED_FAILURES = 10_000;

function failureKey(message: ConsumeMessage): string {
  const id = message.properties.messageId as unknown;
  return typeof id === 'string' && id !== '' ? `id:${id}` : `body:${message.content.toString('base64')}`;
}

function attemptOf(message: ConsumeMessage): number {
  const raw = message.properties.headers?.[ATTEMPTS_HEADER] as unknown;
  const previous = typeof raw === 'number' ? raw : typeof raw === 'bigint' ? Number(raw) : Number(raw ?? 0);
  return Number.isFinite(previous) && previous > 0 ? Math.floor(previous) + 1 : 1;
}

function encode(body: unknown): Buffer {
  const text = JSON.stringify(body);
  if (text === undefined) throw new TypeError('cannot publish a body that is not JSON-serializable');
  return Buffer.from(text);
}

function publishProperties(
  messageId: string | undefined,
  headers?: Record<string, unknown>,
): Options.Publish {
  const options: Options.Publish = {
    persistent: true,
    contentType: 'application/json',
    timestamp: Math.floor(Date.now() / 1000),
  };
  if (messageId !== undefined) options.messageId = messageId;
  if (headers) options.headers = headers;
  return options;
}

/** The original message's properties for a copy (retry or dead letter), with headers added. */
function copyProperties(properties: MessageProperties, extra: Record<string, unknown>): Options.Publish {
  const headers: Record<string, unknown> = { ...(properties.headers ?? {}) };
  // Set by the broker on redelivery from a quorum queue; meaningless on a new message.
  delete headers['x-delivery-count'];
  const options: Options.Publish = { persistent: true, headers: { ...headers, ...extra } };
  const p = properties as unknown as Record<string, unknown>;
  // Not expiration (the copy must not vanish) nor userId (the broker checks it against the connection).
  for (const key of [
    'contentType',
    'contentEncoding',
    'messageId',
    'correlationId',
    'timestamp',
    'type',
    'appId',
  ]) {
    if (p[key] !== undefined && p[key] !== null) (options as Record<string, unknown>)[key] = p[key];
  }
  return options;
}

function validateConsumeOptions<T>(options: ConsumeOptions<T>): void {
  if (
    options.concurrency !== undefined &&
    (!Number.isInteger(options.concurrency) || options.concurrency < 1)
  ) {
    throw new RangeError('consume: concurrency must be an integer ≥ 1');
  }
  for (const key of ['prefetch', 'batchSize', 'maxRetries'] as const) {
    const value = options[key];
    if (!Number.isInteger(value) || value < 1) throw new RangeError(`consume: ${key} must be an integer ≥ 1`);
  }
}

function createMetrics(registry: Registry): Metrics {
  return {
    published: metric(
      registry,
      'banbus_bus_published_total',
      () =>
        new Counter({
          name: 'banbus_bus_published_total',
          help: 'Messages published and confirmed by RabbitMQ',
          registers: [registry],
        }),
    ),
    publishFailures: metric(
      registry,
      'banbus_bus_publish_failures_total',
      () =>
        new Counter({
          name: 'banbus_bus_publish_failures_total',
          help: 'Messages whose publish failed (not connected, nacked, channel closed, timeout)',
          registers: [registry],
        }),
    ),
    deadLettered: metric(
      registry,
      'banbus_bus_dead_lettered_total',
      () =>
        new Counter({
          name: 'banbus_bus_dead_lettered_total',
          help: 'Messages sent to the dead-letter exchange by consumers (invalid or failing too often)',
          labelNames: ['queue'] as const,
          registers: [registry],
        }),
    ),
    connected: metric(
      registry,
      'banbus_bus_connected',
      () =>
        new Gauge({
          name: 'banbus_bus_connected',
          help: '1 while connected to RabbitMQ',
          registers: [registry],
        }),
    ),
  };
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** The URL without its password, for messages and logs. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '(unparsable AMQP URL)';
  }
}
