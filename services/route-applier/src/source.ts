// Where snapshots and deltas come from: the aggregator's GET /v1/decisions. The applier sees only the
// DecisionSource interface; tests give it a fake.
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { z } from 'zod';
import { DecisionChangeSchema, type DecisionChange } from '@banbus/core';
import { TargetList } from './target-set.js';

export interface Snapshot {
  seq: number;
  /** Decision targets as sent (the applier parses and normalizes them). */
  targets: readonly string[] | TargetList;
}

export interface Delta {
  seq: number;
  changes: DecisionChange[];
}

export interface DecisionSource {
  snapshot(): Promise<Snapshot>;
  /** The changes after `since`, or 'gone' (410) when the log no longer reaches back that far. */
  delta(since: number): Promise<Delta | 'gone'>;
}

export type SourceFailure = 'unavailable' | 'truncated' | 'invalid' | 'suspicious';

/** A snapshot or delta that cannot be used; the applier keeps what the host holds and tries again. */
export class SourceError extends Error {
  constructor(
    readonly reason: SourceFailure,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'SourceError';
  }
}

const DeltaSchema = z.object({
  seq: z.number().int().min(0),
  changes: z.array(DecisionChangeSchema),
});

export interface HttpSourceOptions {
  /** The aggregator's base URL. */
  url: string;
  token?: string;
  timeoutMs: number;
}

/** GET /v1/decisions[?since=SEQ] on the aggregator, with a read-scope token as Bearer. */
export class HttpDecisionSource implements DecisionSource {
  private readonly base: string;

  constructor(private readonly options: HttpSourceOptions) {
    this.base = options.url.replace(/\/+$/, '');
  }

  /**
   * GET on the aggregator with node:http rather than fetch: fetch loads undici and compiles its WASM
   * HTTP parser, some 15 MB of RSS on a process that otherwise needs little more than that for 100k bans.
   */
  private open(path: string): Promise<IncomingMessage> {
    const headers: Record<string, string> = { accept: 'application/json' };
    if (this.options.token) headers.authorization = `Bearer ${this.options.token}`;
    const url = new URL(this.base + path);
    const request = url.protocol === 'https:' ? httpsRequest : httpRequest;
    return new Promise((resolve, reject) => {
      const req = request(url, { headers, signal: AbortSignal.timeout(this.options.timeoutMs) }, resolve);
      req.once('error', (err) =>
        reject(
          new SourceError('unavailable', `cannot reach the aggregator at ${this.base}: ${describe(err)}`, {
            cause: err,
          }),
        ),
      );
      req.end();
    });
  }

  private async get(path: string): Promise<{ status: number; text: string }> {
    const res = await this.open(path);
    res.setEncoding('utf8');
    let text = '';
    try {
      for await (const chunk of res) text += chunk as string;
    } catch (err) {
      // The connection broke while the body streamed: a truncated answer.
      throw new SourceError('truncated', `the aggregator's answer broke off: ${describe(err)}`, {
        cause: err,
      });
    }
    return { status: res.statusCode ?? 0, text };
  }

  async snapshot(): Promise<Snapshot> {
    const res = await this.open('/v1/decisions');
    if (res.statusCode !== 200) {
      const { text } = await drain(res);
      throw new SourceError(
        'unavailable',
        `GET /v1/decisions answered ${res.statusCode}: ${text.slice(0, 200)}`,
      );
    }
    // Read as it streams: 100k decisions are megabytes of JSON that need not be held, nor parsed into
    // an object per decision, on a host that only needs the targets.
    const scanner = new SnapshotScanner();
    res.setEncoding('utf8');
    try {
      for await (const chunk of res) scanner.push(chunk as string);
    } catch (err) {
      // The connection broke while the body streamed: a truncated answer.
      throw new SourceError('truncated', `the snapshot broke off: ${describe(err)}`, { cause: err });
    }
    const snapshot = scanner.finish();
    const header = res.headers['x-banbus-seq'];
    if (typeof header === 'string' && Number(header) !== snapshot.seq) {
      throw new SourceError(
        'invalid',
        `the snapshot's seq ${snapshot.seq} differs from X-Banbus-Seq ${header}`,
      );
    }
    return snapshot;
  }

  async delta(since: number): Promise<Delta | 'gone'> {
    const res = await this.get(`/v1/decisions?since=${since}`);
    if (res.status === 410) return 'gone';
    if (res.status !== 200) {
      throw new SourceError(
        'unavailable',
        `GET /v1/decisions?since=${since} answered ${res.status}: ${res.text.slice(0, 200)}`,
      );
    }
    let body: unknown;
    try {
      body = JSON.parse(res.text);
    } catch (err) {
      throw new SourceError('truncated', `the delta is not complete JSON: ${describe(err)}`);
    }
    const parsed = DeltaSchema.safeParse(body);
    if (!parsed.success)
      throw new SourceError(
        'invalid',
        `the delta does not match its schema: ${parsed.error.issues[0]?.message}`,
      );
    return parsed.data;
  }
}

/** The start of an answer we refuse, for the message; never throws. */
async function drain(res: IncomingMessage): Promise<{ text: string }> {
  let text = '';
  try {
    res.setEncoding('utf8');
    for await (const chunk of res) if (text.length < 1000) text += chunk as string;
  } catch {
    // what arrived is enough for a message
  }
  return { text };
}

function describe(err: unknown): string {
  if (err instanceof Error) {
    const cause = (err as { cause?: unknown }).cause;
    return cause instanceof Error ? `${err.message} (${cause.message})` : err.message;
  }
  return String(err);
}

const HEAD = /^\s*\{\s*"seq"\s*:\s*(\d+)\s*,\s*"decisions"\s*:\s*\[/;
const TARGET = /"target"\s*:\s*"([^"\\]*)"/g;
/** Longest text kept between chunks while looking for the next target (a whole entry fits). */
const CARRY = 400;

/**
 * Reads the targets out of a snapshot body chunk by chunk. The aggregator writes
 * `{"seq":N,"decisions":[{"target":…,"expires_at":…,"reason":…},…]}`: a quote cannot appear unescaped
 * inside a JSON string, so `"target":"…"` only ever matches the key. A body of any other shape is
 * collected whole and parsed with JSON.parse instead. `finish` checks the body was complete.
 */
export class SnapshotScanner {
  private buf = '';
  private seq: number | undefined;
  private whole: string[] | undefined;
  private bytes = 0;
  readonly targets = new TargetList();

  push(text: string): void {
    this.bytes += text.length;
    if (this.whole) {
      this.whole.push(text);
      return;
    }
    this.buf += text;
    if (this.seq === undefined) {
      const head = HEAD.exec(this.buf);
      if (!head) {
        if (this.buf.length > CARRY) this.whole = [this.buf];
        return;
      }
      this.seq = Number(head[1]);
      this.buf = this.buf.slice(head[0].length);
    }
    TARGET.lastIndex = 0;
    let end = 0;
    for (let m = TARGET.exec(this.buf); m !== null; m = TARGET.exec(this.buf)) {
      this.targets.push(m[1]!);
      end = TARGET.lastIndex;
    }
    this.buf = this.buf.slice(end);
    // Between entries only the end of the text can start the next target.
    if (this.buf.length > CARRY) this.buf = this.buf.slice(-CARRY);
  }

  finish(): Snapshot {
    if (this.whole) return parseSnapshot(this.whole.join(''));
    if (this.seq === undefined) return parseSnapshot(this.buf);
    if (!/\]\s*\}\s*$/.test(this.buf)) {
      throw new SourceError(
        'truncated',
        `the snapshot ends before its closing "]}" (${this.bytes} characters read)`,
      );
    }
    if (!Number.isSafeInteger(this.seq)) throw new SourceError('invalid', 'the snapshot has no valid "seq"');
    return { seq: this.seq, targets: this.targets };
  }
}

/** The snapshot from its whole text (the slow path, for bodies not shaped as the aggregator writes them). */
export function parseSnapshot(text: string): Snapshot {
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch (err) {
    throw new SourceError(
      'truncated',
      `the snapshot is not complete JSON (${text.length} characters): ${describe(err)}`,
    );
  }
  const b = body as { seq?: unknown; decisions?: unknown };
  if (typeof b !== 'object' || b === null || !Number.isSafeInteger(b.seq) || (b.seq as number) < 0) {
    throw new SourceError('invalid', 'the snapshot has no valid "seq"');
  }
  if (!Array.isArray(b.decisions)) throw new SourceError('invalid', 'the snapshot has no "decisions" array');
  const targets = new Array<string>(b.decisions.length);
  for (let i = 0; i < b.decisions.length; i++) {
    const target = (b.decisions[i] as { target?: unknown } | null)?.target;
    if (typeof target !== 'string')
      throw new SourceError('invalid', `decision ${i} of the snapshot has no target`);
    targets[i] = target;
  }
  return { seq: b.seq as number, targets };
}
