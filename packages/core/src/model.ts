import { z } from 'zod';
import { normalizeTarget } from './address.js';
import { v7 as uuidv7 } from 'uuid';

export const ORIGINS = ['fail2ban', '3cx', 'manual', 'import'] as const;
export type Origin = (typeof ORIGINS)[number];
export const SCOPES = ['report', 'read', 'admin'] as const;
export type Scope = (typeof SCOPES)[number];

/** A host's name: the same rule as the CHECK on hosts.name; it also names the host's applier queue. */
export const HostNameSchema = z
  .string()
  .regex(
    /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/,
    'a host name is 1-63 letters, digits, dots, dashes or underscores, starting with a letter or digit',
  );

/** A host's scopes, at least one, each once. */
export const HostScopesSchema = z
  .array(z.enum(SCOPES))
  .min(1, 'a host needs at least one scope (report, read, admin)')
  .transform((scopes) => [...new Set(scopes)]);

/** A target in canonical text form (see address.ts); anything else fails with the parser's reason. */
export const TargetSchema = z.string().transform((value, ctx) => {
  try {
    return normalizeTarget(value);
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: (err as Error).message });
    return z.NEVER;
  }
});

/**
 * A new report id: a UUID version 7, whose leading 48 bits are the time in milliseconds. Ids handed out one
 * after another sort in that order, so each new row of `reports` (a table that grows by every report)
 * lands at the right edge of its primary key instead of on a random page of it.
 */
export function newReportId(): string {
  return uuidv7();
}

/** A report as it travels on `<ns>.reports`: what one host says about one target. */
export const ReportSchema = z.object({
  id: z.uuid(),
  action: z.enum(['ban', 'unban']),
  target: TargetSchema,
  /** From the token, never from the request body. */
  host: z.string().min(1).max(63),
  origin: z.enum(ORIGINS),
  jail: z.string().max(64).nullish(),
  reason: z.string().max(200).nullish(),
  /** Seconds; -1 = permanent; absent = permanent unless policy says otherwise. */
  bantime: z.number().int().min(-1).max(2_147_483_647).nullish(),
  failures: z.number().int().min(0).max(2_147_483_647).nullish(),
  matches: z.string().max(1000).nullish(),
  /** When the host saw it (ISO 8601). */
  time: z.iso.datetime({ offset: true }),
});
export type Report = z.infer<typeof ReportSchema>;

/** One banned target, as the fleet enforces it. */
export const DecisionSchema = z.object({
  target: TargetSchema,
  origin: z.enum(ORIGINS),
  first_seen: z.iso.datetime({ offset: true }),
  last_seen: z.iso.datetime({ offset: true }),
  expires_at: z.iso.datetime({ offset: true }).nullable(),
  reporters: z.number().int().min(0),
  ban_count: z.number().int().min(0),
  reason: z.string().nullable(),
});
export type Decision = z.infer<typeof DecisionSchema>;

/** One entry of the decision stream on the `<ns>.decisions` fanout. `add` is an upsert. */
export const DecisionChangeSchema = z.object({
  seq: z.number().int().positive(),
  op: z.enum(['add', 'del']),
  target: TargetSchema,
  expires_at: z.iso.datetime({ offset: true }).nullish(),
  reason: z.string().nullish(),
});
export type DecisionChange = z.infer<typeof DecisionChangeSchema>;

/** Turns a zod error into the first field name and a sentence, for `{error, field}` answers. */
export function describeIssue(error: z.ZodError): { field: string; message: string } {
  const issue = error.issues[0];
  if (!issue) return { field: 'body', message: 'invalid input' };
  const field = issue.path.length > 0 ? issue.path.map(String).join('.') : 'body';
  return { field, message: issue.message };
}

/** Most reports one message on `<ns>.reports` carries. Batches travel packed so that ingest's batch
 *  path is not bound by the broker's confirmed-publish rate (~41,000 messages/s). */
export const MAX_REPORTS_PER_MESSAGE = 500;

/**
 * The body of a message on `<ns>.reports`: one report (as a script or an operator would publish it) or
 * an array of up to MAX_REPORTS_PER_MESSAGE. Always read as an array.
 */
export const ReportMessageSchema = z.union([
  ReportSchema.transform((report) => [report]),
  z.array(ReportSchema).min(1).max(MAX_REPORTS_PER_MESSAGE),
]);
export type ReportMessage = z.infer<typeof ReportMessageSchema>;

/** Most decision changes one message on `<ns>.decisions` carries. */
export const MAX_CHANGES_PER_MESSAGE = 500;

/**
 * The body of a message on `<ns>.decisions`: one change, or an array of consecutive changes in seq
 * order (the relay packs what it publishes at once). Always read as an array; consumers apply each
 * seq once, in order.
 */
export const DecisionMessageSchema = z.union([
  DecisionChangeSchema.transform((change) => [change]),
  z.array(DecisionChangeSchema).min(1).max(MAX_CHANGES_PER_MESSAGE),
]);
export type DecisionMessage = z.infer<typeof DecisionMessageSchema>;
