// Who is asking, and may they change things. Two ways in:
// - a session cookie from the login form (password user, or a host token with the read/admin scope), which
//   the browser sends by itself — so every change made with it must also carry the session's CSRF token
//   (X-CSRF-Token) and come from the console's own origin;
// - `Authorization: Bearer TOKEN` (the CLI, scripts, appliers' heartbeats). A browser never adds that header
//   on its own, so it needs no CSRF token.
// Changes need the admin scope either way; reading needs read or admin.
import { timingSafeEqual } from 'node:crypto';
import type { NextFunction, Request, RequestHandler, Response } from 'express';
import { parse as parseCookies } from 'cookie';
import type { Scope } from '@banbus/core';
import type { HostRecord } from '@banbus/db';
import { HttpError } from '@banbus/runtime';
import type { SessionStore } from './sessions.js';

export interface Principal {
  /** A password user's name or a host's name: what the audit log and manual reports record. */
  actor: string;
  scopes: readonly Scope[];
  via: 'session' | 'token';
  /** The session's CSRF token (sessions only). */
  csrf?: string;
  /** The session cookie's value (sessions only), for logout. */
  sessionId?: string;
}

export interface TokenLookup {
  findByToken(token: string): Promise<HostRecord | null>;
}

const REALM = 'Bearer realm="banbus-console"';
const TOKEN_SHAPE = /^[A-Za-z0-9\-._~+/]{16,256}=*$/;
const UNSAFE = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);

export const CSRF_HEADER = 'x-csrf-token';

export function cookieName(secure: boolean): string {
  // The __Host- prefix makes the browser refuse the cookie unless it is Secure, host-only and Path=/.
  return secure ? '__Host-banbus_session' : 'banbus_session';
}

function unauthorized(message: string): HttpError {
  return new HttpError(401, message, 'authorization', { 'WWW-Authenticate': REALM });
}

function sameText(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

/**
 * True unless the browser says the request comes from another site. Browsers send Origin on every
 * cross-origin request and on same-origin POSTs; Sec-Fetch-Site where Origin is absent. A client that
 * sends neither (curl, the CLI) is not a browser being tricked.
 */
export function fromOwnOrigin(req: Request): boolean {
  const origin = req.headers.origin;
  if (origin === undefined) {
    const site = req.headers['sec-fetch-site'];
    return site === undefined || site === 'same-origin' || site === 'none';
  }
  let host: string;
  try {
    host = new URL(origin).host;
  } catch {
    return false; // includes "null" (sandboxed frames, some redirects)
  }
  const forwarded = req.headers['x-forwarded-host'];
  const hosts = [req.headers.host, ...(typeof forwarded === 'string' ? forwarded.split(',') : [])]
    .filter((h): h is string => typeof h === 'string')
    .map((h) => h.trim().toLowerCase());
  return hosts.includes(host.toLowerCase());
}

export function bearerToken(req: Request): string | undefined {
  const header = req.headers.authorization?.trim();
  if (!header) return undefined;
  const m = /^Bearer +(\S+)$/i.exec(header);
  if (!m) throw unauthorized('only Authorization: Bearer tokens are accepted');
  return m[1]!;
}

export class ConsoleAuth {
  readonly cookie: string;

  constructor(
    private readonly options: {
      hosts: TokenLookup;
      sessions: SessionStore;
      secureCookie: boolean;
    },
  ) {
    this.cookie = cookieName(options.secureCookie);
  }

  /** The host holding a token, when it may use the console (read or admin scope, not revoked). */
  async hostForToken(token: string): Promise<HostRecord> {
    if (!TOKEN_SHAPE.test(token)) throw unauthorized('the token is malformed');
    const host = await this.options.hosts.findByToken(token);
    if (!host) throw unauthorized('the token is not known');
    if (host.revokedAt) throw unauthorized('the token was revoked');
    if (!host.scopes.includes('read') && !host.scopes.includes('admin'))
      throw new HttpError(403, `host ${host.name} has neither the read nor the admin scope`, 'authorization');
    return host;
  }

  sessionId(req: Request): string | undefined {
    const header = req.headers.cookie;
    if (!header) return undefined;
    return parseCookies(header)[this.cookie];
  }

  /** The principal of a request, or null when it carries no credentials. Throws 401 for bad ones. */
  async principal(req: Request): Promise<Principal | null> {
    const token = bearerToken(req);
    if (token !== undefined) {
      const host = await this.hostForToken(token);
      return { actor: host.name, scopes: host.scopes, via: 'token' };
    }
    const id = this.sessionId(req);
    if (id === undefined) return null;
    const session = await this.options.sessions.lookup(id);
    if (!session) throw unauthorized('the session has expired or was ended; log in again');
    return {
      actor: session.actor,
      scopes: session.scopes,
      via: 'session',
      csrf: session.csrf,
      sessionId: id,
    };
  }

  /**
   * Middleware: a principal with read (GET) or admin (changes) scope; changes made with a session also
   * need its CSRF token and the console's own origin. Sets res.locals.principal.
   */
  require(): RequestHandler {
    return async (req: Request, res: Response, next: NextFunction) => {
      const principal = await this.principal(req);
      if (!principal) throw unauthorized('log in, or send Authorization: Bearer TOKEN');
      const change = UNSAFE.has(req.method);
      if (change) checkChange(req, principal);
      else if (!principal.scopes.includes('read') && !principal.scopes.includes('admin'))
        throw new HttpError(403, `${principal.actor} may not read the console`, 'authorization');
      res.locals.principal = principal;
      next();
    };
  }
}

/** Throws 403 when a change made with a session comes from another site or lacks the session's CSRF token. */
export function checkSessionChange(req: Request, principal: Principal): void {
  if (principal.via !== 'session') return;
  if (!fromOwnOrigin(req)) throw new HttpError(403, 'cross-site request refused', 'origin');
  const sent = req.headers[CSRF_HEADER];
  if (typeof sent !== 'string' || sent === '' || !principal.csrf || !sameText(sent, principal.csrf))
    throw new HttpError(403, 'missing or wrong CSRF token', 'X-CSRF-Token');
}

/** Throws 403 unless `principal` may make this change (admin scope; for sessions: own origin and CSRF token). */
export function checkChange(req: Request, principal: Principal): void {
  checkSessionChange(req, principal);
  if (!principal.scopes.includes('admin'))
    throw new HttpError(403, `${principal.actor} has no admin scope: changes are refused`, 'authorization');
}

export function principalOf(res: Response): Principal {
  const principal = res.locals.principal as Principal | undefined;
  if (!principal) throw new Error('route mounted without ConsoleAuth.require()');
  return principal;
}

/**
 * Failed logins per client address in a sliding minute. scrypt costs tens of milliseconds of CPU per
 * attempt, so unbounded guessing would also be a way to keep the console busy.
 */
export class LoginLimiter {
  private readonly failures = new Map<string, number[]>();

  constructor(
    private readonly perMinute: number,
    private readonly now: () => number = Date.now,
  ) {}

  private recent(key: string): number[] {
    const cutoff = this.now() - 60_000;
    const list = (this.failures.get(key) ?? []).filter((t) => t > cutoff);
    if (list.length === 0) this.failures.delete(key);
    else this.failures.set(key, list);
    return list;
  }

  /** Seconds until the next attempt is allowed, or 0. */
  retryAfter(key: string): number {
    const list = this.recent(key);
    if (list.length < this.perMinute) return 0;
    return Math.max(1, Math.ceil((list[0]! + 60_000 - this.now()) / 1000));
  }

  fail(key: string): void {
    const list = this.recent(key);
    list.push(this.now());
    this.failures.set(key, list);
    // Bounded: a flood from many addresses must not grow memory without end.
    if (this.failures.size > 100_000) this.failures.delete(this.failures.keys().next().value!);
  }

  succeed(key: string): void {
    this.failures.delete(key);
  }
}
