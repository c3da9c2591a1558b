// HTTP: the admin API under /v1/admin/ and the web UI (static files from ../public) in one express app.
import { fileURLToPath } from 'node:url';
import express, { type Express, type NextFunction, type Request, type Response } from 'express';
import { z } from 'zod';
import { HostNameSchema, TargetSchema, describeIssue } from '@banbus/core';
import { createServiceApp, finishApp, HttpError, type Logger, type Registry } from '@banbus/runtime';
import type { AdminActions } from './actions.js';
import type { ApplierStatusRepository } from './appliers.js';
import type { Actor, AuditLog } from './audit.js';
import {
  bearerToken,
  checkSessionChange,
  fromOwnOrigin,
  principalOf,
  type ConsoleAuth,
  type LoginLimiter,
} from './auth.js';
import type { LiveEvents } from './events.js';
import type { ConsoleQueries } from './queries.js';
import {
  AllowSchema,
  BanSchema,
  DecisionQuerySchema,
  HeartbeatSchema,
  HostAddSchema,
  LoginSchema,
  UnbanSchema,
} from './schemas.js';
import type { SessionStore } from './sessions.js';
import type { UserRepository } from './users.js';

export interface ConsoleAppOptions {
  logger: Logger;
  registry: Registry;
  readiness: Record<string, () => boolean | Promise<boolean>>;
  auth: ConsoleAuth;
  sessions: SessionStore;
  users: UserRepository;
  limiter: LoginLimiter;
  queries: ConsoleQueries;
  actions: AdminActions;
  audit: AuditLog;
  appliers: ApplierStatusRepository;
  events: LiveEvents;
  sessionTtlSeconds: number;
  secureCookie: boolean;
  /** Where index.html, app.js and style.css are (default: the package's public/). */
  publicDir?: string;
}

export const PUBLIC_DIR = fileURLToPath(new URL('../public/', import.meta.url));

// The UI builds every element with the DOM (textContent, never innerHTML), so values are text whatever they
// hold; this policy also refuses any script or style that is not one of the console's own files.
const CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "form-action 'self'",
  "frame-ancestors 'none'",
  "base-uri 'none'",
].join('; ');

function parse<S extends z.ZodType>(schema: S, value: unknown): z.infer<S> {
  const result = schema.safeParse(value ?? {});
  if (!result.success) {
    const { field, message } = describeIssue(result.error);
    throw new HttpError(400, message, field);
  }
  return result.data;
}

/** The target of a wildcard route (`/decisions/10.0.0.0/8` arrives as two segments). */
function wildcard(req: Request, name: string): string {
  const value = (req.params as Record<string, string | string[] | undefined>)[name];
  return Array.isArray(value) ? value.join('/') : (value ?? '');
}

function actorOf(req: Request, res: Response): Actor {
  return { name: principalOf(res).actor, client: req.ip };
}

export function createConsoleApp(o: ConsoleAppOptions): Express {
  const app = createServiceApp({ logger: o.logger, registry: o.registry, readiness: o.readiness });

  app.use((req, res, next) => {
    res.set({
      'Content-Security-Policy': CSP,
      'X-Content-Type-Options': 'nosniff',
      'X-Frame-Options': 'DENY',
      'Referrer-Policy': 'no-referrer',
      'Cross-Origin-Opener-Policy': 'same-origin',
      'Cross-Origin-Resource-Policy': 'same-origin',
    });
    if (req.path.startsWith('/v1/')) res.set('Cache-Control', 'no-store');
    next();
  });

  const api = express.Router();
  api.use(express.json({ limit: '64kb' }));
  // Changes take JSON only: a cross-site HTML form can send url-encoded or multipart bodies without asking,
  // but not application/json.
  api.use((req: Request, _res: Response, next: NextFunction) => {
    // A change without a body (POST …/revoke) carries no content type.
    const empty = req.headers['content-length'] === '0' || req.is('application/json') === null;
    if (!empty && req.is('application/json') === false)
      throw new HttpError(415, 'send the request body as application/json', 'content-type');
    next();
  });

  // --- session: log in, who am I, log out
  const setCookie = (res: Response, id: string) =>
    res.cookie(o.auth.cookie, id, {
      httpOnly: true,
      sameSite: 'strict',
      secure: o.secureCookie,
      path: '/',
      maxAge: o.sessionTtlSeconds * 1000,
    });

  api.post('/session', async (req, res) => {
    if (!fromOwnOrigin(req)) throw new HttpError(403, 'cross-site request refused', 'origin');
    const key = req.ip ?? 'unknown';
    const wait = o.limiter.retryAfter(key);
    if (wait > 0)
      throw new HttpError(429, 'too many failed logins; wait and try again', undefined, {
        'Retry-After': String(wait),
      });
    const input = parse(LoginSchema, req.body);
    let opened;
    if ('token' in input) {
      let host;
      try {
        host = await o.auth.hostForToken(input.token);
      } catch (err) {
        o.limiter.fail(key);
        await o.audit.record({ name: '(token)', client: req.ip }, 'login-failed', null, {
          reason: (err as Error).message,
        });
        throw err;
      }
      opened = await o.sessions.create({ hostId: host.id, actor: host.name });
    } else {
      const user = await o.users.verify(input.user, input.password);
      if (!user) {
        o.limiter.fail(key);
        await o.audit.record({ name: input.user, client: req.ip }, 'login-failed', null, { via: 'password' });
        throw new HttpError(401, 'wrong user name or password', 'password');
      }
      opened = await o.sessions.create({ user: user.name });
    }
    o.limiter.succeed(key);
    setCookie(res, opened.id);
    await o.audit.record({ name: opened.session.actor, client: req.ip }, 'login', null, {
      via: 'token' in input ? 'token' : 'password',
    });
    res.json({
      actor: opened.session.actor,
      scopes: opened.session.scopes,
      csrf: opened.session.csrf,
      expires_at: opened.session.expiresAt.toISOString(),
    });
  });

  // --- appliers report in with their token (no session: this is a machine's call)
  api.post('/appliers/heartbeat', async (req, res) => {
    const token = bearerToken(req);
    if (token === undefined)
      throw new HttpError(401, 'send Authorization: Bearer TOKEN (a read-scope token)', 'authorization', {
        'WWW-Authenticate': 'Bearer realm="banbus-console"',
      });
    const host = await o.auth.hostForToken(token);
    const heartbeat = parse(HeartbeatSchema, req.body);
    await o.appliers.record(heartbeat, host.name);
    o.events.send('appliers', { applier: heartbeat.host, seq: heartbeat.seq });
    res.status(204).end();
  });

  // Logging out changes nothing but the caller's own session, so a read-only session may do it too; it is
  // still a change the browser could be tricked into, so it needs the session's CSRF token.
  api.delete('/session', async (req, res) => {
    const p = await o.auth.principal(req);
    if (!p || p.sessionId === undefined)
      throw new HttpError(401, 'no session to end: log in first', 'authorization', {
        'WWW-Authenticate': 'Bearer realm="banbus-console"',
      });
    checkSessionChange(req, p);
    await o.sessions.destroy(p.sessionId);
    res.clearCookie(o.auth.cookie, { httpOnly: true, sameSite: 'strict', secure: o.secureCookie, path: '/' });
    await o.audit.record({ name: p.actor, client: req.ip }, 'logout', null);
    res.status(204).end();
  });

  // Everything below needs a principal: read scope to read, admin scope (and CSRF with a session) to change.
  api.use(o.auth.require());

  api.get('/session', (_req, res) => {
    const p = principalOf(res);
    res.json({ actor: p.actor, scopes: p.scopes, via: p.via, csrf: p.csrf ?? null });
  });

  api.get('/overview', async (_req, res) => {
    res.json(await o.queries.overview());
  });

  api.get('/decisions', async (req, res) => {
    res.json(await o.queries.decisions(parse(DecisionQuerySchema, req.query)));
  });

  api.get('/decisions/*target', async (req, res) => {
    res.json(await o.queries.detail(wildcard(req, 'target')));
  });

  api.get('/events', async (req, res) => {
    o.events.attach(req, res, await o.queries.seq());
  });

  api.post('/ban', async (req, res) => {
    res.status(202).json(await o.actions.ban(actorOf(req, res), parse(BanSchema, req.body)));
  });

  api.post('/unban', async (req, res) => {
    res.status(202).json(await o.actions.unban(actorOf(req, res), parse(UnbanSchema, req.body)));
  });

  api.get('/allowlist', async (_req, res) => {
    res.json({ items: await o.actions.allowList() });
  });

  api.get('/allowlist/preview', async (req, res) => {
    const { network } = parse(z.object({ network: TargetSchema }), req.query);
    res.json(await o.actions.allowPreview(network));
  });

  api.post('/allowlist', async (req, res) => {
    res.status(201).json(await o.actions.allowAdd(actorOf(req, res), parse(AllowSchema, req.body)));
  });

  api.delete('/allowlist/*network', async (req, res) => {
    const { network } = parse(z.object({ network: TargetSchema }), { network: wildcard(req, 'network') });
    await o.actions.allowRemove(actorOf(req, res), network);
    res.status(204).end();
  });

  api.get('/hosts', async (_req, res) => {
    res.json({ items: await o.actions.hostList() });
  });

  api.post('/hosts', async (req, res) => {
    res.status(201).json(await o.actions.hostAdd(actorOf(req, res), parse(HostAddSchema, req.body)));
  });

  api.post('/hosts/:name/revoke', async (req, res) => {
    const { name } = parse(z.object({ name: HostNameSchema }), req.params);
    await o.actions.hostRevoke(actorOf(req, res), name);
    res.status(204).end();
  });

  api.get('/appliers', async (_req, res) => {
    res.json({ items: await o.queries.appliers() });
  });

  api.delete('/appliers/:name', async (req, res) => {
    const { name } = parse(z.object({ name: HostNameSchema }), req.params);
    if (!(await o.appliers.remove(name))) throw new HttpError(404, `no applier named ${name}`, 'name');
    await o.audit.record(actorOf(req, res), 'applier-forget', name);
    res.status(204).end();
  });

  api.get('/audit', async (req, res) => {
    const q = parse(
      z.object({
        limit: z.coerce.number().int().min(1).max(500).default(100),
        before: z.coerce.number().int().positive().optional(),
      }),
      req.query,
    );
    res.json(await o.audit.list(q));
  });

  app.use('/v1/admin', api);
  // Anything else under /v1/ is a JSON 404 (finishApp), not the UI.
  app.use(
    express.static(o.publicDir ?? PUBLIC_DIR, {
      index: 'index.html',
      fallthrough: true,
      setHeaders: (res) => res.setHeader('Cache-Control', 'no-cache'),
    }),
  );
  return finishApp(app);
}
