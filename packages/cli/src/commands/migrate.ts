import type { Command } from 'commander';
import { z } from 'zod';
import { CommonEnvSchema, parseEnv } from '@banbus/core';
import { parseArg } from '../args.js';
import type { CliIo } from '../io.js';

export function migrateCommand(program: Command, io: CliIo): void {
  program
    .command('migrate')
    .description('create the database if needed and apply pending migrations')
    .option('--down', 'roll back instead of applying')
    .option('--count <n>', 'how many migrations to apply or roll back (default: all up, one down)')
    .action(async (opts: { down?: boolean; count?: string }) => {
      const { DATABASE_URL } = parseEnv(CommonEnvSchema, io.env);
      const count =
        opts.count === undefined
          ? undefined
          : parseArg(z.coerce.number().int().positive(), opts.count, '--count');
      const { ensureDatabase, migrate } = await import('@banbus/db');
      if (!opts.down && (await ensureDatabase(DATABASE_URL))) io.err('created the database\n');
      const ran = await migrate(DATABASE_URL, {
        direction: opts.down ? 'down' : 'up',
        ...(count !== undefined ? { count } : opts.down ? { count: 1 } : {}),
      });
      io.out(
        ran.length === 0
          ? 'no migrations to run\n'
          : ran.map((name) => `${opts.down ? 'rolled back' : 'applied'} ${name}\n`).join(''),
      );
    });
}
