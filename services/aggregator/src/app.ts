// HTTP: the merged blocklists for firewalls, and the decision snapshot / delta for appliers.
import { createHash } from 'node:crypto';
import { promisify } from 'node:util';
import { gzip as gzipCallback } from 'node:zlib';
import type { Express, NextFunction, Request, Response } from 'express';
import type pg from 'pg';
import { z } from 'zod';
import {
  describeIssue,
  renderBlocklist,
  splitParts,
  type BlocklistFormat,
  type MergedBlocklist,
} from '@banbus/core';
import { createServiceApp, finishApp, HttpError, type Logger, type Registry } from '@banbus/runtime';
import type { ReadAuthenticator } from './auth.js';
import type { BlocklistBuilder, Build } from './builder.js';
import type { DecisionFollower } from './follower.js';
import { readLog } from './state.js';

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

/** Rendered answers of the current build; cleared when a new build is served. */
class RenderCache {
  private buildId = -1;
  private readonly entries = new Map<string, Rendered>();

  get(build: Build, key: string, render: () => string): Rendered {
    if (build.id !== this.buildId) {
      this.entries.clear();
      this.buildId = build.id;
    }
    let hit = this.entries.get(key);
    if (!hit) {
      if (this.entries.size >= 64) this.entries.clear();
      hit = { body: Buffer.from(render()) };
      this.entries.set(key, hit);
    }
    return hit;
  }
}

function familyOf(cidr: string): 4 | 6 {
  return cidr.includes(':') ? 6 : 4;
}

function selected(build: Build, family: BlocklistQuery['family']): string[] {
  if (family === '4') return [...build.v4];
  if (family === '6') return [...build.v6];
  return [...build.v4, ...build.v6];
}

function asList(cidrs: readonly string[]): MergedBlocklist {
  const list: MergedBlocklist = { v4: [], v6: [] };
  for (const c of cidrs) list[familyOf(c) === 4 ? 'v4' : 'v6'].push(c);
  return list;
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
  const cache = new RenderCache();

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
      const build = builder.current;
      if (!build)
        throw new HttpError(503, 'the blocklist is not built yet', undefined, { 'Retry-After': '2' });

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

      const key = `${q.family}|${q.format}|${q.max ?? ''}|${q.part ?? ''}`;
      let contentType = CONTENT_TYPES[q.format];
      let rendered: Rendered;
      if (q.max !== undefined) {
        const parts = splitParts(selected(build, q.family), q.max);
        if (parts.length === 0) parts.push([]);
        if (q.part === undefined) {
          contentType = 'text/plain; charset=utf-8';
          rendered = { body: Buffer.from(parts.map((_, i) => partUrl(req, q, i + 1)).join('\n') + '\n') };
        } else {
          const chosen = parts[q.part - 1];
          if (chosen === undefined) {
            throw new HttpError(404, `part ${q.part} does not exist (there are ${parts.length})`, 'part');
          }
          rendered = cache.get(build, key, () =>
            renderBlocklist(asList(chosen), {
              family: q.family === 'all' ? 'all' : (Number(q.family) as 4 | 6),
              format: q.format,
              generatedAt: build.generatedAt,
              seq: build.seq,
            }),
          );
        }
      } else {
        rendered = cache.get(build, key, () =>
          renderBlocklist(
            { v4: [...build.v4], v6: [...build.v6] },
            {
              family: q.family === 'all' ? 'all' : (Number(q.family) as 4 | 6),
              format: q.format,
              generatedAt: build.generatedAt,
              seq: build.seq,
            },
          ),
        );
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
    }),
  );

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
      // One seq, one set: the array of entries is taken synchronously, entries are immutable objects.
      const seq = follower.state.seq;
      const entries = Array.from(follower.state.entries.values());
      res.setHeader('Content-Type', 'application/json; charset=utf-8');
      res.setHeader('X-Banbus-Seq', String(seq));
      if (!(await writeChunk(res, `{"seq":${seq},"decisions":[`))) return;
      const CHUNK = 2000;
      for (let i = 0; i < entries.length; i += CHUNK) {
        const text = entries
          .slice(i, i + CHUNK)
          .map((e) =>
            JSON.stringify({
              target: e.target,
              expires_at: e.expiresAt === null ? null : new Date(e.expiresAt).toISOString(),
              reason: e.reason,
            }),
          )
          .join(',');
        if (!(await writeChunk(res, (i === 0 ? '' : ',') + text))) return;
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
