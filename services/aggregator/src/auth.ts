// Read access to the lists: a token with `read` or `admin` scope (Bearer header, or `token=` in the query
// for firewalls that cannot send headers), or a client address inside AGGREGATOR_ANONYMOUS. Token lookups
// are cached by the token's hash, as ingest does: pfSense fetches every few minutes, a fleet of appliers
// fetches snapshots at once after a restart, and PostgreSQL may be briefly away.
import { createHash } from 'node:crypto';
import type { Request } from 'express';
import { contains, parseTarget, type Scope, type Target } from '@banbus/core';
import { HttpError, type Logger } from '@banbus/runtime';

export interface AuthHost {
  name: string;
  scopes: readonly Scope[];
  revokedAt: Date | null;
}

export interface HostLookup {
  findByToken(token: string): Promise<AuthHost | null>;
}

const REALM = 'Bearer realm="banbus"';
const TOKEN_SHAPE = /^[A-Za-z0-9\-._~+/]{16,256}=*$/;
const MAX_UNKNOWN = 10_000;

function unauthorized(message: string, invalidToken: boolean): HttpError {
  const challenge = invalidToken ? `${REALM}, error="invalid_token"` : REALM;
  return new HttpError(401, message, 'token', { 'WWW-Authenticate': challenge });
}

interface Entry {
  host: AuthHost | null;
  fetchedAt: number;
}

export class ReadAuthenticator {
  private readonly cache = new Map<string, Entry>();
  private readonly inflight = new Map<string, Promise<Entry>>();
  private readonly anonymous: Target[];
  private readonly ttlMs: number;

  constructor(
    private readonly options: {
      hosts: HostLookup;
      ttlSeconds: number;
      anonymous: readonly string[];
      logger: Logger;
      now?: () => number;
    },
  ) {
    this.ttlMs = options.ttlSeconds * 1000;
    this.anonymous = options.anonymous.map((cidr) => parseTarget(cidr));
  }

  private now(): number {
    return (this.options.now ?? Date.now)();
  }

  /** True when the client address is inside one of the anonymous networks. */
  isAnonymous(ip: string | undefined): boolean {
    if (ip === undefined || this.anonymous.length === 0) return false;
    let client: Target;
    try {
      client = parseTarget(ip);
    } catch {
      return false;
    }
    return this.anonymous.some((network) => contains(network, client));
  }

  /** Resolves when the request may read; throws 401/403/503 otherwise. */
  async authorize(req: Request): Promise<void> {
    const header = req.headers.authorization?.trim() || undefined;
    const query = typeof req.query.token === 'string' ? req.query.token : undefined;
    if (header === undefined && query === undefined && this.isAnonymous(req.ip)) return;
    let token: string | undefined = query;
    if (header !== undefined) {
      const m = /^Bearer +(\S+)\s*$/i.exec(header);
      if (!m) throw unauthorized('only Authorization: Bearer tokens are accepted', false);
      token = m[1]!;
    }
    if (token === undefined || token === '') {
      throw unauthorized('a token is required (Authorization: Bearer … or ?token=…)', false);
    }
    if (!TOKEN_SHAPE.test(token)) throw unauthorized('the token is malformed', true);
    const entry = await this.lookup(token);
    if (entry.host === null) throw unauthorized('the token is not known', true);
    if (entry.host.revokedAt !== null) throw unauthorized('the token was revoked', true);
    if (!entry.host.scopes.includes('read') && !entry.host.scopes.includes('admin')) {
      throw new HttpError(403, `host ${entry.host.name} has no read scope`, 'token');
    }
  }

  private lookup(token: string): Promise<Entry> {
    const key = createHash('sha256').update(token).digest('hex');
    const cached = this.cache.get(key);
    if (cached && this.now() - cached.fetchedAt < this.ttlMs) return Promise.resolve(cached);
    let pending = this.inflight.get(key);
    if (!pending) {
      pending = this.fetch(key, token, cached).finally(() => this.inflight.delete(key));
      this.inflight.set(key, pending);
    }
    return pending;
  }

  private async fetch(key: string, token: string, stale: Entry | undefined): Promise<Entry> {
    let host: AuthHost | null;
    try {
      host = await this.options.hosts.findByToken(token);
    } catch (err) {
      if (stale) return stale; // stale-if-error: keep answering known clients while PostgreSQL is away
      this.options.logger.error({ err: (err as Error).message }, 'token lookup failed and nothing is cached');
      throw new HttpError(503, 'cannot check the token right now, retry shortly', undefined, {
        'Retry-After': '5',
      });
    }
    const entry: Entry = { host, fetchedAt: this.now() };
    this.cache.delete(key);
    this.cache.set(key, entry);
    // Bounded: a flood of random tokens must not grow memory (Map iteration order = insertion order).
    while (this.cache.size > MAX_UNKNOWN) this.cache.delete(this.cache.keys().next().value!);
    return entry;
  }
}
