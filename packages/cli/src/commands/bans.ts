// `banbus ban|unban|list|show|stats`: the console's operations from the command line. With
// BANBUS_CONSOLE_URL (and BANBUS_TOKEN) they go through the console's admin API, from anywhere; without it
// they run on the database (and the broker, for ban/unban) named by DATABASE_URL / AMQP_URL, where the CLI
// runs beside them. Either way a ban or unban is a report with origin `manual` that the persister turns
// into a decision, and it is written to the audit log.
import { userInfo } from 'node:os';
import type { Command } from 'commander';
import { z } from 'zod';
import { ConsoleEnvSchema, DurationSeconds, TargetSchema, describeIssue, parseEnv } from '@banbus/core';
import { createLogger } from '@banbus/runtime';
import type { Bus } from '@banbus/bus';
import type { AdminClient, DecisionDetail, DecisionItem, DecisionPage, Overview } from '@banbus/console';
import { parseArg } from '../args.js';
import { UsageError, table, type CliIo } from '../io.js';

const ClientEnvSchema = z.object({
  /** Where the console answers; unset = work on the database directly. */
  BANBUS_CONSOLE_URL: z.url({ protocol: /^https?$/ }).optional(),
  BANBUS_TOKEN: z.string().min(1).optional(),
});

/** Names the CLI shows for the API's fields, so an error points at the option to fix. */
const FLAGS: Record<string, string> = {
  target: 'TARGET',
  duration: '--duration',
  reason: '--reason',
  jail: '--jail',
  host: '--host',
  origin: '--origin',
  since: '--since',
  until: '--until',
  sort: '--sort',
  order: '--asc/--desc',
  limit: '--limit',
  cursor: '--cursor',
};

/**
 * Checks the whole input against the API's own schema before anything is connected: a bad option is exit 2
 * naming the option, whether or not the console or the database can be reached.
 */
function checkInput(schema: z.ZodType, input: unknown): void {
  const result = schema.safeParse(input);
  if (result.success) return;
  const { field, message } = describeIssue(result.error);
  throw new UsageError(`${FLAGS[field] ?? field}: ${message}`);
}

/** A failed admin call as the CLI reports it: bad input → exit 2, everything else → exit 1. */
async function call<T>(fn: () => Promise<T>): Promise<T> {
  const { AdminClientError } = await import('@banbus/console');
  try {
    return await fn();
  } catch (err) {
    if (!(err instanceof AdminClientError)) throw err;
    const where = err.field !== undefined ? `${FLAGS[err.field] ?? err.field}: ` : '';
    if (err.status === 400 || err.status === 422) throw new UsageError(`${where}${err.message}`);
    if (err.status === 401 || err.status === 403)
      throw new Error(`the console refused the token: ${err.message}`);
    throw new Error(err.message);
  }
}

/**
 * Runs `fn` with an admin client: over HTTP when BANBUS_CONSOLE_URL is set, else on the database, with a
 * broker connection when the command publishes (ban, unban).
 */
async function withClient<T>(
  io: CliIo,
  options: { publishes: boolean },
  fn: (client: AdminClient) => Promise<T>,
): Promise<T> {
  const env = parseEnv(ClientEnvSchema, io.env);
  const { HttpAdminClient, DirectAdminClient } = await import('@banbus/console');
  if (env.BANBUS_CONSOLE_URL !== undefined) {
    if (env.BANBUS_TOKEN === undefined)
      throw new UsageError(
        'BANBUS_TOKEN: required with BANBUS_CONSOLE_URL (a token with the read scope, admin for ban and unban)',
      );
    return call(() => fn(new HttpAdminClient({ url: env.BANBUS_CONSOLE_URL!, token: env.BANBUS_TOKEN! })));
  }
  const config = parseEnv(ConsoleEnvSchema, io.env);
  const { createPool } = await import('@banbus/db');
  const pool = createPool(config.DATABASE_URL, { max: 2, applicationName: 'banbus-cli' });
  let bus: Bus | undefined;
  try {
    if (options.publishes) {
      const { Bus } = await import('@banbus/bus');
      bus = await Bus.connect({
        url: config.AMQP_URL,
        namespace: config.BANBUS_NAMESPACE,
        logger: createLogger({ level: 'silent' }),
        initialConnectRetries: 2,
      }).catch((err: unknown) => {
        throw new Error(
          `cannot reach the broker at AMQP_URL (${(err as Error).message}); or set BANBUS_CONSOLE_URL`,
        );
      });
    }
    // The operator as the audit log and the report's host record them.
    const actor = { name: `cli:${userInfo().username}`.slice(0, 63) };
    const client = new DirectAdminClient({ pool, config, actor, ...(bus ? { publisher: bus } : {}) });
    return await call(() => fn(client));
  } finally {
    await bus?.close().catch(() => undefined);
    await pool.end();
  }
}

const when = (iso: string | null | undefined) => (iso ? iso.replace(/\.\d{3}Z$/, 'Z') : '');

function printDecisions(io: CliIo, items: readonly DecisionItem[]): void {
  io.out(
    table(
      ['TARGET', 'ORIGIN', 'JAILS', 'HOSTS', 'REPORTERS', 'LAST SEEN', 'EXPIRES', 'REASON'],
      items.map((d) => [
        d.target,
        d.origin,
        d.jails.join(','),
        d.hosts.join(','),
        String(d.reporters),
        when(d.last_seen),
        d.expires_at ? when(d.expires_at) : 'never',
        d.reason ?? '',
      ]),
    ),
  );
}

const LimitSchema = z.coerce.number().int().min(1).max(500);

export function bansCommands(program: Command, io: CliIo): void {
  program
    .command('ban <target>')
    .description('ban an address or network on every host (a manual report; the persister decides)')
    .option('--duration <duration>', "how long (e.g. 30m, 24h, 7d; default: the policy's default bantime)")
    .option('--reason <text>', 'why, shown with the decision')
    .option('--json', 'print JSON')
    .action(async (targetArg: string, opts: { duration?: string; reason?: string; json?: boolean }) => {
      const target = parseArg(TargetSchema, targetArg, 'TARGET');
      const duration =
        opts.duration === undefined
          ? undefined
          : parseArg(
              DurationSeconds.pipe(z.number().int().positive('the duration must be positive')),
              opts.duration,
              '--duration',
            );
      const input = {
        target,
        ...(duration !== undefined ? { duration } : {}),
        ...(opts.reason !== undefined ? { reason: opts.reason } : {}),
      };
      checkInput((await import('@banbus/console')).BanSchema, input);
      await withClient(io, { publishes: true }, async (client) => {
        const result = await client.ban(input);
        if (opts.json) return io.out(JSON.stringify(result, null, 2) + '\n');
        io.out(
          `ban of ${result.target} sent (report ${result.report}, ${
            result.duration === null ? "the policy's default bantime" : `${result.duration} s`
          }); the persister makes the decision\n`,
        );
      });
    });

  program
    .command('unban <target>')
    .description('end every ban of an address or network (and of what lies inside it) on every host')
    .option('--reason <text>', 'why, for the audit log')
    .option('--force', 'send the unban even when nothing is banned there now')
    .option('--json', 'print JSON')
    .action(async (targetArg: string, opts: { reason?: string; force?: boolean; json?: boolean }) => {
      const target = parseArg(TargetSchema, targetArg, 'TARGET');
      const input = {
        target,
        ...(opts.reason !== undefined ? { reason: opts.reason } : {}),
        ...(opts.force ? { force: true } : {}),
      };
      checkInput((await import('@banbus/console')).UnbanSchema, input);
      await withClient(io, { publishes: true }, async (client) => {
        const result = await client.unban(input);
        if (opts.json) return io.out(JSON.stringify(result, null, 2) + '\n');
        io.out(
          `unban of ${result.target} sent (report ${result.report}); it ends ${result.lifts.length} decision(s)` +
            (result.lifts.length
              ? `: ${result.lifts.slice(0, 20).join(', ')}${result.lifts.length > 20 ? ', …' : ''}`
              : '') +
            '\n',
        );
      });
    });

  program
    .command('list')
    .description('list decisions, newest first; filters combine')
    .option('--target <ip|cidr>', 'an address: the decisions covering it; a network: those overlapping it')
    .option('--jail <name>', 'decisions with an active ban from this jail')
    .option('--host <name>', 'decisions with an active ban reported by this host')
    .option('--origin <origin>', 'fail2ban, 3cx, manual or import')
    .option('--since <time>', 'last seen at or after (ISO 8601, or an age like 24h)')
    .option('--until <time>', 'last seen before (ISO 8601, or an age like 24h)')
    .option('--sort <key>', 'last_seen or target', 'last_seen')
    .option('--asc', 'ascending (default for --sort target)')
    .option('--desc', 'descending (default for --sort last_seen)')
    .option('--limit <n>', 'decisions per page (1-500)', '50')
    .option('--cursor <cursor>', 'continue after a previous page (printed when there are more)')
    .option('--all', 'every page, not just the first')
    .option('--json', 'print JSON (one page object, or with --all one decision per line)')
    .action(
      async (opts: {
        target?: string;
        jail?: string;
        host?: string;
        origin?: string;
        since?: string;
        until?: string;
        sort: string;
        asc?: boolean;
        desc?: boolean;
        limit: string;
        cursor?: string;
        all?: boolean;
        json?: boolean;
      }) => {
        if (opts.asc && opts.desc) throw new UsageError('--asc and --desc exclude each other');
        const limit = parseArg(LimitSchema, opts.limit, '--limit');
        const target =
          opts.target === undefined ? undefined : parseArg(TargetSchema, opts.target, '--target');
        const base = {
          ...(target !== undefined ? { target } : {}),
          ...(opts.jail !== undefined ? { jail: opts.jail } : {}),
          ...(opts.host !== undefined ? { host: opts.host } : {}),
          ...(opts.origin !== undefined ? { origin: opts.origin as 'manual' } : {}),
          ...(opts.since !== undefined ? { since: opts.since } : {}),
          ...(opts.until !== undefined ? { until: opts.until } : {}),
          sort: opts.sort as 'last_seen',
          ...(opts.asc ? { order: 'asc' as const } : opts.desc ? { order: 'desc' as const } : {}),
          limit,
        };
        checkInput((await import('@banbus/console')).DecisionQuerySchema, {
          ...base,
          ...(opts.cursor !== undefined ? { cursor: opts.cursor } : {}),
        });
        await withClient(io, { publishes: false }, async (client) => {
          let cursor = opts.cursor;
          let first = true;
          for (;;) {
            const page: DecisionPage = await client.list({
              ...base,
              ...(cursor !== undefined ? { cursor } : {}),
            });
            if (opts.json && !opts.all) io.out(JSON.stringify(page, null, 2) + '\n');
            else if (opts.json) for (const item of page.items) io.out(JSON.stringify(item) + '\n');
            else if (first || page.items.length) printDecisions(io, page.items);
            first = false;
            if (page.next === null) break;
            if (!opts.all) {
              if (!opts.json) io.err(`more: add --cursor ${page.next} (or --all)\n`);
              break;
            }
            cursor = page.next;
          }
        });
      },
    );

  program
    .command('show <target>')
    .description(
      'why an address or network is banned: its decision, covering networks, active bans, reports (exit code 1 when it is not banned)',
    )
    .option('--json', 'print JSON')
    .action(async (targetArg: string, opts: { json?: boolean }) => {
      const target = parseArg(TargetSchema, targetArg, 'TARGET');
      const detail: DecisionDetail = await withClient(io, { publishes: false }, (client) =>
        client.show(target),
      );
      const banned = detail.decision !== null || detail.covering.length > 0;
      if (opts.json) io.out(JSON.stringify(detail, null, 2) + '\n');
      else {
        const d = detail.decision;
        io.out(
          d
            ? `${detail.target}: banned (${d.origin}) since ${when(d.first_seen)}, expires ${d.expires_at ? when(d.expires_at) : 'never'}; ${d.reporters} reporter(s), banned ${d.ban_count} time(s)${d.reason ? `; reason: ${d.reason}` : ''}\n`
            : `${detail.target}: not banned by itself\n`,
        );
        for (const c of detail.covering)
          io.out(
            `inside ${c.target}: banned (${c.origin}), expires ${c.expires_at ? when(c.expires_at) : 'never'}${c.reason ? `; reason: ${c.reason}` : ''}\n`,
          );
        if (detail.inside)
          io.out(`${detail.inside} decision(s) lie inside it (banbus list --target ${detail.target})\n`);
        if (detail.allowlisted_by.length) io.out(`allowlisted by ${detail.allowlisted_by.join(', ')}\n`);
        if (detail.active_bans.length) {
          io.out('\nactive bans:\n');
          io.out(
            table(
              ['HOST', 'JAIL', 'ORIGIN', 'BANNED', 'EXPIRES'],
              detail.active_bans.map((b) => [
                b.host,
                b.jail ?? '',
                b.origin,
                when(b.banned_at),
                b.expires_at ? when(b.expires_at) : 'never',
              ]),
            ),
          );
        }
        io.out(`\nreports (${detail.reports.length}${detail.more_reports ? '+, newest first' : ''}):\n`);
        io.out(
          table(
            ['RECEIVED', 'HOST', 'JAIL', 'ACTION', 'FAILURES', 'OUTCOME', 'MATCHES'],
            detail.reports.map((r) => [
              when(r.received_at),
              r.host,
              r.jail ?? '',
              r.origin === 'fail2ban' ? r.action : `${r.action} (${r.origin})`,
              r.failures === null ? '' : String(r.failures),
              r.outcome ?? '',
              (r.matches ?? '').replace(/\s+/g, ' ').slice(0, 120),
            ]),
          ),
        );
      }
      // After the details: `banbus show IP && …` is true only while it is banned.
      if (!banned) throw new Error(`${detail.target} is not banned`);
    });

  program
    .command('stats')
    .description('active bans, the stream seq, top jails and hosts, appliers and their lag')
    .option('--json', 'print JSON')
    .action(async (opts: { json?: boolean }) => {
      const o: Overview = await withClient(io, { publishes: false }, (client) => client.stats());
      if (opts.json) return io.out(JSON.stringify(o, null, 2) + '\n');
      const lastDay = o.bans_per_hour.reduce((n, h) => n + h.bans, 0);
      io.out(
        [
          `active bans     ${o.active_bans} (IPv4 ${o.active_bans_v4}, IPv6 ${o.active_bans_v6})`,
          `stream seq      ${o.seq} (published ${o.published_seq})`,
          `new bans (24h)  ${lastDay}, this hour ${o.bans_per_hour[o.bans_per_hour.length - 1]?.bans ?? 0}`,
          `allowlist       ${o.allowlist} entries`,
          `hosts           ${o.hosts} active`,
          '',
        ].join('\n'),
      );
      if (o.top_jails.length) {
        io.out('\ntop jails:\n');
        io.out(
          table(
            ['JAIL', 'BANS'],
            o.top_jails.map((j) => [j.jail ?? '(none)', String(j.bans)]),
          ),
        );
      }
      if (o.top_hosts.length) {
        io.out('\ntop hosts:\n');
        io.out(
          table(
            ['HOST', 'BANS'],
            o.top_hosts.map((x) => [x.host, String(x.bans)]),
          ),
        );
      }
      io.out('\nappliers:\n');
      io.out(
        o.appliers.length
          ? table(
              ['APPLIER', 'BACKEND', 'SEQ', 'LAG', 'LAG S', 'ENTRIES', 'LAST REPORT'],
              o.appliers.map((a) => [
                a.applier,
                a.backend ?? '',
                String(a.seq),
                String(a.lag_seqs),
                a.lag_seconds === null ? '' : a.lag_seconds.toFixed(1),
                a.entries === null ? '' : String(a.entries),
                `${when(a.reported_at)}${a.stale ? ' (stale)' : ''}`,
              ]),
            )
          : 'none has reported in\n',
      );
    });
}
