// `banbus import FILE|-`: bulk-load an existing list (the old setup's badips.txt, or `mysql -N` output of
// its fail2ban table) through ingest's batch path. Every line is checked here first, so the summary can
// name each rejected line; addresses the fleet already bans (exact target in the aggregator's decisions)
// are counted as already banned and not sent again, so a second run of the same list imports nothing.
import { readFile, stat } from 'node:fs/promises';
import { basename } from 'node:path';
import type { Command } from 'commander';
import { z } from 'zod';
import { DurationSeconds, newReportId, parseEnv, parseTarget } from '@banbus/core';
import type { IngestClient } from '@banbus/importer-3cx';
import { parseArg } from '../args.js';
import { UsageError, processIo, type CliIo } from '../io.js';

const ImportEnvSchema = z.object({
  /** Where ingest answers. */
  BANBUS_INGEST_URL: z.url({ protocol: /^https?$/ }).default('http://127.0.0.1:8080'),
  /** Where the aggregator answers (the current decisions, to skip what is already banned). */
  BANBUS_URL: z.url({ protocol: /^https?$/ }).default('http://127.0.0.1:8081'),
  BANBUS_TOKEN: z
    .string({ error: 'required: a token with the admin scope (banbus hosts add NAME --scopes admin)' })
    .min(1),
});

export interface ListEntry {
  line: number;
  target: string;
}

export interface RejectedLine {
  line: number;
  text: string;
  reason: string;
}

export interface ParsedList {
  lines: number;
  /** Distinct targets in order of first appearance. */
  entries: ListEntry[];
  duplicates: number;
  rejected: RejectedLine[];
}

const COMMENT = /[#;]/;
// ingest refuses a reason with control characters; say so before reading the list.
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;
const SHOW_MAX = 80;

function row(label: string, value: number | string): string {
  return `${label.padEnd(16)}${value}`;
}

function shown(text: string): string {
  return text.length > SHOW_MAX ? `${text.slice(0, SHOW_MAX)}…` : text;
}

/**
 * One IP or CIDR per line; `#` and `;` start a comment (as in pfSense URL tables); blank lines are skipped.
 * Targets are normalized, so `192.0.2.1` and `::ffff:192.0.2.1` are duplicates of each other.
 */
export function parseList(text: string): ParsedList {
  const lines = text.split('\n');
  // A final newline does not start another line.
  if (lines.length > 0 && lines[lines.length - 1] === '') lines.pop();
  const seen = new Set<string>();
  const entries: ListEntry[] = [];
  const rejected: RejectedLine[] = [];
  let duplicates = 0;
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i]!;
    const comment = raw.search(COMMENT);
    const content = (comment < 0 ? raw : raw.slice(0, comment)).trim();
    if (content === '') continue;
    if (/\s/.test(content)) {
      rejected.push({
        line: i + 1,
        text: shown(content),
        reason: 'expected one address or network per line',
      });
      continue;
    }
    let target: string;
    try {
      target = parseTarget(content).text;
    } catch (err) {
      // The parser's sentences start with the input itself; the summary shows it once.
      const message = (err as Error).message;
      const reason = message.startsWith(`${content}: `) ? message.slice(content.length + 2) : message;
      rejected.push({ line: i + 1, text: shown(content), reason });
      continue;
    }
    if (seen.has(target)) {
      duplicates++;
      continue;
    }
    seen.add(target);
    entries.push({ line: i + 1, target });
  }
  return { lines: lines.length, entries, duplicates, rejected };
}

export interface ImportSummary {
  lines: number;
  /** Accepted by ingest (the persister turns them into decisions within moments). */
  imported: number;
  /** The exact target is already a decision: not sent. Null when not checked (--no-check). */
  alreadyBanned: number | null;
  duplicates: number;
  rejected: RejectedLine[];
}

interface ImportOptions {
  ingestUrl?: string;
  url?: string;
  reason?: string;
  bantime?: string;
  chunkSize: string;
  check: boolean;
  dryRun?: boolean;
  json?: boolean;
  showRejected?: boolean;
}

async function readInput(file: string): Promise<string> {
  if (file === '-') {
    const chunks: Buffer[] = [];
    for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks).toString('utf8');
  }
  try {
    const info = await stat(file);
    if (!info.isFile()) throw new UsageError(`FILE: ${file} is not a file`);
  } catch (err) {
    if (err instanceof UsageError) throw err;
    throw new UsageError(
      `FILE: cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
    );
  }
  return readFile(file, 'utf8');
}

/** The targets the fleet bans right now (GET /v1/decisions on the aggregator). */
async function currentDecisions(url: string, token: string): Promise<Set<string>> {
  let res: Response;
  try {
    res = await fetch(new URL('/v1/decisions', url), {
      headers: { authorization: `Bearer ${token}` },
      signal: AbortSignal.timeout(120_000),
    });
  } catch (err) {
    const cause = (err as { cause?: { code?: string } }).cause?.code ?? (err as Error).message;
    throw new Error(
      `cannot read the current decisions from the aggregator at ${url} (${cause}); ` +
        'set BANBUS_URL / --url, or pass --no-check to send every address',
    );
  }
  if (!res.ok) {
    throw new Error(
      `the aggregator at ${url} answered ${res.status} for the current decisions` +
        (res.status === 401 || res.status === 403 ? ' (the token needs the read or admin scope)' : '') +
        '; pass --no-check to send every address',
    );
  }
  const body = (await res.json()) as { decisions?: { target: string }[] };
  return new Set((body.decisions ?? []).map((d) => d.target));
}

interface ImportBody {
  id: string;
  ip: string;
  action: 'ban';
  origin: 'import';
  jail: 'import';
  reason: string;
  bantime?: number;
}

/**
 * Sends `entries` in chunks. A report ingest refuses (allowlisted, broader than policy allows) becomes a
 * rejected line; the reports before it in the chunk passed every check, so they go on their own and
 * the rest of the chunk is sent again. Busy or unreachable ingest is waited for.
 */
async function send(
  client: IngestClient,
  entries: readonly ListEntry[],
  make: (entry: ListEntry) => ImportBody,
  chunkSize: number,
  io: CliIo,
  onProgress: (done: number) => void,
): Promise<{ imported: number; rejected: RejectedLine[] }> {
  // Loaded on use, like every command's heavier dependencies: `banbus run` should not carry them.
  const { IngestRefusedError, IngestUnavailableError } = await import('@banbus/importer-3cx');
  const rejected: RejectedLine[] = [];
  let imported = 0;
  let done = 0;
  let told429 = false;
  let failures = 0;
  for (let start = 0; start < entries.length; start += chunkSize) {
    // Ids are made once per entry, so resending after a timeout cannot count a report twice.
    let pending = entries.slice(start, start + chunkSize).map((entry) => ({ entry, body: make(entry) }));
    while (pending.length > 0) {
      let result;
      try {
        result = await client.send(pending.map((p) => p.body));
        failures = 0;
      } catch (err) {
        if (err instanceof IngestRefusedError) {
          throw new Error(
            err.status === 401
              ? `${err.message} (check BANBUS_TOKEN)`
              : err.status === 403
                ? `${err.message} (imports need a token with the admin scope)`
                : err.status === 413 || (err.status === 400 && err.field === 'body')
                  ? `${err.message} (lower --chunk-size)`
                  : err.message,
          );
        }
        if (!(err instanceof IngestUnavailableError) || ++failures > 8) throw err;
        if (err.status === 429 && !told429) {
          told429 = true;
          io.err(
            "banbus: ingest rate limit reached, pacing the import (admin tokens are not limited: check the token's scopes)\n",
          );
        }
        const wait = err.retryAfterMs ?? Math.min(30_000, 250 * 2 ** failures);
        await new Promise((r) => setTimeout(r, wait));
        if (err.status === 429) failures--;
        continue;
      }
      if (result.kind === 'accepted') {
        imported += pending.length;
        done += pending.length;
        onProgress(done);
        break;
      }
      const refused = pending[result.index]!;
      rejected.push({
        line: refused.entry.line,
        text: refused.entry.target,
        reason: result.error.replace(/^\[\d+\]: /, ''),
      });
      const before = pending.slice(0, result.index);
      pending = pending.slice(result.index + 1);
      done++;
      if (before.length > 0) pending = [...before, ...pending];
    }
  }
  return { imported, rejected };
}

export function importCommand(program: Command, io: CliIo): void {
  program
    .command('import <file>')
    .description('ban every address or network listed in FILE (- = standard input): one per line, # comments')
    .option(
      '--ingest-url <url>',
      'where ingest answers (default: $BANBUS_INGEST_URL or http://127.0.0.1:8080)',
    )
    .option('--url <url>', 'where the aggregator answers (default: $BANBUS_URL or http://127.0.0.1:8081)')
    .option('--reason <text>', 'reason stored with each ban (default: "imported from FILE")')
    .option('--bantime <duration>', 'ban duration (e.g. 7d; -1 = permanent; default: the policy default)')
    .option('--chunk-size <n>', 'reports per request to ingest', '5000')
    .option('--no-check', 'do not skip addresses the fleet already bans (no aggregator needed)')
    .option('--dry-run', 'check the list and print the summary, send nothing')
    .option('--json', 'print the summary as JSON')
    .option('--show-rejected', 'list every rejected line (default: the first 20)')
    .addHelpText(
      'after',
      '\nThe token comes from $BANBUS_TOKEN (admin scope: imports are origin "import").\n' +
        'Exit codes: 0 done (also with rejected lines), 1 failed, 2 bad arguments or configuration.',
    )
    .action(async (file: string, opts: ImportOptions) => {
      const chunkSize = parseArg(
        z.coerce
          .number()
          .int()
          .min(1, 'at least 1')
          .max(10_000, 'at most 10000 (ingest refuses larger batches)'),
        opts.chunkSize,
        '--chunk-size',
      );
      const bantime =
        opts.bantime === undefined
          ? undefined
          : parseArg(
              DurationSeconds.pipe(z.number().int().min(-1, '-1 (permanent) or a duration')),
              opts.bantime,
              '--bantime',
            );
      if (opts.reason !== undefined && (opts.reason.length > 200 || CONTROL.test(opts.reason))) {
        throw new UsageError('--reason: at most 200 characters, no control characters');
      }
      const env = opts.dryRun
        ? null
        : parseEnv(ImportEnvSchema, {
            ...io.env,
            ...(opts.ingestUrl !== undefined ? { BANBUS_INGEST_URL: opts.ingestUrl } : {}),
            ...(opts.url !== undefined ? { BANBUS_URL: opts.url } : {}),
          });

      const list = parseList(await readInput(file));
      const reason = opts.reason ?? `imported from ${file === '-' ? 'standard input' : basename(file)}`;

      let toSend = list.entries;
      let alreadyBanned: number | null = null;
      if (env && opts.check) {
        const decided = await currentDecisions(env.BANBUS_URL, env.BANBUS_TOKEN);
        toSend = list.entries.filter((e) => !decided.has(e.target));
        alreadyBanned = list.entries.length - toSend.length;
      }

      let imported = 0;
      const rejected = [...list.rejected];
      if (env && toSend.length > 0) {
        const { IngestClient } = await import('@banbus/importer-3cx');
        const { SingleBar, Presets } = await import('cli-progress');
        const client = new IngestClient({ url: env.BANBUS_INGEST_URL, token: env.BANBUS_TOKEN });
        const tty = io === processIo && process.stderr.isTTY === true;
        const bar = tty
          ? new SingleBar(
              { stream: process.stderr, format: 'importing [{bar}] {value}/{total} {eta_formatted}' },
              Presets.shades_classic,
            )
          : null;
        bar?.start(toSend.length, 0);
        try {
          const result = await send(
            client,
            toSend,
            (entry) => ({
              id: newReportId(),
              ip: entry.target,
              action: 'ban',
              origin: 'import',
              jail: 'import',
              reason,
              ...(bantime !== undefined ? { bantime } : {}),
            }),
            chunkSize,
            io,
            (done) => bar?.update(done),
          );
          imported = result.imported;
          rejected.push(...result.rejected);
        } finally {
          bar?.stop();
        }
      }
      rejected.sort((a, b) => a.line - b.line);

      const summary: ImportSummary = {
        lines: list.lines,
        imported,
        alreadyBanned,
        duplicates: list.duplicates,
        rejected,
      };
      if (opts.json) {
        io.out(JSON.stringify(summary, null, 2) + '\n');
        return;
      }
      const shownRejected = opts.showRejected ? rejected : rejected.slice(0, 20);
      io.out(
        [
          row(opts.dryRun ? 'would import' : 'imported', opts.dryRun ? toSend.length : imported),
          row('already banned', alreadyBanned ?? 'not checked'),
          row('duplicates', list.duplicates),
          row('rejected', rejected.length),
          ...shownRejected.map((r) => `  line ${r.line}: ${r.text}: ${r.reason}`),
          ...(shownRejected.length < rejected.length
            ? [`  … ${rejected.length - shownRejected.length} more (--show-rejected lists them all)`]
            : []),
        ].join('\n') + '\n',
      );
    });
}
