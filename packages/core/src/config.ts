import { z } from 'zod';
import { TargetSchema } from './model.js';

/** Raised when the environment does not validate; names the variable so the operator can fix it. */
export class ConfigError extends Error {
  constructor(
    readonly variable: string,
    message: string,
  ) {
    super(`${variable}: ${message}`);
    this.name = 'ConfigError';
  }
}

const port = (fallback: number) => z.coerce.number().int().min(0).max(65535).default(fallback);
const bool = (fallback: boolean) =>
  z
    .enum(['1', '0', 'true', 'false', 'yes', 'no', 'on', 'off'])
    .default(fallback ? 'true' : 'false')
    .transform((v) => ['1', 'true', 'yes', 'on'].includes(v));

/** Durations in the environment: plain seconds or with a unit (30s, 10m, 24h, 7d, 2w). */
export const DurationSeconds = z.union([z.number(), z.string()]).transform((value, ctx) => {
  const m = /^\s*(-?\d+)\s*([smhdw]?)\s*$/.exec(String(value));
  if (!m) {
    ctx.addIssue({ code: 'custom', message: 'expected a duration like 600, 10m, 24h or 7d' });
    return z.NEVER;
  }
  const unit = { '': 1, s: 1, m: 60, h: 3600, d: 86400, w: 604800 }[m[2] as '' | 's'];
  return Number(m[1]) * unit;
});

export const CommonEnvSchema = z.object({
  DATABASE_URL: z.string().min(1).default('postgres://postgres@127.0.0.1:5432/banbus'),
  AMQP_URL: z.string().min(1).default('amqp://guest:guest@127.0.0.1:5672'),
  BANBUS_NAMESPACE: z
    .string()
    .regex(/^[a-z0-9][a-z0-9_.-]{0,62}$/, 'lowercase letters, digits, ".", "_" and "-" only')
    .default('banbus'),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  /** Address the HTTP services listen on. */
  BANBUS_LISTEN: z.string().default('0.0.0.0'),
});

/** Decision policy: durations, escalation, breadth limits. Read by ingest (checks) and persister (decides). */
export const PolicyEnvSchema = z.object({
  /** Bantime applied when a report has none; -1 = permanent (the design's default). */
  BANBUS_DEFAULT_BANTIME: DurationSeconds.default(-1),
  /** Escalate repeat offenders like fail2ban's bantime.increment. */
  BANBUS_BANTIME_INCREMENT: bool(false),
  BANBUS_BANTIME_FACTOR: z.coerce.number().min(1).max(100).default(2),
  /** Cap for escalated bantimes. */
  BANBUS_BANTIME_MAX: DurationSeconds.default(7 * 86400),
  BANBUS_MIN_PREFIX_V4: z.coerce.number().int().min(0).max(32).default(16),
  BANBUS_MIN_PREFIX_V6: z.coerce.number().int().min(0).max(128).default(32),
  /** Widen single IPv6 addresses to this prefix (e.g. 64); 0 = off. */
  BANBUS_IPV6_WIDEN: z.coerce.number().int().min(0).max(128).default(0),
});

export const IngestEnvSchema = CommonEnvSchema.merge(PolicyEnvSchema).extend({
  INGEST_PORT: port(8080),
  /** Reports per host per second (sustained) and the burst on top. */
  INGEST_RATE_LIMIT: z.coerce.number().int().min(1).default(200),
  INGEST_RATE_BURST: z.coerce.number().int().min(1).default(2000),
  /** Largest array one request may carry. */
  INGEST_MAX_BATCH: z.coerce.number().int().min(1).max(100_000).default(10_000),
  /** How long a token stays cached (seconds); the cache also serves while PostgreSQL is away. */
  INGEST_TOKEN_CACHE_TTL: DurationSeconds.default(30),
});

export const PersisterEnvSchema = CommonEnvSchema.merge(PolicyEnvSchema).extend({
  PERSISTER_BATCH_SIZE: z.coerce.number().int().min(1).max(10_000).default(1000),
  /** Messages in flight from the broker; a message holds one report or up to 500 packed ones. */
  PERSISTER_PREFETCH: z.coerce.number().int().min(1).max(65_535).default(1000),
  /** Delivery attempts before a failing report is dead-lettered. */
  PERSISTER_MAX_RETRIES: z.coerce.number().int().min(0).max(100).default(5),
  /** Seconds between sweeps for expired decisions. */
  PERSISTER_SWEEP_INTERVAL: DurationSeconds.default(10),
  /**
   * How long decision_log rows are kept: an applier away longer gets 410 for its delta and takes a
   * snapshot instead.
   */
  PERSISTER_LOG_RETENTION: DurationSeconds.pipe(z.number().int().min(60)).default(7 * 86_400),
  /** Health/metrics port when the persister runs alone (0 = none). */
  PERSISTER_PORT: port(8083),
});

export type CommonEnv = z.infer<typeof CommonEnvSchema>;
export type PolicyEnv = z.infer<typeof PolicyEnvSchema>;
export type IngestEnv = z.infer<typeof IngestEnvSchema>;
export type PersisterEnv = z.infer<typeof PersisterEnvSchema>;

/** Validates `env` against `schema`; the first problem is thrown as a ConfigError naming the variable. */
export function parseEnv<S extends z.ZodType>(
  schema: S,
  env: Record<string, string | undefined> = process.env,
): z.infer<S> {
  // Empty strings come from `FOO=` lines in .env files and mean "not set".
  const cleaned = Object.fromEntries(Object.entries(env).filter(([, v]) => v !== undefined && v !== ''));
  const result = schema.safeParse(cleaned);
  if (!result.success) {
    const issue = result.error.issues[0]!;
    throw new ConfigError(String(issue.path[0] ?? 'environment'), issue.message);
  }
  return result.data;
}

export const AggregatorEnvSchema = CommonEnvSchema.extend({
  AGGREGATOR_PORT: port(8081),
  /** Where blocklist4.txt, blocklist6.txt and blocklist.txt are written after each rebuild (unset = nowhere). */
  BLOCKLIST_DIR: z.string().min(1).optional(),
  /** Quiet time after a change before the merged lists are rebuilt (milliseconds). */
  AGGREGATOR_REBUILD_DEBOUNCE_MS: z.coerce.number().int().min(0).max(60_000).default(200),
  /** Comma-separated CIDRs whose clients may read without a token (e.g. the firewall's address). */
  AGGREGATOR_ANONYMOUS: z
    .string()
    .default('')
    .transform((v) =>
      v
        .split(',')
        .map((s) => s.trim())
        .filter((s) => s !== ''),
    )
    .pipe(z.array(TargetSchema)),
  /** How long a token lookup stays cached (seconds). */
  AGGREGATOR_TOKEN_CACHE_TTL: DurationSeconds.default(30),
  /**
   * Most messages `<ns>.aggregator` holds while no aggregator reads it; the oldest go first, and the
   * aggregator reads what it missed from decision_log.
   */
  AGGREGATOR_QUEUE_MAX_LENGTH: z.coerce.number().int().min(100).max(100_000_000).default(100_000),
});
export type AggregatorEnv = z.infer<typeof AggregatorEnvSchema>;
