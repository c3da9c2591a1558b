// HTTP: the merged blocklists for firewalls, and the decision snapshot / delta for appliers.
import { createHash } from 'node:crypto';
import { promisify } from 'node:util';
import { gzip as gzipCallback } from 'node:zlib';
import type { Express, NextFunction, Request, Response } from 'express';
import type pg from 'pg';
import { z } from 'zod';
import { describeIssue, partCount, type BlocklistFormat } from '@banbus/core';
import { createServiceApp, finishApp, HttpError, type Logger, type Registry } from '@banbus/runtime';
import type { ReadAuthenticator } from './auth.js';
import { StaleBuildError, type BlocklistBuilder, type Build } from './builder.js';
import type { DecisionFollower } from './follower.js';
import { readLog, type DecisionSnapshot } from './state.js';

const gzip = promisify(gzipCallback);

export interface AggregatorAppOptions {
  logger: Logger;
  registry: Registry;
  pool: pg.Pool;
  follower: DecisionFollower;
  builder: BlocklistBuilder;
  auth: ReadAuthenticator;
  readiness: Record<string, () => boolean | Promise<boolean>>;
}

const BlocklistQuerySchema = z
  .object({
    family: z.enum(['4', '6', 'all']).default('all'),
    format: z.enum(['plain', 'nftables', 'ipset', 'json']).default('plain'),
    max: z.coerce.number().int().min(1).max(10_000_000).optional(),
    part: z.coerce.number().int().min(1).optional(),
    token: z.string().optional(),
  })
  .refine((q) => q.part === undefined || q.max !== undefined, {
    message: 'part needs max',
    path: ['part'],
  });
type BlocklistQuery = z.infer<typeof BlocklistQuerySchema>;

const SinceSchema = z
  .string()
  .regex(/^\d{1,15}$/, 'since must be a seq (a non-negative integer)')
  .transform(Number);

const CONTENT_TYPES: Record<BlocklistFormat, string> = {
  plain: 'text/plain; charset=utf-8',
  nftables: 'text/plain; charset=utf-8',
  ipset: 'text/plain; charset=utf-8',
  json: 'application/json; charset=utf-8',
};

interface Rendered {
  body: Buffer;
  gzipped?: Promise<Buffer>;
}

/**
 * Rendered answers, bounded by bytes (a full list at 1M entries is ~15 MB per format), least recently used
 * out first. Only the newest build's answers are kept once a newer build is asked for. Concurrent requests
 * for the same answer share one render.
 */
class RenderCache {
  private readonly entries = new Map<string, { build: number; rendered: Promise<Rendered> }>();
  private readonly sizes = new Map<string, number>();
  private bytes = 0;
  private newest = 0;

  constructor(private readonly budget: number) {}

  get(build: Build, key: string, render: () => Promise<Uint8Array>): Promise<Rendered> {
    if (build.id > this.newest) {
      this.newest = build.id;
      for (const [k, entry] of this.entries) if (entry.build < build.id) this.drop(k);
    }
    const fullKey = `${build.id}|${key}`;
    const hit = this.entries.get(fullKey);
    if (hit) {
      this.entries.delete(fullKey);
      this.entries.set(fullKey, hit);
      return hit.rendered;
    }
    const rendered = render().then((bytes) => {
      const body = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
      if (this.entries.has(fullKey)) this.account(fullKey, body.length);
      return { body };
    });
    // A failed render is not remembered: the next request tries again.
    rendered.catch(() => this.drop(fullKey));
    this.entries.set(fullKey, { build: build.id, rendered });
    return rendered;
  }

  private account(key: string, size: number): void {
    // The gzipped copy, when asked for, adds about a quarter.
    const cost = Math.ceil(size * 1.25);
    this.sizes.set(key, cost);
    this.bytes += cost;
    for (const k of this.entries.keys()) {
      if (this.bytes <= this.budget) break;
      if (k !== key) this.drop(k);
    }
  }

  private drop(key: string): void {
    this.entries.delete(key);
    this.bytes -= this.sizes.get(key) ?? 0;
    this.sizes.delete(key);
  }
}

/**
 * Bytes of rendered answers kept (see RenderCache): a full list at 1M entries with its gzipped copy and
 * the small answers (parts, one family), within the service's memory budget of 300 MB at 1M decisions.
 * Other full lists are rendered again in the worker when asked (a few hundred milliseconds, off the main
 * thread); firewalls fetch every few minutes at most, and unchanged lists are answered 304.
 */
const RENDER_CACHE_BYTES = 32 * 2 ** 20;

function countOf(build: Build, family: BlocklistQuery['family']): number {
  return (family === '6' ? 0 : build.counts.v4) + (family === '4' ? 0 : build.counts.v6);
}

/** A weak validator: the same seq, family, format and split always render the same list. */
function etagOf(build: Build, q: BlocklistQuery): string {
  const h = createHash('sha256')
    .update(
      `${build.seq}|${build.generatedAt.getTime()}|${q.family}|${q.format}|${q.max ?? ''}|${q.part ?? ''}`,
    )
    .digest('base64url')
    .slice(0, 27);
  return `W/"${h}"`;
}

function notModified(req: Request, etag: string): boolean {
  const header = req.headers['if-none-match'];
  if (!header) return false;
  if (header.trim() === '*') return true;
  const strip = (t: string) => t.trim().replace(/^W\//, '');
  return header.split(',').some((t) => strip(t) === strip(etag));
}

function partUrl(req: Request, q: BlocklistQuery, part: number): string {
  const params = new URLSearchParams({
    family: q.family,
    format: q.format,
    max: String(q.max),
    part: String(part),
  });
  // pfSense cannot send headers: a token given in the query must travel with every part URL.
  if (q.token !== undefined) params.set('token', q.token);
  return `${req.protocol}://${req.get('host') ?? 'localhost'}${req.baseUrl}${req.path}?${params.toString()}`;
}

function wrap(handler: (req: Request, res: Response) => Promise<void>) {
  return (req: Request, res: Response, next: NextFunction) => {
    handler(req, res).catch(next);
  };
}

/** Writes `chunks` with backpressure; resolves false when the client went away. */
async function writeChunk(res: Response, chunk: string): Promise<boolean> {
  if (res.destroyed) return false;
  if (res.write(chunk)) return true;
  return new Promise((resolve) => {
    const done = (ok: boolean) => {
      res.off('drain', onDrain);
      res.off('close', onClose);
      resolve(ok);
    };
    const onDrain = () => done(true);
    const onClose = () => done(false);
    res.on('drain', onDrain);
    res.on('close', onClose);
  });
}

export function createAggregatorApp(options: AggregatorAppOptions): Express {
  const { pool, follower, builder, auth } = options;
  const app = createServiceApp({
    logger: options.logger,
    registry: options.registry,
    readiness: options.readiness,
  });
  const cache = new RenderCache(RENDER_CACHE_BYTES);
  // Held weakly: gone once the last request streaming it is done.
  let shared: WeakRef<DecisionSnapshot> | undefined;
  const sharedSnapshot = (): DecisionSnapshot => {
    const kept = shared?.deref();
    if (kept && kept.seq === follower.state.seq) return kept;
    const fresh = follower.state.snapshot();
    shared = new WeakRef(fresh);
    return fresh;
  };

  const requireRead = (req: Request, _res: Response, next: NextFunction) => {
    auth.authorize(req).then(() => next(), next);
  };

  app.get(
    '/v1/blocklist.txt',
    requireRead,
    wrap(async (req, res) => {
      const parsed = BlocklistQuerySchema.safeParse(req.query);
      if (!parsed.success) {
        const { field, message } = describeIssue(parsed.error);
        throw new HttpError(400, message, field);
      }
      const q = parsed.data;
      // A render may find its build already let go by the worker (two newer builds finished meanwhile):
      // answer from the newer one instead.
      for (let attempt = 1; ; attempt++) {
        try {
          await answerBlocklist(req, res, q);
          return;
        } catch (err) {
          if (!(err instanceof StaleBuildError) || attempt === 3) throw err;
        }
      }
    }),
  );

  async function answerBlocklist(req: Request, res: Response, q: BlocklistQuery): Promise<void> {
    const build = builder.current;
    if (!build) throw new HttpError(503, 'the blocklist is not built yet', undefined, { 'Retry-After': '2' });

    const etag = etagOf(build, q);
    res.setHeader('ETag', etag);
    res.setHeader('Last-Modified', build.generatedAt.toUTCString());
    res.setHeader('Cache-Control', 'no-cache');
    res.setHeader('Vary', 'Accept-Encoding');
    res.setHeader('X-Banbus-Seq', String(build.seq));
    if (notModified(req, etag)) {
      res.status(304).end();
      return;
    }

    const family = q.family === 'all' ? 'all' : (Number(q.family) as 4 | 6);
    const key = `${q.family}|${q.format}|${q.max ?? ''}|${q.part ?? ''}`;
    let contentType = CONTENT_TYPES[q.format];
    let rendered: Rendered;
    if (q.max !== undefined) {
      const parts = partCount(countOf(build, q.family), q.max);
      if (q.part === undefined) {
        contentType = 'text/plain; charset=utf-8';
        const urls = Array.from({ length: parts }, (_, i) => partUrl(req, q, i + 1));
        rendered = { body: Buffer.from(urls.join('\n') + '\n') };
      } else {
        if (q.part > parts) {
          throw new HttpError(404, `part ${q.part} does not exist (there are ${parts})`, 'part');
        }
        const from = (q.part - 1) * q.max;
        rendered = await cache.get(build, key, () =>
          builder.render(build, { family, format: q.format, from, to: from + q.max! }),
        );
      }
    } else {
      rendered = await cache.get(build, key, () => builder.render(build, { family, format: q.format }));
    }
    res.setHeader('Content-Type', contentType);
    if (req.acceptsEncodings('gzip', 'identity') === 'gzip') {
      rendered.gzipped ??= gzip(rendered.body);
      const body = await rendered.gzipped;
      res.setHeader('Content-Encoding', 'gzip');
      res.end(body);
      return;
    }
    res.end(rendered.body);
  }

  app.get(
    '/v1/decisions',
    requireRead,
    wrap(async (req, res) => {
      const since = req.query.since;
      if (since !== undefined) {
        const parsed = SinceSchema.safeParse(since);
        if (!parsed.success)
          throw new HttpError(400, 'since must be a seq (a non-negative integer)', 'since');
        await sendDelta(pool, parsed.data, res);
        return;
      }
      if (!follower.isLoaded) {
        throw new HttpError(503, 'the decision snapshot is not loaded yet', undefined, {
          'Retry-After': '2',
        });
      }
      // One seq, one set: a frozen copy, shared by the requests that arrive while the seq stays.
      const snapshot = sharedSnapshot();
      res.setHeader('Content-Type', 'application/json; charset=utf-8');
      res.setHeader('X-Banbus-Seq', String(snapshot.seq));
      if (!(await writeChunk(res, `{"seq":${snapshot.seq},"decisions":[`))) return;
      let first = true;
      for (const chunk of snapshot.jsonChunks()) {
        if (!(await writeChunk(res, first ? chunk : ',' + chunk))) return;
        first = false;
      }
      res.end(']}');
    }),
  );

  return finishApp(app);
}

/** `{seq, changes}` from decision_log, read in one REPEATABLE READ transaction and streamed page by page. */
async function sendDelta(pool: pg.Pool, since: number, res: Response): Promise<void> {
  const client = await pool.connect();
  let open = false;
  try {
    await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
    open = true;
    const { rows } = await client.query<{ last: string; oldest: string | null }>(
      'SELECT (SELECT last FROM decision_seq WHERE id = 1) AS last, (SELECT min(seq) FROM decision_log) AS oldest',
    );
    const last = Number(rows[0]!.last);
    const oldest = rows[0]!.oldest === null ? last + 1 : Number(rows[0]!.oldest);
    if (since < oldest - 1 || since > last) {
      const why =
        since > last
          ? `seq ${since} is ahead of the decision log (${last})`
          : `seq ${since} is older than the retained decision log (oldest ${oldest})`;
      throw new HttpError(410, `${why}: take a snapshot (GET /v1/decisions)`, 'since');
    }
    res.setHeader('Content-Type', 'application/json; charset=utf-8');
    res.setHeader('X-Banbus-Seq', String(last));
    if (!(await writeChunk(res, `{"seq":${last},"changes":[`))) return;
    let first = true;
    for await (const page of readLog(client, since, last)) {
      const text = page.map((c) => JSON.stringify(c)).join(',');
      if (!(await writeChunk(res, (first ? '' : ',') + text))) return;
      first = false;
    }
    res.end(']}');
  } finally {
    if (open) await client.query('COMMIT').catch(() => undefined);
    client.release();
  }
}
