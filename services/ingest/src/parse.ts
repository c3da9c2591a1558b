// Turns what a client sent (JSON object, JSON array, form fields, or the old fail2ban.php query) into
// validated report inputs. No I/O: the checks that need state (allowlist, scopes, rate) live in checks.ts.
import { z } from 'zod';
import { HttpError } from '@banbus/runtime';
import { ORIGINS, newReportId, parseTarget, type Origin, type Target } from '@banbus/core';

/** One report as the client described it, validated and normalized; host and checks come later. */
export interface ReportInput {
  id: string;
  action: 'ban' | 'unban';
  target: Target;
  origin: Origin;
  jail: string | null;
  reason: string | null;
  bantime: number | null;
  failures: number | null;
  matches: string | null;
  /** ISO 8601 with offset. */
  time: string;
}

export interface ParseOptions {
  /** Largest array accepted (INGEST_MAX_BATCH). */
  maxBatch: number;
  /** Used for reports without `time`; injectable for tests. */
  now?: () => Date;
}

// fail2ban jail names are config section names such as "sshd", "nginx-http-auth", "postfix-sasl" or
// "recidive". Allowing only this set keeps quotes, markup and control characters out of the database,
// the logs and the console, instead of trusting every consumer to escape them.
const JAIL_PATTERN = /^[A-Za-z0-9._:@-]+$/;
// Control characters (C0, DEL, C1) have no place in a one-line reason; NUL cannot even be stored in a
// PostgreSQL text column, so letting it through would only poison the persister.
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;
// matches is fail2ban's <matches>: several log lines, so newlines and tabs are fine, other controls not.
// eslint-disable-next-line no-control-regex
const CONTROL_EXCEPT_WHITESPACE = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]/;
const NUMERIC = /^[+-]?\d+(\.\d+)?$/;
const INT_MAX = 2_147_483_647;
// 9999-12-31T23:59:59Z: beyond that toISOString() leaves the ISO 8601 form the report schema expects.
const MAX_EPOCH_SECONDS = 253_402_300_799;

/** zod error map: "<field> is required" / "<field> must be a <type>", else zod's own sentence. */
function typed(field: string, expected = 'string') {
  return {
    error: (issue: { code?: string; input?: unknown }) =>
      issue.input === undefined
        ? `${field} is required`
        : issue.code === 'invalid_type'
          ? `${field} must be a ${expected}`
          : undefined,
  };
}

/** A number, or a decimal string as form fields and fail2ban tags deliver them. */
function numberLike(field: string) {
  return z.union([z.number(), z.string()], typed(field, 'number')).transform((value, ctx) => {
    const n = typeof value === 'number' ? value : NUMERIC.test(value.trim()) ? Number(value.trim()) : NaN;
    if (!Number.isFinite(n)) {
      ctx.addIssue({ code: 'custom', message: `${field} must be a number` });
      return z.NEVER;
    }
    return n;
  });
}

const BantimeSchema = numberLike('bantime').transform((n, ctx) => {
  // -1 is fail2ban's "permanent"; anything else negative is a mistake, not a smaller forever.
  if (n === -1) return -1;
  if (n < 0 || n > INT_MAX) {
    ctx.addIssue({ code: 'custom', message: 'bantime must be -1 (permanent) or a number of seconds from 0' });
    return z.NEVER;
  }
  // Escalated bantimes may arrive with a fraction; a ban is at least whole seconds.
  return Math.floor(n);
});

const FailuresSchema = numberLike('failures').transform((n, ctx) => {
  if (!Number.isInteger(n) || n < 0 || n > INT_MAX) {
    ctx.addIssue({ code: 'custom', message: 'failures must be a whole number from 0' });
    return z.NEVER;
  }
  return n;
});

// fail2ban's <time> is epoch seconds with decimals ("1732000000.123456"); API clients send ISO 8601.
const TimeSchema = z
  .union([z.number(), z.string()], typed('time', 'number or an ISO 8601 string'))
  .transform((value, ctx) => {
    const text = typeof value === 'number' ? String(value) : value.trim();
    let ms: number;
    if (typeof value === 'number' || NUMERIC.test(text)) {
      const seconds = Number(text);
      ms = Number.isFinite(seconds) && seconds >= 0 && seconds <= MAX_EPOCH_SECONDS ? seconds * 1000 : NaN;
    } else if (z.iso.datetime({ offset: true }).safeParse(text).success) {
      ms = Date.parse(text);
    } else {
      ms = NaN;
    }
    if (!Number.isFinite(ms) || ms > MAX_EPOCH_SECONDS * 1000) {
      ctx.addIssue({
        code: 'custom',
        message: 'time must be epoch seconds or an ISO 8601 date-time with an offset',
      });
      return z.NEVER;
    }
    return new Date(ms).toISOString();
  });

const TargetFieldSchema = z.string(typed('ip')).transform((value, ctx) => {
  try {
    return parseTarget(value.trim());
  } catch (err) {
    ctx.addIssue({
      code: 'custom',
      message: `ip is not a valid address or network: ${(err as Error).message}`,
    });
    return z.NEVER;
  }
});

const ReportFields = {
  ip: TargetFieldSchema,
  id: z
    .uuid({ error: (i) => (typeof i.input === 'string' ? 'id must be a UUID' : 'id must be a string') })
    .optional(),
  jail: z
    .string(typed('jail'))
    .max(64, 'jail must be at most 64 characters')
    .regex(JAIL_PATTERN, 'jail may contain only letters, digits and . _ : @ -')
    .optional(),
  reason: z
    .string(typed('reason'))
    .max(200, 'reason must be at most 200 characters')
    .refine((s) => !CONTROL.test(s), 'reason must not contain control characters')
    .optional(),
  bantime: BantimeSchema.optional(),
  failures: FailuresSchema.optional(),
  matches: z
    .string(typed('matches'))
    .max(1000, 'matches must be at most 1000 characters')
    .refine((s) => !CONTROL_EXCEPT_WHITESPACE.test(s), 'matches must not contain control characters')
    .optional(),
  time: TimeSchema.optional(),
  // Who made the report: fail2ban (default), the 3CX importer, an operator. checks.ts limits
  // manual/import to admin tokens, because a manual unban ends every host's ban of the target.
  origin: z.enum(ORIGINS, { error: `origin must be one of ${ORIGINS.join(', ')}` }).optional(),
};

/** Empty fields ("jail=" from a fail2ban tag that was empty) and nulls mean "not given". */
function dropEmpty(value: unknown): unknown {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return value;
  const fields = value as Record<string, unknown>;
  // Most reports have no empty field: then the object is passed on as it is, without a copy.
  let empty = false;
  for (const k in fields) {
    const v = fields[k];
    if (v === '' || v === null || v === undefined) {
      empty = true;
      break;
    }
  }
  if (!empty) return value;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(fields)) if (v !== '' && v !== null && v !== undefined) out[k] = v;
  return out;
}

const objectError = { error: 'each report must be a JSON object' };
// Unknown fields are ignored rather than refused: in particular `host` and `token` in a body never
// count (the host comes from the Authorization header), and newer clients may send more than we read.
const ReportBodySchema = z.preprocess(
  dropEmpty,
  z.object(
    {
      ...ReportFields,
      action: z.enum(['ban', 'unban'], { error: 'action must be "ban" or "unban"' }).default('ban'),
    },
    objectError,
  ),
);

// The old PHP page: ?action=add|delete&source=<jail>&reason=…&ip=… (its query names, its actions).
const CompatQuerySchema = z.preprocess(
  dropEmpty,
  z.object({
    ip: TargetFieldSchema,
    action: z
      .enum(['add', 'delete'], { error: 'action must be "add" or "delete"' })
      .default('add')
      .transform((a) => (a === 'add' ? ('ban' as const) : ('unban' as const))),
    source: ReportFields.jail,
    reason: ReportFields.reason,
    bantime: ReportFields.bantime,
    failures: ReportFields.failures,
    time: ReportFields.time,
  }),
);

type ParsedBody = z.infer<typeof ReportBodySchema>;

function fieldName(prefix: string, path: readonly PropertyKey[]): string {
  const rest = path.map(String).join('.');
  if (!prefix) return rest || 'body';
  return rest ? `${prefix}.${rest}` : prefix;
}

function fail(error: z.ZodError, prefix: string): never {
  const issue = error.issues[0];
  const field = fieldName(prefix, issue?.path ?? []);
  const message = issue?.message ?? 'invalid report';
  throw new HttpError(400, prefix ? `${prefix}: ${message}` : message, field);
}

function toInput(data: ParsedBody, now: () => Date): ReportInput {
  return {
    id: data.id ?? newReportId(),
    action: data.action,
    target: data.ip,
    origin: data.origin ?? 'fail2ban',
    jail: data.jail ?? null,
    reason: data.reason ?? null,
    bantime: data.bantime ?? null,
    failures: data.failures ?? null,
    matches: data.matches ?? null,
    time: data.time ?? now().toISOString(),
  };
}

/** Form fields arrive as strings, or arrays when a key is repeated: one report has one value each. */
function singleValues(fields: Record<string, unknown>): Record<string, unknown> {
  for (const [k, v] of Object.entries(fields)) {
    if (Array.isArray(v) || (v !== null && typeof v === 'object')) {
      throw new HttpError(400, `${k} must be given once`, k);
    }
  }
  return fields;
}

/**
 * Validates a POST /v1/reports body. `kind` is what the Content-Type said. All or nothing: the first
 * invalid item of an array fails the whole request with its position (`[3].ip`).
 */
export function parseReportBody(body: unknown, kind: 'json' | 'form', options: ParseOptions): ReportInput[] {
  const now = options.now ?? (() => new Date());
  if (kind === 'form') {
    if (body === null || typeof body !== 'object') throw new HttpError(400, 'request body is empty', 'body');
    const result = ReportBodySchema.safeParse(singleValues(body as Record<string, unknown>));
    if (!result.success) fail(result.error, '');
    return [toInput(result.data, now)];
  }
  if (Array.isArray(body)) {
    if (body.length === 0) throw new HttpError(400, 'the array holds no reports', 'body');
    if (body.length > options.maxBatch) {
      throw new HttpError(
        400,
        `at most ${options.maxBatch} reports per request (got ${body.length})`,
        'body',
      );
    }
    const out: ReportInput[] = new Array(body.length);
    // Ids the client gave must be unique within the request: downstream, a second report with the
    // same id from the same host is taken for a repeat and dropped, which would lose a different report.
    const seen = new Map<string, number>();
    for (let i = 0; i < body.length; i++) {
      const result = ReportBodySchema.safeParse(body[i]);
      if (!result.success) fail(result.error, `[${i}]`);
      const id = result.data.id;
      if (id !== undefined) {
        const first = seen.get(id.toLowerCase());
        if (first !== undefined)
          throw new HttpError(400, `[${i}]: id repeats the id of [${first}]`, `[${i}].id`);
        seen.set(id.toLowerCase(), i);
      }
      out[i] = toInput(result.data, now);
    }
    return out;
  }
  if (body === null || typeof body !== 'object') {
    throw new HttpError(400, 'request body must be a JSON object or array', 'body');
  }
  const result = ReportBodySchema.safeParse(body);
  if (!result.success) fail(result.error, '');
  return [toInput(result.data, now)];
}

/** Validates the query of GET /fail2ban.php (the token is read by auth, not here). */
export function parseCompatQuery(
  query: Record<string, unknown>,
  options: { now?: () => Date } = {},
): ReportInput {
  const now = options.now ?? (() => new Date());
  const { token: _token, ...fields } = singleValues(query);
  const result = CompatQuerySchema.safeParse(fields);
  if (!result.success) {
    const issue = result.error.issues[0];
    const path = issue?.path ?? [];
    throw new HttpError(400, issue?.message ?? 'invalid request', fieldName('', path));
  }
  const d = result.data;
  return toInput(
    {
      ip: d.ip,
      action: d.action,
      jail: d.source,
      reason: d.reason,
      bantime: d.bantime,
      failures: d.failures,
      time: d.time,
      origin: 'fail2ban',
    } as ParsedBody,
    now,
  );
}
