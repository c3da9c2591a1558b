import { z } from 'zod';
import { DurationSeconds, SCOPES, TargetSchema, describeIssue } from '@banbus/core';
import { UsageError } from './io.js';

// Command-line values are validated with the same schemas as every other input path.

export const HostNameSchema = z
  .string()
  .regex(
    /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/,
    'a host name is 1-63 letters, digits, ".", "_" or "-", starting with a letter or digit',
  );

export const ScopesSchema = z
  .string()
  .transform((s) =>
    s
      .split(',')
      .map((x) => x.trim())
      .filter(Boolean),
  )
  .pipe(z.array(z.enum(SCOPES)).min(1, 'at least one scope'))
  .transform((scopes) => [...new Set(scopes)]);

export const NetworkSchema = TargetSchema;

export const ExpirySchema = DurationSeconds.pipe(z.number().int().positive('the duration must be positive'));

export function parseArg<T>(schema: z.ZodType<T>, value: unknown, name: string): T {
  const result = schema.safeParse(value);
  if (!result.success) throw new UsageError(`${name}: ${describeIssue(result.error).message}`);
  return result.data;
}
