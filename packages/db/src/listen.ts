import pg from 'pg';
import type { Logger } from '@banbus/runtime';

export interface ListenOptions {
  logger?: Logger;
  /**
   * Called after the connection was re-established and LISTEN is active again. Notifications sent while
   * the connection was down are lost, so callers re-read whatever state they follow.
   */
  onReconnect?: () => void;
  /** Backoff between reconnect attempts; defaults 100 ms doubling up to 5 s. */
  minDelayMs?: number;
  maxDelayMs?: number;
  /**
   * Runs on every new connection once LISTEN is active, before onReconnect (session state that lives and
   * dies with the connection, such as an advisory lock). A failure counts as a failed connection attempt.
   */
  onConnect?: (query: (text: string) => Promise<pg.QueryResult>) => Promise<void>;
  /** The connection dropped: what onConnect set up is gone. */
  onLost?: () => void;
}

export interface Listener {
  /** Runs a statement on the listening connection (its session); rejects while it is down. */
  query(text: string): Promise<pg.QueryResult>;
  close(): Promise<void>;
}

/**
 * LISTENs on `channel` with a dedicated connection (a pooled one would lose the LISTEN when returned).
 * Rejects when the first connection fails; after that it reconnects by itself with backoff whenever the
 * connection drops (database restart, killed backend) until close().
 */
export async function listenChannel(
  databaseUrl: string,
  channel: string,
  onNotify: (payload: string) => void,
  options: ListenOptions = {},
): Promise<Listener> {
  const { logger, onReconnect, onConnect, onLost: lostHook } = options;
  const minDelayMs = options.minDelayMs ?? 100;
  const maxDelayMs = options.maxDelayMs ?? 5_000;
  let closed = false;
  let client: pg.Client | undefined;
  let retryTimer: NodeJS.Timeout | undefined;
  let delayMs = minDelayMs;

  async function connect(): Promise<pg.Client> {
    const c = new pg.Client({
      connectionString: databaseUrl,
      application_name: `banbus-listen-${channel}`,
      keepAlive: true,
      connectionTimeoutMillis: 10_000,
    });
    // Until we know the connection works, a failure is reported by connect() itself; an 'error' event
    // without a listener would crash the process.
    c.on('error', () => {});
    try {
      await c.connect();
      await c.query(`LISTEN ${c.escapeIdentifier(channel)}`);
      await onConnect?.((text) => c.query(text));
    } catch (err) {
      await c.end().catch(() => {});
      throw err;
    }
    c.on('notification', (msg) => {
      if (msg.channel !== channel) return;
      try {
        onNotify(msg.payload ?? '');
      } catch (err) {
        logger?.error({ err, channel }, 'notification handler failed');
      }
    });
    let lost = false;
    const onLost = (err?: Error) => {
      if (lost) return;
      lost = true;
      if (closed) return;
      logger?.warn(
        { channel, err: err ? { message: err.message } : undefined },
        'LISTEN connection lost; reconnecting',
      );
      c.end().catch(() => {});
      if (client === c) client = undefined;
      try {
        lostHook?.();
      } catch (err) {
        logger?.error({ err, channel }, 'onLost handler failed');
      }
      scheduleReconnect();
    };
    c.on('error', onLost);
    c.on('end', () => onLost());
    return c;
  }

  function scheduleReconnect(): void {
    if (closed || retryTimer) return;
    // Jitter keeps many listeners from hitting a restarting server in lockstep.
    const wait = Math.round(delayMs * (0.5 + Math.random() / 2));
    delayMs = Math.min(delayMs * 2, maxDelayMs);
    retryTimer = setTimeout(() => {
      retryTimer = undefined;
      connect().then(
        (c) => {
          if (closed) {
            c.end().catch(() => {});
            return;
          }
          client = c;
          delayMs = minDelayMs;
          logger?.info({ channel }, 'LISTEN connection re-established');
          try {
            onReconnect?.();
          } catch (err) {
            logger?.error({ err, channel }, 'onReconnect handler failed');
          }
        },
        (err: Error) => {
          logger?.debug({ channel, err: { message: err.message } }, 'LISTEN reconnect failed');
          scheduleReconnect();
        },
      );
    }, wait);
  }

  client = await connect();

  return {
    query(text: string) {
      if (!client) return Promise.reject(new Error(`the LISTEN connection for ${channel} is down`));
      return client.query(text);
    },
    async close() {
      closed = true;
      if (retryTimer) clearTimeout(retryTimer);
      retryTimer = undefined;
      const c = client;
      client = undefined;
      await c?.end().catch(() => {});
    },
  };
}
