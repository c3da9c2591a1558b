import { Command, CommanderError } from 'commander';
import { ConfigError } from '@banbus/core';
import { allowCommand } from './commands/allow.js';
import { bansCommands } from './commands/bans.js';
import { hostsCommand } from './commands/hosts.js';
import { importCommand } from './commands/import.js';
import { migrateCommand } from './commands/migrate.js';
import { runCommand } from './commands/run.js';
import { usersCommand } from './commands/users.js';
import { UsageError, processIo, type CliIo } from './io.js';

export function createProgram(io: CliIo): Command {
  const program = new Command('banbus')
    .description('fleet-wide fail2ban: one ban decision, enforced on every host')
    .exitOverride()
    .showHelpAfterError('(run with --help for usage)')
    .configureOutput({ writeOut: io.out, writeErr: io.err });
  migrateCommand(program, io);
  hostsCommand(program, io);
  allowCommand(program, io);
  importCommand(program, io);
  bansCommands(program, io);
  usersCommand(program, io);
  runCommand(program, io);
  for (const command of program.commands) {
    command.exitOverride().configureOutput({ writeOut: io.out, writeErr: io.err });
    for (const sub of command.commands)
      sub.exitOverride().configureOutput({ writeOut: io.out, writeErr: io.err });
  }
  return program;
}

/**
 * Runs one `banbus` invocation and returns its exit code: 0 done, 1 failed, 2 bad usage or
 * configuration. Never calls process.exit, so tests run it in-process.
 */
export async function runCli(argv: string[], io: CliIo = processIo): Promise<number> {
  const program = createProgram(io);
  try {
    await program.parseAsync(argv, { from: 'user' });
    return 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      // --help and --version arrive here with exit code 0; commander already printed the message.
      return err.exitCode === 0 ? 0 : 2;
    }
    if (err instanceof UsageError || err instanceof ConfigError) {
      io.err(`banbus: ${err.message}\n`);
      return 2;
    }
    io.err(`banbus: ${(err as Error).message}\n`);
    return 1;
  }
}
