import type { IncomingMessage, RequestListener, ServerResponse } from 'node:http';
import type { Logger } from './logger.js';
import type { Registry } from './metrics.js';
import { readiness, type ReadinessCheck } from './http.js';

export interface ProbeHandlerOptions {
  logger: Logger;
  registry: Registry;
  /** Checks behind /readyz; every one must pass for 200. */
  readiness?: Record<string, ReadinessCheck>;
  /** More GET routes answering JSON, by exact path. */
  routes?: Record<string, () => unknown>;
}

/**
 * /healthz, /readyz and /metrics (and a few JSON GET routes) on node:http alone, answering as the
 * express apps of createServiceApp do. For the route-applier, which runs on every host within an 80 MB
 * budget: loading express and pino-http for four read-only routes cost it ~4 MB.
 */
export function createProbeHandler(options: ProbeHandlerOptions): RequestListener {
  const routes: Record<string, () => unknown> = {
    '/healthz': () => ({ status: 'ok' }),
    ...options.routes,
  };
  const readyz = async (res: ServerResponse) => {
    const { ready, body } = await readiness(options.readiness);
    json(res, ready ? 200 : 503, body);
  };
  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const path = (req.url ?? '/').split('?', 1)[0]!;
    if (req.method !== 'GET' && req.method !== 'HEAD') return json(res, 404, { error: 'not found' });
    if (path === '/readyz') return readyz(res);
    if (path === '/metrics') {
      const text = await options.registry.metrics();
      res.writeHead(200, { 'content-type': options.registry.contentType });
      res.end(text);
      return;
    }
    const route = routes[path];
    if (route === undefined) return json(res, 404, { error: 'not found' });
    json(res, 200, route());
  };
  return (req, res) => {
    handle(req, res).catch((err: unknown) => {
      options.logger.error({ err }, 'request failed');
      if (!res.headersSent) json(res, 500, { error: 'internal error' });
      else res.destroy();
    });
  };
}

function json(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(text),
  });
  res.end(text);
}
