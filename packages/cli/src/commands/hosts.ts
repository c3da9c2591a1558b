import type { Command } from 'commander';
import { HostNameSchema, ScopesSchema, parseArg } from '../args.js';
import { withPool } from '../context.js';
import { UsageError, table, type CliIo } from '../io.js';

export function hostsCommand(program: Command, io: CliIo): void {
  const hosts = program.command('hosts').description('the hosts (and operators) that hold tokens');

  hosts
    .command('add <name>')
    .description('add a host and print its token (shown only this once)')
    .option('--scopes <list>', 'comma-separated: report, read, admin', 'report')
    .action(async (nameArg: string, opts: { scopes: string }) => {
      const name = parseArg(HostNameSchema, nameArg, 'NAME');
      const scopes = parseArg(ScopesSchema, opts.scopes, '--scopes');
      await withPool(io, async (pool, db) => {
        try {
          const { token } = await new db.HostRepository(pool).add(name, scopes);
          // The token alone on stdout, so `TOKEN=$(banbus hosts add web1)` works.
          io.out(`${token}\n`);
          io.err(
            `added host ${name} (scopes ${scopes.join(',')}); store the token now, it is not shown again\n`,
          );
        } catch (err) {
          if (err instanceof db.DuplicateError) throw new UsageError(`a host named ${name} already exists`);
          throw err;
        }
      });
    });

  hosts
    .command('list')
    .description('list hosts with their scopes and when they were last seen')
    .option('--json', 'print JSON')
    .action(async (opts: { json?: boolean }) => {
      await withPool(io, async (pool, db) => {
        const list = await new db.HostRepository(pool).list();
        if (opts.json) {
          io.out(JSON.stringify(list, null, 2) + '\n');
          return;
        }
        io.out(
          table(
            ['NAME', 'SCOPES', 'CREATED', 'LAST SEEN', 'STATUS'],
            list.map((h) => [
              h.name,
              h.scopes.join(','),
              h.createdAt.toISOString(),
              h.lastSeenAt?.toISOString() ?? 'never',
              h.revokedAt ? `revoked ${h.revokedAt.toISOString()}` : 'active',
            ]),
          ),
        );
      });
    });

  hosts
    .command('revoke <name>')
    .description('revoke a host token: its reports are refused from now on')
    .action(async (nameArg: string) => {
      const name = parseArg(HostNameSchema, nameArg, 'NAME');
      await withPool(io, async (pool, db) => {
        if (!(await new db.HostRepository(pool).revoke(name))) {
          throw new UsageError(`no host named ${name}`);
        }
        io.out(`revoked ${name}\n`);
      });
    });
}
