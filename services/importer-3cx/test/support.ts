// Wiring for the importer's integration tests: a real pipeline (ingest → RabbitMQ → persister →
// PostgreSQL, own database and namespace), a stand-in 3CX database on the local PostgreSQL server (its
// own database, not the PBX's port 5480), a TCP relay in front of it that can play "database down", and
// importers started on demand with a cursor file in a temporary directory.
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server, type Socket, connect as tcpConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import pg from 'pg';
import { IngestEnvSchema, Importer3cxEnvSchema, parseEnv, type Importer3cxEnv } from '@banbus/core';
import { Bus } from '@banbus/bus';
import { HostRepository, withDatabase } from '@banbus/db';
import { createRegistry, type Registry, type Running } from '@banbus/runtime';
import { startIngest } from '@banbus/ingest';
import { createTestDatabase, type TestDatabase } from '../../../test/harness/index.js';
import {
  createWorld as createPipelineWorld,
  type World as PipelineWorld,
} from '../../../test/harness/world.js';
import {
  CursorFile,
  IngestClient,
  PgEventSource,
  sourceConfig,
  startImporter3cx,
  type Importer3cxRunning,
  type ReportSender,
  type SendResult,
} from '../src/index.js';

/**
 * The stand-in for 3CX's event log. Its shape is modelled on the query the old cron job ran on the PBX,
 *   SELECT * FROM eventlog WHERE eventid IN (12290) AND timegenerated > '<15 minutes ago>'
 * and on what it used of each row: the first IPv4 address in the event's parameter text. The id and
 * source columns stand for the rest of the row, which the importer must cope with but not rely on.
 */
export const EVENTLOG_DDL = `
  CREATE TABLE eventlog (
    id bigserial PRIMARY KEY,
    timegenerated timestamp without time zone NOT NULL,
    eventid integer NOT NULL,
    source text,
    params text
  )`;

/** Counts what ingest accepted, per report id: every id must arrive exactly once. */
export class CountingSender implements ReportSender {
  readonly accepted = new Map<string, number>();
  readonly ips: string[] = [];
  constructor(private readonly inner: ReportSender) {}
  async send(reports: readonly object[], signal?: AbortSignal): Promise<SendResult> {
    const result = await this.inner.send(reports, signal);
    if (result.kind === 'accepted') {
      for (const r of reports as { id: string; ip: string }[]) {
        this.accepted.set(r.id, (this.accepted.get(r.id) ?? 0) + 1);
        this.ips.push(r.ip);
      }
    }
    return result;
  }
  duplicates(): string[] {
    return [...this.accepted].filter(([, n]) => n !== 1).map(([id]) => id);
  }
}

/** A TCP relay to PostgreSQL that can be closed (connection refused, live connections cut) and reopened. */
export class Relay {
  private server: Server | null = null;
  private readonly sockets = new Set<Socket>();
  port = 0;
  constructor(
    private readonly targetHost: string,
    private readonly targetPort: number,
  ) {}

  async open(): Promise<void> {
    const server = createServer((client) => {
      const upstream = tcpConnect(this.targetPort, this.targetHost);
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on('close', () => this.sockets.delete(s));
        s.on('error', () => undefined);
      }
      client.pipe(upstream).pipe(client);
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.port, '127.0.0.1', () => resolve());
    });
    this.port = (server.address() as AddressInfo).port;
    this.server = server;
  }

  async close(): Promise<void> {
    const server = this.server;
    this.server = null;
    for (const s of this.sockets) s.destroy();
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

export interface World {
  pipeline: PipelineWorld;
  threecx: TestDatabase;
  /** A client on the stand-in 3CX database, for inserting events. */
  pbx: pg.Client;
  relay: Relay;
  token: string;
  ingestPort: number;
  /** Stops ingest (its bus first, so it answers 503 meanwhile if `unavailableFirst`) and starts it again. */
  ingestDown(): Promise<void>;
  ingestUp(): Promise<void>;
  cursorFile: string;
  startImporter(
    overrides?: Partial<Importer3cxEnv>,
  ): Promise<Importer3cxRunning & { sender: CountingSender; registry: Registry; url: string }>;
  /** Inserts events; `at` is "YYYY-MM-DD HH:MM:SS[.ffffff]" as 3CX writes it. */
  insert(events: { at: string; params: string | null; eventid?: number }[]): Promise<void>;
  /** Addresses of the 3CX reports the persister stored, with how many reports each. */
  stored(): Promise<Map<string, number>>;
  close(): Promise<void>;
}

export async function createWorld(): Promise<World> {
  const pipeline = await createPipelineWorld();
  await pipeline.start();
  const token = (await new HostRepository(pipeline.pool).add('pbx1', ['report'])).token;

  let ingestBus: Bus | null = null;
  let ingest: (Running & { port: number }) | null = null;
  let ingestPort = 0;
  const ingestUp = async () => {
    ingestBus = await Bus.connect({
      url: pipeline.amqpUrl,
      namespace: pipeline.namespace,
      logger: pipeline.logger,
      registry: createRegistry(false),
    });
    const config = parseEnv(IngestEnvSchema, {
      DATABASE_URL: pipeline.db.url,
      AMQP_URL: pipeline.amqpUrl,
      BANBUS_NAMESPACE: pipeline.namespace,
      BANBUS_LISTEN: '127.0.0.1',
      INGEST_PORT: String(ingestPort),
      LOG_LEVEL: 'silent',
    });
    ingest = await startIngest({
      config,
      logger: pipeline.logger,
      registry: createRegistry(false),
      pool: pipeline.pool,
      bus: ingestBus,
    });
    ingestPort = ingest.port;
  };
  const ingestDown = async () => {
    await ingestBus?.close();
    ingestBus = null;
  };
  await ingestUp();

  const threecx = await createTestDatabase({ migrate: false });
  const pbx = new pg.Client({ connectionString: threecx.url });
  await pbx.connect();
  await pbx.query(EVENTLOG_DDL);
  const target = new URL(threecx.url);
  const relay = new Relay(target.hostname, Number(target.port || 5432));
  await relay.open();

  const dir = await mkdtemp(join(tmpdir(), 'banbus-importer-3cx-'));
  const cursorFile = join(dir, 'cursor.json');
  const running: { stop(): Promise<void> }[] = [];

  return {
    pipeline,
    threecx,
    pbx,
    relay,
    token,
    get ingestPort() {
      return ingestPort;
    },
    ingestDown,
    async ingestUp() {
      await ingest?.stop();
      await ingestUp();
    },
    cursorFile,
    async startImporter(overrides = {}) {
      const url = withDatabase(`postgres://postgres@127.0.0.1:${relay.port}/postgres`, threecx.name);
      const config: Importer3cxEnv = {
        ...parseEnv(Importer3cxEnvSchema, {
          THREECX_DATABASE_URL: url,
          THREECX_CURSOR_FILE: cursorFile,
          BANBUS_INGEST_URL: `http://127.0.0.1:${ingestPort}`,
          BANBUS_TOKEN: token,
          BANBUS_LISTEN: '127.0.0.1',
          IMPORTER_PORT: '0',
          LOG_LEVEL: 'silent',
        }),
        THREECX_POLL_INTERVAL: 0.05,
        ...overrides,
      };
      const registry = createRegistry(false);
      const source = new PgEventSource(sourceConfig(config), pipeline.logger);
      const sender = new CountingSender(
        new IngestClient({ url: config.BANBUS_INGEST_URL, token: config.BANBUS_TOKEN, timeoutMs: 5_000 }),
      );
      const importer = await startImporter3cx({
        config,
        logger: pipeline.logger,
        registry,
        source,
        sender,
        store: new CursorFile(config.THREECX_CURSOR_FILE),
        retry: { minMs: 20, maxMs: 200 },
      });
      let stopped = false;
      const stopImporter = importer.stop.bind(importer);
      const stop = async () => {
        if (stopped) return;
        stopped = true;
        await stopImporter();
        await source.close();
      };
      running.push({ stop });
      return Object.assign(importer, {
        stop,
        sender,
        registry,
        url: `http://127.0.0.1:${importer.port}`,
      });
    },
    async insert(events) {
      for (const e of events) {
        await pbx.query(
          `INSERT INTO eventlog (timegenerated, eventid, source, params) VALUES ($1, $2, '3CX PhoneSystem', $3)`,
          [e.at, e.eventid ?? 12290, e.params],
        );
      }
    },
    async stored() {
      const { rows } = await pipeline.pool.query<{ ip: string; n: string }>(
        `SELECT host(target) AS ip, count(*) AS n FROM reports WHERE origin = '3cx' GROUP BY 1`,
      );
      return new Map(rows.map((r) => [r.ip, Number(r.n)]));
    },
    async close() {
      for (const r of running.reverse()) await r.stop().catch(() => undefined);
      await ingest?.stop().catch(() => undefined);
      await ingestBus?.close().catch(() => undefined);
      await relay.close();
      await pbx.end().catch(() => undefined);
      await threecx.drop();
      await pipeline.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** The value of one sample of a Prometheus text exposition, 0 when absent. */
export function sample(text: string, name: string, labels = ''): number {
  const line = text.split('\n').find((l) => l.startsWith(labels ? `${name}{${labels}} ` : `${name} `));
  return line ? Number(line.slice(line.lastIndexOf(' ') + 1)) : 0;
}
