// Wiring for the console's integration tests: the shared pipeline world (own database and namespace, a
// real persister turning the published reports into decisions), hosts with each scope, a password user,
// and consoles (and, for the browser test, an aggregator) started in-process with their own pool and bus.
import type pg from 'pg';
import {
  AggregatorEnvSchema,
  ConsoleEnvSchema,
  RouteApplierEnvSchema,
  parseEnv,
  type AggregatorEnv,
  type ConsoleEnv,
} from '@banbus/core';
import type { Bus } from '@banbus/bus';
import { HostRepository } from '@banbus/db';
import { startAggregator, type AggregatorRunning } from '@banbus/aggregator';
import type { PersisterRunning } from '@banbus/persister';
import { startRouteApplier, type RouteApplierRunning } from '@banbus/route-applier';
import {
  createWorld as createPipelineWorld,
  type World as PipelineWorld,
} from '../../../test/harness/world.js';
import { startConsole, UserRepository, type ConsoleRunning } from '../src/index.js';

export { report } from '../../../test/harness/world.js';

export const PASSWORD = 'correct horse battery staple';

export type TestConsole = ConsoleRunning & { url: string; pool: pg.Pool; bus: Bus };
export type TestAggregator = AggregatorRunning & { url: string };
export type TestApplier = RouteApplierRunning & { url: string };

export interface World extends Omit<PipelineWorld, 'start' | 'config'> {
  persister: PersisterRunning;
  tokens: { read: string; report: string; admin: string };
  startConsole(overrides?: Partial<ConsoleEnv>): Promise<TestConsole>;
  startAggregator(): Promise<TestAggregator>;
  /** A real route-applier with the dry-run backend, following this world's stream and `aggregator`. */
  startApplier(host: string, aggregator: TestAggregator): Promise<TestApplier>;
}

export async function createWorld(): Promise<World> {
  const base = await createPipelineWorld();
  const { db, amqpUrl, namespace, logger, pool } = base;
  const persister = await base.start();
  const hosts = new HostRepository(pool);
  const tokens = {
    read: (await hosts.add('reader', ['read'])).token,
    report: (await hosts.add('reporter', ['report'])).token,
    admin: (await hosts.add('operator', ['admin'])).token,
  };
  await new UserRepository(pool).add('alice', PASSWORD);
  return {
    ...base,
    persister,
    tokens,
    async startConsole(overrides = {}) {
      const config: ConsoleEnv = {
        ...parseEnv(ConsoleEnvSchema, {
          DATABASE_URL: db.url,
          AMQP_URL: amqpUrl,
          BANBUS_NAMESPACE: namespace,
          LOG_LEVEL: 'silent',
          CONSOLE_PORT: '0',
          BANBUS_LISTEN: '127.0.0.1',
        }),
        ...overrides,
      };
      const started = await base.serve((own) => startConsole({ config, logger, ...own }));
      return Object.assign(started, { url: `http://127.0.0.1:${started.port}` });
    },
    async startAggregator() {
      const config: AggregatorEnv = parseEnv(AggregatorEnvSchema, {
        DATABASE_URL: db.url,
        AMQP_URL: amqpUrl,
        BANBUS_NAMESPACE: namespace,
        LOG_LEVEL: 'silent',
        AGGREGATOR_PORT: '0',
        BANBUS_LISTEN: '127.0.0.1',
        AGGREGATOR_REBUILD_DEBOUNCE_MS: '20',
      });
      const started = await base.serve((own) => startAggregator({ config, logger, ...own }));
      return Object.assign(started, { url: `http://127.0.0.1:${started.port}` });
    },
    async startApplier(host, aggregator) {
      const config = parseEnv(RouteApplierEnvSchema, {
        AMQP_URL: amqpUrl,
        BANBUS_NAMESPACE: namespace,
        LOG_LEVEL: 'silent',
        BANBUS_URL: aggregator.url,
        BANBUS_TOKEN: tokens.read,
        APPLIER_HOST: host,
        APPLIER_BACKEND: 'dry-run',
        APPLIER_PORT: '0',
        BANBUS_LISTEN: '127.0.0.1',
        APPLIER_CHECK_INTERVAL: '0',
      });
      const started = await base.serve((own) => startRouteApplier({ config, logger, ...own }));
      base.queues.push(started.queue);
      return Object.assign(started, { url: `http://127.0.0.1:${started.port}` });
    },
  };
}

export interface Answer {
  status: number;
  headers: Headers;
  body: unknown;
  text: string;
}

/** A logged-in browser-like client: keeps the session cookie and sends the CSRF token on changes. */
export class Client {
  cookie: string | undefined;
  csrf: string | undefined;

  constructor(readonly base: string) {}

  async request(
    method: string,
    path: string,
    body?: unknown,
    options: { csrf?: string | null; headers?: Record<string, string> } = {},
  ): Promise<Answer> {
    const headers: Record<string, string> = { ...options.headers };
    if (this.cookie) headers.cookie = this.cookie;
    const csrf = options.csrf === undefined ? this.csrf : options.csrf;
    if (method !== 'GET' && csrf) headers['x-csrf-token'] = csrf;
    if (body !== undefined) headers['content-type'] ??= 'application/json';
    const res = await fetch(this.base + path, {
      method,
      headers,
      ...(body !== undefined ? { body: typeof body === 'string' ? body : JSON.stringify(body) } : {}),
    });
    const text = await res.text();
    let json: unknown;
    try {
      json = text ? JSON.parse(text) : undefined;
    } catch {
      json = undefined;
    }
    return { status: res.status, headers: res.headers, body: json, text };
  }

  async login(credentials: { user: string; password: string } | { token: string }): Promise<Answer> {
    const answer = await this.request('POST', '/v1/admin/session', credentials);
    const set = answer.headers.get('set-cookie');
    if (answer.status === 200 && set) {
      this.cookie = set.split(';')[0];
      this.csrf = (answer.body as { csrf: string }).csrf;
    }
    return answer;
  }
}

let counter = 0;
/** An address no other test in the file uses, inside 198.19.0.0/16 (benchmark range; world.ts hands out 198.18.x). */
export function freshAddress(): string {
  counter++;
  return `198.19.${Math.floor(counter / 250)}.${(counter % 250) + 1}`;
}
