import type { Command } from 'commander';
import { ExpirySchema, NetworkSchema, parseArg } from '../args.js';
import { withPool } from '../context.js';
import { UsageError, table, type CliIo } from '../io.js';

export function allowCommand(program: Command, io: CliIo): void {
  const allow = program.command('allow').description('networks that are never banned');

  allow
    .command('add <cidr>')
    .description('allowlist a network (again: update it); the decisions it covers are lifted everywhere')
    .option('--comment <text>', 'why this network is allowlisted')
    .option('--expires <duration>', 'remove the entry after this long (e.g. 12h, 7d)')
    .action(async (cidrArg: string, opts: { comment?: string; expires?: string }) => {
      const network = parseArg(NetworkSchema, cidrArg, 'CIDR');
      const seconds =
        opts.expires === undefined ? undefined : parseArg(ExpirySchema, opts.expires, '--expires');
      await withPool(io, async (pool, db) => {
        const entry = await new db.AllowlistRepository(pool).add({
          network,
          comment: opts.comment ?? null,
          createdBy: 'cli',
          expiresAt: seconds === undefined ? null : new Date(Date.now() + seconds * 1000),
        });
        io.out(
          `allowlisted ${entry.network}${entry.expiresAt ? ` until ${entry.expiresAt.toISOString()}` : ''}; ` +
            'the persister lifts the decisions it covers\n',
        );
      });
    });

  allow
    .command('list')
    .description('list allowlisted networks')
    .option('--json', 'print JSON')
    .action(async (opts: { json?: boolean }) => {
      await withPool(io, async (pool, db) => {
        const list = await new db.AllowlistRepository(pool).list();
        if (opts.json) {
          io.out(JSON.stringify(list, null, 2) + '\n');
          return;
        }
        io.out(
          table(
            ['NETWORK', 'EXPIRES', 'CREATED', 'BY', 'COMMENT'],
            list.map((e) => [
              e.network,
              e.expiresAt?.toISOString() ?? 'never',
              e.createdAt.toISOString(),
              e.createdBy ?? '',
              e.comment ?? '',
            ]),
          ),
        );
      });
    });

  allow
    .command('remove <cidr>')
    .description('remove a network from the allowlist')
    .action(async (cidrArg: string) => {
      const network = parseArg(NetworkSchema, cidrArg, 'CIDR');
      await withPool(io, async (pool, db) => {
        if (!(await new db.AllowlistRepository(pool).remove(network))) {
          throw new UsageError(`${network} is not allowlisted`);
        }
        io.out(`removed ${network} from the allowlist\n`);
      });
    });
}
