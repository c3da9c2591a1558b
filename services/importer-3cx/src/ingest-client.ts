// POST /v1/reports with a JSON array: ingest's batch path. Shared by the 3CX importer and `banbus import`.
// The answer is sorted into what the caller must do: done, drop one report (ingest refuses a whole
// request for its first bad report and names it as `[i].field`), try again later, or stop and fix the setup.

/** Ingest is away or busy (network error, timeout, 429, 5xx): the same request may succeed later. */
export class IngestUnavailableError extends Error {
  override name = 'IngestUnavailableError';
  constructor(
    message: string,
    readonly status: number | null,
    /** From Retry-After, when ingest sent one. */
    readonly retryAfterMs: number | null,
  ) {
    super(message);
  }
}

/** Ingest refused the request as a whole (bad token, no scope, too large): retrying the same will not help. */
export class IngestRefusedError extends Error {
  override name = 'IngestRefusedError';
  constructor(
    message: string,
    readonly status: number,
    readonly field: string | null,
  ) {
    super(message);
  }
}

export type SendResult =
  | { kind: 'accepted'; ids: string[] }
  /** The report at `index` was refused (invalid, allowlisted, too broad, not allowed); the others were not sent. */
  | { kind: 'rejected'; index: number; status: number; error: string; reason: string | null };

export interface IngestClientOptions {
  /** Where ingest answers, e.g. http://banbus.example.org:8080 */
  url: string;
  token: string;
  /** Per request; a timed-out request counts as unavailable (resending the same ids is harmless). */
  timeoutMs?: number;
}

interface ErrorBody {
  error?: unknown;
  field?: unknown;
  reason?: unknown;
}

const ITEM_FIELD = /^\[(\d+)\]/;

export class IngestClient {
  private readonly endpoint: string;
  private readonly timeoutMs: number;

  constructor(private readonly options: IngestClientOptions) {
    this.endpoint = new URL('/v1/reports', options.url).toString();
    this.timeoutMs = options.timeoutMs ?? 30_000;
  }

  /** Sends `reports` (each a report body; give each an `id` so a retry is idempotent) in one request. */
  async send(reports: readonly object[], signal?: AbortSignal): Promise<SendResult> {
    const timeout = AbortSignal.timeout(this.timeoutMs);
    let res: Response;
    try {
      res = await fetch(this.endpoint, {
        method: 'POST',
        headers: {
          authorization: `Bearer ${this.options.token}`,
          'content-type': 'application/json',
        },
        body: JSON.stringify(reports),
        signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
      });
    } catch (err) {
      if (signal?.aborted) throw err;
      const cause = (err as { cause?: { code?: string; message?: string } }).cause;
      const detail = timeout.aborted
        ? `no answer within ${this.timeoutMs} ms`
        : (cause?.code ?? cause?.message ?? (err as Error).message);
      throw new IngestUnavailableError(
        `ingest at ${this.options.url} is not reachable: ${detail}`,
        null,
        null,
      );
    }
    const text = await res.text().catch(() => '');
    let body: ErrorBody & { ids?: unknown } = {};
    try {
      body = JSON.parse(text) as typeof body;
    } catch {
      // Not JSON (a proxy's error page): the status says enough.
    }
    if (res.status === 202 || res.status === 200) {
      const ids = Array.isArray(body.ids) ? body.ids.map(String) : [];
      return { kind: 'accepted', ids };
    }
    const message = typeof body.error === 'string' ? body.error : `HTTP ${res.status}`;
    const field = typeof body.field === 'string' ? body.field : null;
    if (res.status === 429 || res.status >= 500) {
      throw new IngestUnavailableError(
        `ingest answered ${res.status}: ${message}`,
        res.status,
        retryAfter(res.headers.get('retry-after')),
      );
    }
    const item = field === null ? null : ITEM_FIELD.exec(field);
    // A single report is answered with the bare field name ("ip"); the token and the body as a whole
    // are not about one report.
    const index = item
      ? Number(item[1])
      : reports.length === 1 && field !== null && field !== 'token' && field !== 'body'
        ? 0
        : null;
    // 403 on `origin` is about the token (that origin needs the admin scope), whichever report it names.
    const aboutToken = res.status === 403 && field !== null && /(^|\.)origin$/.test(field);
    if (index !== null && !aboutToken && index < reports.length && [400, 403, 422].includes(res.status)) {
      return {
        kind: 'rejected',
        index,
        status: res.status,
        error: message,
        reason: typeof body.reason === 'string' ? body.reason : null,
      };
    }
    throw new IngestRefusedError(`ingest answered ${res.status}: ${message}`, res.status, field);
  }
}

function retryAfter(header: string | null): number | null {
  if (header === null) return null;
  const seconds = Number(header);
  if (Number.isFinite(seconds) && seconds >= 0) return seconds * 1000;
  const at = Date.parse(header);
  return Number.isFinite(at) ? Math.max(0, at - Date.now()) : null;
}
