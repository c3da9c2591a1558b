// The admin operations as the CLI uses them, two ways: over the console's admin API (BANBUS_CONSOLE_URL +
// BANBUS_TOKEN, from anywhere), or straight on PostgreSQL and the broker where the CLI runs beside them.
// Both answer the same JSON and fail with AdminClientError carrying the HTTP status.
import type pg from 'pg';
import type { ConsoleEnv } from '@banbus/core';
import { HttpError } from '@banbus/runtime';
import type { BanResult, ReportPublisher, UnbanResult } from './actions.js';
import type { Actor } from './audit.js';
import type { DecisionDetail, DecisionPage, Overview } from './queries.js';
import type { z } from 'zod';
import { BanSchema, DecisionQuerySchema, UnbanSchema, type DecisionQueryInput } from './schemas.js';
import { consoleParts } from './parts.js';

export class AdminClientError extends Error {
  override name = 'AdminClientError';
  constructor(
    message: string,
    /** The HTTP status (0: the console could not be reached). */
    readonly status: number,
    readonly field?: string,
  ) {
    super(message);
  }
}

export interface AdminClient {
  ban(input: { target: string; duration?: number; reason?: string }): Promise<BanResult>;
  unban(input: { target: string; reason?: string; force?: boolean }): Promise<UnbanResult>;
  list(query: DecisionQueryInput): Promise<DecisionPage>;
  show(target: string): Promise<DecisionDetail>;
  stats(): Promise<Overview>;
}

export class HttpAdminClient implements AdminClient {
  constructor(
    private readonly options: { url: string; token: string; timeoutMs?: number; fetch?: typeof fetch },
  ) {}

  private async call<T>(method: 'GET' | 'POST', path: string, body?: unknown): Promise<T> {
    const url = new URL(path, this.options.url.endsWith('/') ? this.options.url : `${this.options.url}/`);
    let res: Response;
    try {
      res = await (this.options.fetch ?? fetch)(url, {
        method,
        headers: {
          authorization: `Bearer ${this.options.token}`,
          accept: 'application/json',
          ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
        },
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
        signal: AbortSignal.timeout(this.options.timeoutMs ?? 30_000),
      });
    } catch (err) {
      const cause = (err as { cause?: { code?: string; message?: string } }).cause;
      const why = cause?.code ?? cause?.message ?? (err as Error).message;
      throw new AdminClientError(`cannot reach the console at ${url.origin} (${why})`, 0);
    }
    const text = await res.text();
    let json: unknown;
    try {
      json = text === '' ? undefined : JSON.parse(text);
    } catch {
      json = undefined;
    }
    if (!res.ok) {
      const e = (json ?? {}) as { error?: string; field?: string };
      const message = e.error ?? `the console answered ${res.status} ${res.statusText}`;
      throw new AdminClientError(message, res.status, e.field);
    }
    if (json === undefined)
      throw new AdminClientError(`the console answered ${res.status} without JSON`, res.status);
    return json as T;
  }

  ban(input: { target: string; duration?: number; reason?: string }): Promise<BanResult> {
    return this.call('POST', 'v1/admin/ban', input);
  }

  unban(input: { target: string; reason?: string; force?: boolean }): Promise<UnbanResult> {
    return this.call('POST', 'v1/admin/unban', input);
  }

  list(query: DecisionQueryInput): Promise<DecisionPage> {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) {
      if (v === undefined) continue;
      params.set(k, v instanceof Date ? v.toISOString() : String(v));
    }
    return this.call('GET', `v1/admin/decisions?${params}`);
  }

  show(target: string): Promise<DecisionDetail> {
    // Each segment escaped, the slash of a CIDR kept as a path separator (the API joins them again).
    return this.call('GET', `v1/admin/decisions/${target.split('/').map(encodeURIComponent).join('/')}`);
  }

  stats(): Promise<Overview> {
    return this.call('GET', 'v1/admin/overview');
  }
}

/** Validates like the API's edge does: 400 naming the field. */
function validate<S extends z.ZodType>(schema: S, input: unknown): z.infer<S> {
  const parsed = schema.safeParse(input);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new AdminClientError(issue.message, 400, issue.path.join('.') || 'body');
  }
  return parsed.data;
}

/** The same operations on PostgreSQL (and the broker, for bans and unbans) directly. */
export class DirectAdminClient implements AdminClient {
  private readonly parts: ReturnType<typeof consoleParts>;

  constructor(
    private readonly options: {
      pool: pg.Pool;
      config: ConsoleEnv;
      actor: Actor;
      /** Needed for ban and unban only. */
      publisher?: ReportPublisher;
    },
  ) {
    this.parts = consoleParts({
      config: options.config,
      pool: options.pool,
      publisher: options.publisher ?? {
        publishReports: () => Promise.reject(new Error('no broker connection was opened for this command')),
      },
    });
  }

  private async run<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      if (err instanceof HttpError) throw new AdminClientError(err.message, err.status, err.field);
      throw err;
    }
  }

  ban(input: { target: string; duration?: number; reason?: string }): Promise<BanResult> {
    return this.run(async () => this.parts.actions.ban(this.options.actor, validate(BanSchema, input)));
  }

  unban(input: { target: string; reason?: string; force?: boolean }): Promise<UnbanResult> {
    return this.run(async () => this.parts.actions.unban(this.options.actor, validate(UnbanSchema, input)));
  }

  list(query: DecisionQueryInput): Promise<DecisionPage> {
    return this.run(async () => this.parts.queries.decisions(validate(DecisionQuerySchema, query)));
  }

  show(target: string): Promise<DecisionDetail> {
    return this.run(() => this.parts.queries.detail(target));
  }

  stats(): Promise<Overview> {
    return this.run(() => this.parts.queries.overview());
  }
}
