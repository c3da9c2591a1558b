// Bearer tokens → hosts. Every report costs a token check, so lookups are cached (keyed by the token
// itself: hashing it on every hit cost ingest a few percent per report; only the database needs the
// hash, and HostRepository computes it there). The cache also keeps ingest answering while PostgreSQL is briefly away (stale-if-error), because a
// fail2ban host forgets a ban whose actionban failed twice.
import { HttpError, type Logger } from '@banbus/runtime';
import type { Scope } from '@banbus/core';

/** What auth needs of a host record (HostRecord of @banbus/db fits). */
export interface AuthHost {
  name: string;
  scopes: readonly Scope[];
  revokedAt: Date | null;
}

/** What auth needs of HostRepository. */
export interface HostLookup<H extends AuthHost = AuthHost> {
  findByToken(token: string): Promise<H | null>;
  touch(names: readonly string[], at?: Date): Promise<void>;
}

export interface TokenAuthOptions<H extends AuthHost> {
  hosts: HostLookup<H>;
  /** How long a lookup is trusted (INGEST_TOKEN_CACHE_TTL). */
  ttlSeconds: number;
  logger: Logger;
  /** How often last_seen_at is written, batched for every host seen meanwhile. */
  touchIntervalMs?: number;
  /** Unknown tokens remembered at most (a flood of random tokens must not grow memory). */
  maxUnknown?: number;
  now?: () => number;
}

const REALM = 'Bearer realm="banbus"';
// RFC 6750 b64token, bounded: anything else is not worth a database round trip.
const TOKEN_SHAPE = /^[A-Za-z0-9\-._~+/]{16,256}=*$/;

export function unauthorized(message: string, invalidToken: boolean): HttpError {
  const challenge = invalidToken ? `${REALM}, error="invalid_token"` : REALM;
  return new HttpError(401, message, 'token', { 'WWW-Authenticate': challenge });
}

/** The token of an `Authorization: Bearer …` header; other schemes (Basic) are refused. */
export function bearerToken(header: string | undefined): string {
  if (header === undefined || header.trim() === '')
    throw unauthorized('an Authorization: Bearer token is required', false);
  const m = /^Bearer +(\S+)\s*$/i.exec(header);
  if (!m) throw unauthorized('only Authorization: Bearer tokens are accepted', false);
  return m[1]!;
}

interface Entry<H> {
  host: H | null;
  fetchedAt: number;
}

export class TokenAuthenticator<H extends AuthHost = AuthHost> {
  private readonly known = new Map<string, Entry<H>>();
  private readonly unknown = new Map<string, Entry<H>>();
  private readonly inflight = new Map<string, Promise<Entry<H>>>();
  private readonly seen = new Set<string>();
  private readonly timer: NodeJS.Timeout;
  private readonly ttlMs: number;
  private readonly maxUnknown: number;
  private readonly now: () => number;

  constructor(private readonly options: TokenAuthOptions<H>) {
    this.ttlMs = options.ttlSeconds * 1000;
    this.maxUnknown = options.maxUnknown ?? 10_000;
    this.now = options.now ?? Date.now;
    this.timer = setInterval(() => void this.flushSeen(), options.touchIntervalMs ?? 5_000);
    this.timer.unref();
  }

  /**
   * The host holding `token`. 401 when absent, malformed, unknown or revoked; 503 when PostgreSQL
   * cannot be asked and nothing (not even a stale entry) is cached.
   */
  async authenticate(token: string | undefined): Promise<H> {
    if (token === undefined || token === '') throw unauthorized('a token is required', false);
    if (!TOKEN_SHAPE.test(token)) throw unauthorized('the token is malformed', true);
    const entry = await this.lookup(token);
    if (entry.host === null) throw unauthorized('the token is not known', true);
    if (entry.host.revokedAt !== null) throw unauthorized('the token was revoked', true);
    this.seen.add(entry.host.name);
    return entry.host;
  }

  private lookup(token: string): Promise<Entry<H>> | Entry<H> {
    const cached = this.known.get(token) ?? this.unknown.get(token);
    if (cached && this.now() - cached.fetchedAt < this.ttlMs) return cached;
    let pending = this.inflight.get(token);
    if (!pending) {
      pending = this.fetch(token, cached).finally(() => this.inflight.delete(token));
      this.inflight.set(token, pending);
    }
    return pending;
  }

  private async fetch(token: string, stale: Entry<H> | undefined): Promise<Entry<H>> {
    let host: H | null;
    try {
      host = await this.options.hosts.findByToken(token);
    } catch (err) {
      if (stale) {
        this.options.logger.warn(
          { err: (err as Error).message },
          'token lookup failed, serving the cached answer',
        );
        return stale;
      }
      this.options.logger.error({ err: (err as Error).message }, 'token lookup failed and nothing is cached');
      throw new HttpError(503, 'cannot check the token right now, retry shortly', undefined, {
        'Retry-After': '5',
      });
    }
    const entry: Entry<H> = { host, fetchedAt: this.now() };
    if (host) {
      this.unknown.delete(token);
      this.known.set(token, entry);
    } else {
      this.known.delete(token);
      this.unknown.delete(token);
      this.unknown.set(token, entry);
      // Map iteration is insertion order: the first key is the oldest.
      while (this.unknown.size > this.maxUnknown) this.unknown.delete(this.unknown.keys().next().value!);
    }
    return entry;
  }

  /** Writes last_seen_at for the hosts seen since the last flush; failures only cost freshness. */
  async flushSeen(): Promise<void> {
    if (this.seen.size === 0) return;
    const names = [...this.seen];
    this.seen.clear();
    try {
      await this.options.hosts.touch(names, new Date(this.now()));
    } catch (err) {
      this.options.logger.debug(
        { err: (err as Error).message, hosts: names.length },
        'last_seen update failed',
      );
    }
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.flushSeen();
  }
}

/** Reporting needs `report` or `admin`; a `read`-only token gets 403. */
export function requireReportScope(host: AuthHost): void {
  if (!host.scopes.includes('report') && !host.scopes.includes('admin')) {
    throw new HttpError(403, `host ${host.name} has no report scope`, 'token');
  }
}
