// Input of the admin API, validated at the edge with zod; the CLI validates its arguments with the same
// schemas before it calls the API or the database.
import { z } from 'zod';
import {
  DurationSeconds,
  HostNameSchema,
  HostScopesSchema,
  MAX_BANTIME_SECONDS,
  ORIGINS,
  TargetSchema,
} from '@banbus/core';

export const SORTS = ['last_seen', 'target'] as const;
export type Sort = (typeof SORTS)[number];
export const ORDERS = ['desc', 'asc'] as const;
export type Order = (typeof ORDERS)[number];

export const MAX_PAGE = 500;

/** An instant: ISO 8601, or a duration back from now ("24h", "7d", "90m"). */
export const InstantSchema = z.string().transform((value, ctx) => {
  const relative = /^\s*(\d+)\s*([smhdw])\s*$/.exec(value);
  if (relative) {
    const seconds = Number(relative[1]) * { s: 1, m: 60, h: 3600, d: 86400, w: 604800 }[relative[2] as 's'];
    return new Date(Date.now() - seconds * 1000);
  }
  const iso = z.iso.datetime({ offset: true }).or(z.iso.date()).safeParse(value.trim());
  if (!iso.success) {
    ctx.addIssue({
      code: 'custom',
      message: 'expected an ISO 8601 time (2024-05-01T12:00:00Z) or an age like 24h',
    });
    return z.NEVER;
  }
  return new Date(iso.data);
});

const text = (max: number) => z.string().trim().min(1).max(max);

/** GET /v1/admin/decisions */
export const DecisionQuerySchema = z.object({
  /** An address finds the decisions covering it; a network finds the decisions overlapping it. */
  target: TargetSchema.optional(),
  jail: text(64).optional(),
  host: text(63).optional(),
  origin: z.enum(ORIGINS, { error: `origin must be one of ${ORIGINS.join(', ')}` }).optional(),
  /** last_seen at or after / before. */
  since: InstantSchema.optional(),
  until: InstantSchema.optional(),
  sort: z.enum(SORTS, { error: `sort must be one of ${SORTS.join(', ')}` }).default('last_seen'),
  order: z.enum(ORDERS, { error: 'order must be asc or desc' }).optional(),
  limit: z.coerce.number().int().min(1).max(MAX_PAGE).default(50),
  cursor: z.string().max(200).optional(),
});
export type DecisionQueryInput = z.input<typeof DecisionQuerySchema>;
export type DecisionQuery = z.infer<typeof DecisionQuerySchema>;

/** A ban duration: seconds or 30m / 24h / 7d; absent = the policy's default bantime. */
export const BanDurationSchema = DurationSeconds.pipe(
  z
    .number()
    .int()
    .min(1, 'the duration must be positive')
    .max(MAX_BANTIME_SECONDS, 'the duration is longer than 100 years'),
);

/** A reason as reports carry it: one line. */
const reason = text(200).refine(
  // eslint-disable-next-line no-control-regex -- control characters are exactly what is refused
  (s) => !/[\u0000-\u001f\u007f]/.test(s),
  'the reason must be one line of text',
);

/** POST /v1/admin/ban */
export const BanSchema = z.object({
  target: TargetSchema,
  duration: BanDurationSchema.optional(),
  reason: reason.optional(),
});

/** POST /v1/admin/unban */
export const UnbanSchema = z.object({
  target: TargetSchema,
  reason: reason.optional(),
  /** Send the unban even when nothing is banned there now (a ban still on its way). */
  force: z.boolean().optional(),
});

/** POST /v1/admin/allowlist */
export const AllowSchema = z.object({
  network: TargetSchema,
  comment: text(500).optional(),
  /** Seconds or 12h / 7d from now; absent = never. */
  expires: DurationSeconds.pipe(z.number().int().positive('the duration must be positive')).optional(),
});

/** POST /v1/admin/hosts */
export const HostAddSchema = z.object({
  name: HostNameSchema,
  scopes: HostScopesSchema.default(['report']),
});

/** POST /v1/admin/session */
export const LoginSchema = z.union([
  z.object({ token: z.string().min(1).max(300) }).strict(),
  z.object({ user: HostNameSchema, password: z.string().min(1).max(1024) }).strict(),
]);

/**
 * POST /v1/admin/appliers/heartbeat: what an applier reports. The route-applier's own `GET /v1/status`
 * answer has this shape (`host`, `seq`, `backend`, `entries`, `ready`, `lag.seconds`), so it can post
 * that object as it is; unknown fields are ignored.
 */
export const HeartbeatSchema = z.object({
  host: HostNameSchema,
  seq: z.number().int().min(0),
  backend: z.string().max(32).optional(),
  entries: z.number().int().min(0).optional(),
  ready: z.boolean().optional(),
  lag: z
    .object({ seconds: z.number().min(0).max(1e9) })
    .partial()
    .optional(),
});
export type Heartbeat = z.infer<typeof HeartbeatSchema>;
