// Environment of the console (web UI and admin API). It checks manual bans against the same policy as
// ingest and the persister, so it reads the policy variables too.
import { z } from 'zod';
import { CommonEnvSchema, DurationSeconds, PolicyEnvSchema } from './config.js';

const bool = (fallback: boolean) =>
  z
    .enum(['1', '0', 'true', 'false', 'yes', 'no', 'on', 'off'])
    .default(fallback ? 'true' : 'false')
    .transform((v) => ['1', 'true', 'yes', 'on'].includes(v));

export const ConsoleEnvSchema = CommonEnvSchema.merge(PolicyEnvSchema).extend({
  CONSOLE_PORT: z.coerce.number().int().min(0).max(65535).default(8082),
  /** How long a login lasts (seconds or 12h, 7d); the session is refused after that. */
  CONSOLE_SESSION_TTL: DurationSeconds.pipe(
    z
      .number()
      .int()
      .min(60)
      .max(30 * 86_400),
  ).default(12 * 3600),
  /**
   * Mark the session cookie `Secure` (sent over HTTPS only). On when the console is reached through a
   * TLS proxy; off by default so that http://127.0.0.1:8082 works out of the box.
   */
  CONSOLE_SECURE_COOKIE: bool(false),
  /** An applier whose last heartbeat is older than this is shown as stale (seconds). */
  CONSOLE_APPLIER_STALE: DurationSeconds.pipe(z.number().int().min(1)).default(120),
  /**
   * Route-appliers the console reads, as base URLs of their status port (APPLIER_PORT), comma-separated:
   * `http://web1:8084,http://web2:8084`. Each one's GET /v1/status is read every CONSOLE_APPLIER_POLL
   * seconds, so the overview shows its seq and lag without the applier knowing the console.
   */
  CONSOLE_APPLIERS: z
    .string()
    .default('')
    .transform((list) =>
      list
        .split(',')
        .map((u) => u.trim().replace(/\/+$/, ''))
        .filter((u) => u !== ''),
    )
    .pipe(z.array(z.url({ protocol: /^https?$/, error: 'expected http(s) URLs, comma-separated' }))),
  /** Seconds between two reads of every applier in CONSOLE_APPLIERS. */
  CONSOLE_APPLIER_POLL: DurationSeconds.pipe(z.number().int().min(1).max(3600)).default(15),
  /** Failed logins per client address per minute before further attempts are refused with 429. */
  CONSOLE_LOGIN_ATTEMPTS: z.coerce.number().int().min(1).max(10_000).default(10),
});
export type ConsoleEnv = z.infer<typeof ConsoleEnvSchema>;
