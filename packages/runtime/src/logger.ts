import { pino, type Logger, type LoggerOptions } from 'pino';

export type { Logger };

// Tokens travel in the Authorization header and, for clients that cannot send headers (pfSense,
// the old curl lines), in the query string. Neither may ever reach a log line.
const REDACT_PATHS = [
  'req.headers.authorization',
  'req.headers.cookie',
  'req.headers["x-csrf-token"]',
  'res.headers["set-cookie"]',
  'token',
  '*.token',
];

export function redactUrl(url: string): string {
  return url.replace(/([?&]token=)[^&#]*/gi, '$1[Redacted]');
}

export interface LoggerConfig {
  level?: string;
  name?: string;
  /** Where to write; defaults to stdout. Tests pass a stream to read what was logged. */
  destination?: NodeJS.WritableStream;
}

export function createLogger(config: LoggerConfig = {}): Logger {
  const options: LoggerOptions = {
    level: config.level ?? 'info',
    redact: { paths: REDACT_PATHS, censor: '[Redacted]' },
    base: config.name ? { service: config.name } : {},
    timestamp: pino.stdTimeFunctions.isoTime,
  };
  return config.destination ? pino(options, config.destination as pino.DestinationStream) : pino(options);
}
