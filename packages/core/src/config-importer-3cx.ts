// Environment of the 3CX importer. It runs next to a 3CX PBX, reads the PBX's own PostgreSQL event log
// and reports through ingest over HTTP, so it needs neither banbus's database nor the broker.
import { z } from 'zod';
import { CommonEnvSchema, DurationSeconds } from './config.js';

/** A plain SQL identifier, optionally schema-qualified: it is quoted, but must not need quoting to be typed. */
const identifier = z
  .string()
  .regex(
    /^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$/,
    'a table or column name: letters, digits and "_" (a table may be schema.table)',
  );
const column = z.string().regex(/^[A-Za-z_][A-Za-z0-9_]{0,62}$/, 'a column name: letters, digits and "_"');

export const Importer3cxEnvSchema = CommonEnvSchema.pick({ LOG_LEVEL: true, BANBUS_LISTEN: true }).extend({
  /** The PBX's database (3CX keeps it on port 5480 as user phonesystem). */
  THREECX_DATABASE_URL: z.string().min(1).default('postgres://phonesystem@127.0.0.1:5480/database_single'),
  /** Event ids that mean "this address attacked us", comma-separated. */
  THREECX_EVENT_IDS: z
    .string()
    .default('12290')
    .transform((v) =>
      v
        .split(',')
        .map((s) => s.trim())
        .filter((s) => s !== ''),
    )
    .pipe(
      z
        .array(
          z
            .string()
            .regex(/^\d{1,10}$/, 'event ids are whole numbers, comma-separated')
            .transform(Number)
            .pipe(z.number().max(2_147_483_647)),
        )
        .min(1, 'at least one event id'),
    ),
  THREECX_TABLE: identifier.default('eventlog'),
  THREECX_TIME_COLUMN: column.default('timegenerated'),
  THREECX_EVENT_COLUMN: column.default('eventid'),
  /** The column holding the event's parameter text; unset: every text column of the row. */
  THREECX_TEXT_COLUMN: column.optional(),
  /** A unique column of the table; unset: a row is known by a hash of all its columns. */
  THREECX_ID_COLUMN: column.optional(),
  /** Seconds between polls (a poll that found a full batch is followed at once by the next). */
  THREECX_POLL_INTERVAL: DurationSeconds.pipe(z.number().min(1).max(86_400)).default(10),
  /** Events read per query. */
  THREECX_BATCH_SIZE: z.coerce.number().int().min(1).max(10_000).default(500),
  /** Without a cursor, start this far before the newest event (the old cron job looked 15 minutes back). */
  THREECX_LOOKBACK: DurationSeconds.pipe(z.number().int().min(0)).default(15 * 60),
  /**
   * Events are read again this far (in event time) behind the newest one seen, skipping the ones already
   * reported: an event committed late with an older timestamp is still found.
   */
  THREECX_OVERLAP: DurationSeconds.pipe(z.number().int().min(0).max(86_400)).default(300),
  /** Where the cursor (what has been reported) is kept across restarts. */
  THREECX_CURSOR_FILE: z.string().min(1).default('/var/lib/banbus/importer-3cx.cursor.json'),
  /** Bantime sent with each report (seconds, -1 = permanent); unset: ingest's policy default. */
  THREECX_BANTIME: DurationSeconds.pipe(z.number().int().min(-1)).optional(),
  /** Where ingest answers. */
  BANBUS_INGEST_URL: z.url({ protocol: /^https?$/ }).default('http://127.0.0.1:8080'),
  /** This importer's own token (report scope). */
  BANBUS_TOKEN: z.string({ error: "required: the importer's token (banbus hosts add NAME)" }).min(1),
  /** Longest backoff between retries while the 3CX database or ingest is away (seconds). */
  THREECX_RETRY_MAX: DurationSeconds.pipe(z.number().min(1).max(3600)).default(60),
  /** Health and metrics port (0 = any free port). */
  IMPORTER_PORT: z.coerce.number().int().min(0).max(65535).default(8085),
});
export type Importer3cxEnv = z.infer<typeof Importer3cxEnvSchema>;
