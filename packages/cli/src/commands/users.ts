// `banbus users`: operators who log in to the console with a password (hashed with scrypt). The password
// never appears on the command line, where `ps` and the shell history would keep it: it comes from
// stdin (--password-stdin) or BANBUS_PASSWORD.
import type { Command } from 'commander';
import { HostNameSchema, parseArg } from '../args.js';
import { withPool } from '../context.js';
import { UsageError, table, type CliIo } from '../io.js';

async function readPassword(io: CliIo, fromStdin: boolean | undefined): Promise<string> {
  if (fromStdin) {
    const chunks: Buffer[] = [];
    for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
    // One line: what `echo`, a password manager or a file with a final newline give.
    return Buffer.concat(chunks)
      .toString('utf8')
      .replace(/\r?\n$/, '');
  }
  const fromEnv = io.env.BANBUS_PASSWORD;
  if (fromEnv === undefined || fromEnv === '')
    throw new UsageError('give the password on stdin with --password-stdin, or in BANBUS_PASSWORD');
  return fromEnv;
}

async function save(
  io: CliIo,
  nameArg: string,
  fromStdin: boolean | undefined,
  replace: boolean,
): Promise<void> {
  const name = parseArg(HostNameSchema, nameArg, 'NAME');
  const password = await readPassword(io, fromStdin);
  const { UserRepository, checkPassword } = await import('@banbus/console');
  try {
    checkPassword(password);
  } catch (err) {
    throw new UsageError(`password: ${(err as Error).message}`);
  }
  await withPool(io, async (pool, db) => {
    const users = new UserRepository(pool);
    if (replace && !(await users.list()).some((u) => u.name === name))
      throw new UsageError(`no user named ${name}`);
    try {
      await users.add(name, password, { replace });
    } catch (err) {
      if (err instanceof db.DuplicateError)
        throw new UsageError(`a user named ${name} already exists (banbus users passwd)`);
      if (err instanceof db.ValidationError) throw new UsageError(`${err.field}: ${err.message}`);
      throw err;
    }
    io.out(replace ? `new password set for ${name}; their sessions ended\n` : `added user ${name}\n`);
  });
}

export function usersCommand(program: Command, io: CliIo): void {
  const users = program.command('users').description('operators who log in to the console with a password');

  users
    .command('add <name>')
    .description(
      'add a console user (password from --password-stdin or BANBUS_PASSWORD, at least 10 characters)',
    )
    .option('--password-stdin', 'read the password from stdin')
    .action((name: string, opts: { passwordStdin?: boolean }) => save(io, name, opts.passwordStdin, false));

  users
    .command('passwd <name>')
    .description("set a user's new password; ends their sessions")
    .option('--password-stdin', 'read the password from stdin')
    .action((name: string, opts: { passwordStdin?: boolean }) => save(io, name, opts.passwordStdin, true));

  users
    .command('list')
    .description('list console users')
    .option('--json', 'print JSON')
    .action(async (opts: { json?: boolean }) => {
      const { UserRepository } = await import('@banbus/console');
      await withPool(io, async (pool) => {
        const list = await new UserRepository(pool).list();
        if (opts.json) return io.out(JSON.stringify(list, null, 2) + '\n');
        io.out(
          table(
            ['NAME', 'CREATED', 'LAST LOGIN'],
            list.map((u) => [u.name, u.createdAt.toISOString(), u.lastLoginAt?.toISOString() ?? 'never']),
          ),
        );
      });
    });

  users
    .command('remove <name>')
    .description('remove a console user and end their sessions')
    .action(async (nameArg: string) => {
      const name = parseArg(HostNameSchema, nameArg, 'NAME');
      const { UserRepository } = await import('@banbus/console');
      await withPool(io, async (pool) => {
        if (!(await new UserRepository(pool).remove(name))) throw new UsageError(`no user named ${name}`);
        io.out(`removed user ${name}\n`);
      });
    });
}
