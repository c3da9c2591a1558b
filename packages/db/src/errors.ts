/** A row with the same unique key already exists (PostgreSQL 23505). */
export class DuplicateError extends Error {
  override name = 'DuplicateError';
  constructor(
    message: string,
    /** The violated constraint, when PostgreSQL named it. */
    readonly constraint?: string,
  ) {
    super(message);
  }
}

/** Input a repository refuses before it reaches the database (e.g. a host name the schema would reject). */
export class ValidationError extends Error {
  override name = 'ValidationError';
  constructor(
    message: string,
    readonly field: string,
  ) {
    super(message);
  }
}

// Node socket errors that mean "the server is not reachable right now", not "this query is wrong".
const TRANSIENT_NETWORK_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
]);

// SQLSTATEs: 57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now (starting up / shutting down),
// 53300 too_many_connections; the whole class 08 is connection exceptions.
const TRANSIENT_SQLSTATES = new Set(['57P01', '57P02', '57P03', '53300']);

// pg reports a dropped connection with plain Errors that carry no code.
const TRANSIENT_MESSAGES = [
  /connection terminated/i,
  /timeout exceeded when trying to connect/i,
  /client has encountered a connection error and is not queryable/i,
  /connection is closed/i,
];

/**
 * True when the error says the database is away (refused, reset, restarting, out of connections), so
 * retrying the same work later is expected to succeed and should not count as a failed attempt.
 */
export function isTransientDbError(err: unknown): boolean {
  if (!err || typeof err !== 'object') return false;
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'string') {
    if (TRANSIENT_NETWORK_CODES.has(code) || TRANSIENT_SQLSTATES.has(code)) return true;
    if (/^08[0-9A-Z]{3}$/.test(code)) return true;
  }
  // Node 20 connects to every address of a name (happy eyeballs) and reports an AggregateError.
  if (err instanceof AggregateError && err.errors.some((e) => isTransientDbError(e))) return true;
  const message = (err as { message?: unknown }).message;
  if (typeof message === 'string' && TRANSIENT_MESSAGES.some((re) => re.test(message))) return true;
  const cause = (err as { cause?: unknown }).cause;
  return cause !== undefined && cause !== err && isTransientDbError(cause);
}

/** True for PostgreSQL unique_violation. */
export function isUniqueViolation(err: unknown): err is Error & { code: '23505'; constraint?: string } {
  return !!err && typeof err === 'object' && (err as { code?: unknown }).code === '23505';
}
