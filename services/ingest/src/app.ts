// The ingest HTTP app: routes and the order of checks. Everything it talks to comes in as an argument,
// so tests can build it with fakes; index.ts wires the real repositories and the bus.
import express, { type Express, type NextFunction, type Request, type Response } from 'express';
import {
  Counter,
  HttpError,
  Histogram,
  createServiceApp,
  finishApp,
  metric,
  type Logger,
  type Registry,
} from '@banbus/runtime';
import type { Policy, Report } from '@banbus/core';
import { bearerToken, requireReportScope, type AuthHost, type TokenAuthenticator } from './auth.js';
import { RejectedReportError, type AllowlistCache } from './checks.js';
import { checkReports } from './checks.js';
import { parseCompatQuery, parseReportBody, type ReportInput } from './parse.js';
import type { ReportRateLimiter } from './rate.js';
import { CoalescingPublisher } from './coalesce.js';

/** What ingest needs of the Bus. */
export interface ReportPublisher {
  readonly connected: boolean;
  publishReports(reports: readonly Report[]): Promise<void>;
}

/**
 * A persister in this process (`banbus run all`) that applies reports as they are published, before the
 * broker delivers them back (the persister's LocalHandoff). The published message stays the report's
 * durable way in: 202 still waits for the broker's confirm.
 */
export interface ReportHandoff {
  submit(reports: readonly Report[]): void;
  /** The publish of these reports failed: no broker copy will come. */
  unpublished(ids: readonly string[]): void;
}

export interface IngestAppOptions {
  logger: Logger;
  registry: Registry;
  bus: ReportPublisher;
  auth: TokenAuthenticator<AuthHost>;
  allowlist: AllowlistCache;
  limiter: ReportRateLimiter;
  policy: Policy;
  maxBatch: number;
  /** Longest wait for the broker's confirm before answering 503 (the Bus has its own timeout too). */
  publishTimeoutMs?: number;
  handoff?: ReportHandoff;
}

const JSON_BODY_LIMIT = '2mb';
const FORM_BODY_LIMIT = '64kb';
const JSON_TYPES = ['application/json', 'application/*+json'];
const FORM_TYPE = 'application/x-www-form-urlencoded';

type Outcome =
  | 'accepted'
  | 'invalid'
  | 'unauthorized'
  | 'forbidden'
  | 'allowlisted'
  | 'too-broad'
  | 'rate-limited'
  | 'unavailable'
  | 'error';

interface Locals {
  route?: string;
  /** performance.now() when the request arrived. */
  started?: number;
  host?: AuthHost;
  inputs?: ReportInput[];
  kind?: 'json' | 'form';
}

function unavailable(message: string): HttpError {
  return new HttpError(503, message, undefined, { 'Retry-After': '5' });
}

function outcomeOf(err: unknown): Outcome {
  if (err instanceof RejectedReportError) return err.reason;
  const status =
    (err as { status?: number; statusCode?: number }).status ?? (err as { statusCode?: number }).statusCode;
  switch (status) {
    case 400:
    case 413:
    case 415:
      return 'invalid';
    case 401:
      return 'unauthorized';
    case 403:
      return 'forbidden';
    case 429:
      return 'rate-limited';
    case 503:
      return 'unavailable';
    default:
      return 'error';
  }
}

export function createIngestApp(options: IngestAppOptions): Express {
  const { logger, registry, bus, auth, allowlist, limiter, policy, maxBatch, handoff } = options;
  // Concurrent requests share one packed message and one confirm (group commit).
  const publisher = new CoalescingPublisher(bus, { timeoutMs: options.publishTimeoutMs ?? 10_000 });

  const reportsTotal = metric(
    registry,
    'banbus_ingest_reports_total',
    () =>
      new Counter({
        name: 'banbus_ingest_reports_total',
        help: 'Reports received, by action and what ingest did with them (action "unknown" when the request could not be read)',
        labelNames: ['action', 'outcome'] as const,
        registers: [registry],
      }),
  );
  const duration = metric(
    registry,
    'banbus_ingest_request_duration_seconds',
    () =>
      new Histogram({
        name: 'banbus_ingest_request_duration_seconds',
        help: 'Time from request to answer on the report endpoints, including the broker confirm',
        labelNames: ['route', 'status'] as const,
        buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
        registers: [registry],
      }),
  );

  // Labelled children are looked up once: prom-client hashes the labels on every inc otherwise, which
  // shows on the single-report path.
  const counters = new Map<string, ReturnType<typeof reportsTotal.labels>>();
  function counter(action: string, outcome: Outcome) {
    const key = `${action}|${outcome}`;
    let child = counters.get(key);
    if (!child) counters.set(key, (child = reportsTotal.labels({ action, outcome })));
    return child;
  }
  function count(inputs: readonly ReportInput[] | undefined, outcome: Outcome): void {
    if (!inputs || inputs.length === 0) {
      counter('unknown', outcome).inc();
      return;
    }
    let bans = 0;
    for (const input of inputs) if (input.action === 'ban') bans++;
    if (bans > 0) counter('ban', outcome).inc(bans);
    if (inputs.length - bans > 0) counter('unban', outcome).inc(inputs.length - bans);
  }

  const app = createServiceApp({
    logger,
    registry,
    readiness: {
      bus: () => bus.connected,
      allowlist: () => allowlist.loaded,
    },
  });

  // The success paths observe their own duration just before answering; only the error handler hooks
  // 'finish' (a listener per request cost more than the rest of the metrics together).
  function startTimer(res: Response, route: string): void {
    const locals = res.locals as Locals;
    locals.route = route;
    locals.started = performance.now();
  }
  const timers = new Map<string, ReturnType<typeof duration.labels>>();
  function observe(res: Response, status: number): void {
    const { route, started } = res.locals as Locals;
    if (started === undefined || route === undefined) return;
    const key = `${route}|${status}`;
    let timer = timers.get(key);
    if (!timer) timers.set(key, (timer = duration.labels({ route, status: String(status) })));
    timer.observe((performance.now() - started) / 1000);
  }

  async function authenticate(token: string | undefined, res: Response): Promise<AuthHost> {
    const host = await auth.authenticate(token);
    requireReportScope(host);
    (res.locals as Locals).host = host;
    return host;
  }

  /** Rate limit, policy checks, publish with the broker's confirm: the part both endpoints share. */
  async function accept(host: AuthHost, inputs: ReportInput[], res: Response): Promise<string[]> {
    (res.locals as Locals).inputs = inputs;
    // The limit guards the fleet against a broken or hijacked reporting host. An admin token is the
    // operator's own (banbus import, manual bans), which must be able to load a whole old list at once.
    if (!host.scopes.includes('admin')) await limiter.consume(host.name, inputs.length);
    checkReports(inputs, host, policy, allowlist.allowlist);
    const reports = inputs.map((input) => toReport(input, host.name));
    await publish(reports);
    count(inputs, 'accepted');
    return reports.map((r) => r.id);
  }

  // Rule 1: only a confirm from the broker lets us answer 202. Not connected → fail fast instead of
  // queueing in memory; a publish that neither confirms nor fails in time is answered 503 as well.
  async function publish(reports: Report[]): Promise<void> {
    if (!bus.connected) throw unavailable('the message broker is not reachable, retry shortly');
    const published = publisher.publishReports(reports);
    handoff?.submit(reports);
    try {
      await published;
    } catch (err) {
      handoff?.unpublished(reports.map((r) => r.id));
      logger.warn(
        { err: (err as Error).message, errName: (err as Error).name, reports: reports.length },
        'publish failed',
      );
      throw unavailable('the message broker did not confirm the reports, retry shortly');
    }
  }

  const parseJson = express.json({ limit: JSON_BODY_LIMIT, type: JSON_TYPES });
  const parseForm = express.urlencoded({
    extended: false,
    limit: FORM_BODY_LIMIT,
    parameterLimit: 50,
    type: FORM_TYPE,
  });

  // One middleware per step, not one per concern: on this hot path each express layer costs about as
  // much as the token check.
  app.post(
    '/v1/reports',
    // Authenticate before reading a body of up to 2 MB from someone without a token.
    async (req: Request, res: Response, next: NextFunction) => {
      startTimer(res, '/v1/reports');
      await authenticate(bearerToken(req.get('authorization')), res);
      // The exact common header is recognised without type-is, which the body parser runs again anyway.
      const type = req.headers['content-type'];
      const kind =
        type === 'application/json' || req.is(JSON_TYPES) ? 'json' : req.is(FORM_TYPE) ? 'form' : null;
      if (kind === null) {
        throw new HttpError(415, `Content-Type must be application/json or ${FORM_TYPE}`, 'body');
      }
      (res.locals as Locals).kind = kind;
      (kind === 'json' ? parseJson : parseForm)(req, res, next);
    },
    async (req: Request, res: Response) => {
      const host = (res.locals as Locals).host!;
      const inputs = parseReportBody(req.body, (res.locals as Locals).kind!, { maxBatch });
      const ids = await accept(host, inputs, res);
      observe(res, 202);
      res.status(202).json({ accepted: ids.length, ids });
    },
  );

  // Compatibility with the old PHP page, so existing fail2ban actions keep working with only the host
  // name in their URL changed: GET /fail2ban.php?token=…&action=add|delete&source=<jail>&reason=…&ip=…
  // Success is a text/plain "OK" with 200 (not 202), which is what the old page answered and what
  // `curl -f` lines in old action files expect; errors are the usual JSON with 4xx/503, so curl -f fails.
  app.get('/fail2ban.php', async (req: Request, res: Response) => {
    startTimer(res, '/fail2ban.php');
    const token = typeof req.query.token === 'string' ? req.query.token : undefined;
    const host = await authenticate(token, res);
    const input = parseCompatQuery(req.query as Record<string, unknown>);
    await accept(host, [input], res);
    observe(res, 200);
    res.status(200).type('text/plain').send('OK\n');
  });

  // 422 carries a machine-readable reason, which the generic error handler of finishApp does not know.
  app.use((err: unknown, _req: Request, res: Response, next: NextFunction) => {
    count((res.locals as Locals).inputs, outcomeOf(err));
    res.once('finish', () => observe(res, res.statusCode));
    if (err instanceof RejectedReportError) {
      res.status(422).json({ error: err.message, field: err.field, reason: err.reason });
      return;
    }
    next(err);
  });

  return finishApp(app);
}

/** The message for `<ns>.reports`; the host is the token's, whatever the body said. */
export function toReport(input: ReportInput, host: string): Report {
  const report: Report = {
    id: input.id,
    action: input.action,
    target: input.target.text,
    host,
    origin: input.origin,
    time: input.time,
  };
  if (input.jail !== null) report.jail = input.jail;
  if (input.reason !== null) report.reason = input.reason;
  if (input.bantime !== null) report.bantime = input.bantime;
  if (input.failures !== null) report.failures = input.failures;
  if (input.matches !== null) report.matches = input.matches;
  return report;
}
