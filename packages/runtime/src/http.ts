import { createRequire } from 'node:module';
import { createServer, type RequestListener, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type createExpress from 'express';
import type { Express, NextFunction, Request, Response } from 'express';
import type { pinoHttp as PinoHttp } from 'pino-http';
import type { Logger } from './logger.js';
import { redactUrl } from './logger.js';
import type { Registry } from './metrics.js';
import { HttpError } from './errors.js';

const require = createRequire(import.meta.url);

/** A named readiness check: resolves true when the dependency answers. */
export type ReadinessCheck = () => Promise<boolean> | boolean;

export interface ServiceAppOptions {
  logger: Logger;
  registry: Registry;
  /** Checks behind /readyz; every one must pass for 200. */
  readiness?: Record<string, ReadinessCheck>;
}

/**
 * An express app with request logging, /healthz, /readyz and /metrics. The caller mounts its own
 * routes and then calls `finishApp` to add the 404 and error handlers.
 */
export function createServiceApp(options: ServiceAppOptions): Express {
  // Loaded on first use: a process that serves only probes (the route-applier, createProbeHandler)
  // never pays for express and pino-http.
  const express = require('express') as typeof createExpress;
  const { pinoHttp } = require('pino-http') as { pinoHttp: typeof PinoHttp };
  const app = express();
  app.disable('x-powered-by');
  // Hashing every answer body for an ETag costs ingest ~1.5% of its CPU per report and no API client
  // revalidates; a route that wants conditional GETs (the blocklist) sets its own ETag.
  app.set('etag', false);
  app.set('trust proxy', 'loopback, linklocal, uniquelocal');
  app.locals.logger = options.logger;
  // pino-http makes a child logger per request even when its line would be dropped. At LOG_LEVEL warn
  // or above no request line is written anyway, so it is left out (it cost ingest several percent of
  // its CPU per report) and finishApp logs the 5xx answers itself.
  app.locals.requestLog = options.logger.isLevelEnabled('info');
  if (app.locals.requestLog)
    app.use(
      pinoHttp({
        logger: options.logger,
        serializers: {
          req: (req: { method: string; url: string; id: unknown; remoteAddress?: string }) => ({
            id: req.id,
            method: req.method,
            url: redactUrl(req.url),
            remoteAddress: req.remoteAddress,
          }),
          res: (res: { statusCode: number }) => ({ statusCode: res.statusCode }),
        },
        // Probes and scrapes every few seconds would drown the log.
        autoLogging: { ignore: (req) => /^\/(healthz|readyz|metrics)$/.test(req.url ?? '') },
      }),
    );
  app.get('/healthz', (_req, res) => {
    res.json({ status: 'ok' });
  });
  app.get('/readyz', async (_req, res) => {
    const { ready, body } = await readiness(options.readiness);
    res.status(ready ? 200 : 503).json(body);
  });
  app.get('/metrics', async (_req, res) => {
    res.set('Content-Type', options.registry.contentType);
    res.send(await options.registry.metrics());
  });
  return app;
}

/** Runs the readiness checks (a check that throws fails); the body /readyz answers with. */
export async function readiness(checks: Record<string, ReadinessCheck> = {}): Promise<{
  ready: boolean;
  body: { status: 'ready' | 'not ready'; checks: Record<string, boolean> };
}> {
  const results: Record<string, boolean> = {};
  for (const [name, check] of Object.entries(checks)) {
    try {
      results[name] = await check();
    } catch {
      results[name] = false;
    }
  }
  const ready = Object.values(results).every(Boolean);
  return { ready, body: { status: ready ? 'ready' : 'not ready', checks: results } };
}

/** Adds the JSON 404 and the error handler that turns HttpError (and body-parser errors) into answers. */
export function finishApp(app: Express): Express {
  app.use((_req, _res, next) => next(new HttpError(404, 'not found')));
  app.use((err: unknown, _req: Request, res: Response, _next: NextFunction) => {
    const { status, body, headers } = toAnswer(err);
    // pino-http logs res.err; without it, it invents a generic error for the 500.
    if (status >= 500) {
      const error = err instanceof Error ? err : new Error(String(err));
      res.err = error;
      // An HttpError 503 is an answered state (broker away, list not built yet), not a fault.
      if (!app.locals.requestLog && !(err instanceof HttpError))
        (app.locals.logger as Logger).error({ err: error }, 'request failed');
    }
    for (const [k, v] of Object.entries(headers)) res.setHeader(k, v);
    res.status(status).json(body);
  });
  return app;
}

function toAnswer(err: unknown): {
  status: number;
  body: { error: string; field?: string };
  headers: Record<string, string>;
} {
  if (err instanceof HttpError) {
    const body: { error: string; field?: string } = { error: err.message };
    if (err.field !== undefined) body.field = err.field;
    return { status: err.status, body, headers: err.headers };
  }
  // body-parser errors carry status/type: too large, malformed JSON, bad charset.
  const e = err as { status?: number; statusCode?: number; type?: string; message?: string };
  const status = e.status ?? e.statusCode;
  if (typeof status === 'number' && status >= 400 && status < 500) {
    const message =
      e.type === 'entity.too.large'
        ? 'request body too large'
        : e.type === 'entity.parse.failed'
          ? 'request body is not valid JSON'
          : (e.message ?? 'bad request');
    return { status, body: { error: message, field: 'body' }, headers: {} };
  }
  return { status: 500, body: { error: 'internal error' }, headers: {} };
}

export interface Listening {
  server: Server;
  port: number;
  close(): Promise<void>;
}

/** Listens on host:port (port 0 = any free port, for tests) and closes keep-alive sockets on close. */
export async function listen(app: RequestListener, port: number, host = '0.0.0.0'): Promise<Listening> {
  const server = createServer(app);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const actual = (server.address() as AddressInfo).port;
  return {
    server,
    port: actual,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeIdleConnections();
        setTimeout(() => server.closeAllConnections(), 2_000).unref();
      }),
  };
}
