// Environment of the route-applier, the one banbus service that runs on every host (not centrally): it has
// no DATABASE_URL, reads decisions from the aggregator (BANBUS_URL) and the decision stream (AMQP_URL).
import { hostname } from 'node:os';
import { z } from 'zod';
import { CommonEnvSchema, DurationSeconds } from './config.js';
import { HostNameSchema, TargetSchema } from './model.js';

const bool = (fallback: boolean) =>
  z
    .enum(['1', '0', 'true', 'false', 'yes', 'no', 'on', 'off'])
    .default(fallback ? 'true' : 'false')
    .transform((v) => ['1', 'true', 'yes', 'on'].includes(v));

const cidrList = z
  .string()
  .default('')
  .transform((v) =>
    v
      .split(/[\s,]+/)
      .map((s) => s.trim())
      .filter((s) => s !== ''),
  )
  .pipe(z.array(TargetSchema));

/** The machine's short host name, as far as it is a valid applier host name. */
function defaultHost(): string {
  return hostname().split('.')[0] || 'localhost';
}

export const APPLIER_BACKENDS = ['route', 'ipset', 'nftables', 'dry-run'] as const;
export type ApplierBackendName = (typeof APPLIER_BACKENDS)[number];
export const ROUTE_TYPES = ['blackhole', 'unreachable', 'prohibit'] as const;
export type RouteType = (typeof ROUTE_TYPES)[number];

/** Names of our ipset sets and nftables table: they end up in commands, so keep them plain. */
const kernelName = z
  .string()
  .regex(/^[A-Za-z][A-Za-z0-9_-]{0,25}$/, 'letters, digits, "_" and "-", starting with a letter, at most 26');

export const RouteApplierEnvSchema = CommonEnvSchema.omit({ DATABASE_URL: true }).extend({
  /** Where the aggregator answers (GET /v1/decisions). */
  BANBUS_URL: z.url({ protocol: /^https?$/ }).default('http://127.0.0.1:8081'),
  /** A read-scope token; optional when the aggregator lets this host's address read anonymously. */
  BANBUS_TOKEN: z.string().min(1).optional(),
  /** This host's name: names its queue `<ns>.applier.<host>`. */
  APPLIER_HOST: z.string().default(defaultHost).pipe(HostNameSchema),
  APPLIER_BACKEND: z.enum(APPLIER_BACKENDS).default('route'),
  /** Route type of the `route` backend (what fail2ban's route.conf calls blocktype). */
  APPLIER_ROUTE_TYPE: z.enum(ROUTE_TYPES).default('blackhole'),
  /** The `proto` number that marks our routes; only routes carrying it are listed, changed and removed. */
  APPLIER_ROUTE_PROTO: z.coerce.number().int().min(5).max(255).default(201),
  /** ipset backend: sets `<name>4` and `<name>6`; nftables backend: table `inet <name>`. */
  APPLIER_SET_NAME: kernelName.default('banbus'),
  /** ipset maxelem per family (the kernel default of 65536 is far too small for a fleet's list). */
  APPLIER_IPSET_MAXELEM: z.coerce
    .number()
    .int()
    .min(1024)
    .max(2 ** 31 - 1)
    .default(4_194_304),
  /** Apply in this network namespace (`ip -n NS`, `ip netns exec NS …`): containers, tests. */
  APPLIER_NETNS: z
    .string()
    .regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/, 'a network namespace name')
    .optional(),
  /** Health and metrics port (0 = any free port). */
  APPLIER_PORT: z.coerce.number().int().min(0).max(65535).default(8084),
  /** Networks never blocked on this host, besides its own addresses, default gateways and loopback. */
  APPLIER_NEVER_BLOCK: cidrList,
  /** Remove our routes / sets / table when stopping. Off: bans stay enforced while the applier restarts. */
  APPLIER_REMOVE_ON_SHUTDOWN: bool(false),
  /** The host's queue is deleted by the broker after being unused this long (a retired host). */
  APPLIER_QUEUE_EXPIRES: DurationSeconds.pipe(z.number().int().min(60)).default(7 * 86_400),
  /** Messages the host's queue keeps while it is away (each up to 500 changes); beyond, the oldest go. */
  APPLIER_QUEUE_MAX_LENGTH: z.coerce.number().int().min(100).max(100_000_000).default(100_000),
  /** Messages taken from the queue at once. */
  APPLIER_PREFETCH: z.coerce.number().int().min(1).max(65_535).default(256),
  /** Backoff between snapshot attempts while none is usable (seconds, doubling up to the maximum). */
  APPLIER_SNAPSHOT_RETRY_MIN: z.coerce.number().min(0.01).max(3600).default(1),
  APPLIER_SNAPSHOT_RETRY_MAX: z.coerce.number().min(0.01).max(3600).default(60),
  /**
   * A snapshot that would leave fewer than RATIO × the entries this host holds is refused as suspicious
   * (an empty answer from a broken aggregator must not wipe the host), once the host holds at least MIN.
   * MIN=0 turns the guard off.
   */
  APPLIER_SNAPSHOT_GUARD_MIN: z.coerce.number().int().min(0).default(100),
  APPLIER_SNAPSHOT_GUARD_RATIO: z.coerce.number().min(0).max(1).default(0.1),
  /** A gap in the stream wider than this many seqs is healed by a snapshot rather than a delta. */
  APPLIER_DELTA_MAX: z.coerce.number().int().min(1).default(200_000),
  /** How often the aggregator is asked for changes the stream did not bring (seconds; 0 = never). */
  APPLIER_CHECK_INTERVAL: DurationSeconds.pipe(z.number().int().min(0)).default(60),
  /** Timeout of one snapshot or delta request (seconds). */
  APPLIER_HTTP_TIMEOUT: DurationSeconds.pipe(z.number().int().min(1)).default(60),
});
export type RouteApplierEnv = z.infer<typeof RouteApplierEnvSchema>;
