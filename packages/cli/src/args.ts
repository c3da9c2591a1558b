import { z } from 'zod';
import { DurationSeconds, HostScopesSchema, TargetSchema, describeIssue } from '@banbus/core';
import { UsageError } from './io.js';

export { HostNameSchema } from '@banbus/core';

// Command-line values are validated with the same schemas as every other input path.

export const ScopesSchema = z
  .string()
  .transform((s) =>
    s
      .split(',')
      .map((x) => x.trim())
      .filter(Boolean),
  )
  .pipe(HostScopesSchema);

export const NetworkSchema = TargetSchema;

export const ExpirySchema = DurationSeconds.pipe(z.number().int().positive('the duration must be positive'));

export function parseArg<T>(schema: z.ZodType<T>, value: unknown, name: string): T {
  const result = schema.safeParse(value);
  if (!result.success) throw new UsageError(`${name}: ${describeIssue(result.error).message}`);
  return result.data;
}
