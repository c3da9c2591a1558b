// The console's parts that need only a pool and a publisher: shared by the HTTP service and the CLI's
// direct mode.
import type pg from 'pg';
import { policyFromEnv, type ConsoleEnv } from '@banbus/core';
import { AdminActions, type ReportPublisher } from './actions.js';
import { AuditLog } from './audit.js';
import { ConsoleQueries } from './queries.js';

/** Wires the parts to one pool; `publisher` is the bus (or, in tests, a stand-in). */
export function consoleParts(deps: { config: ConsoleEnv; pool: pg.Pool } & { publisher: ReportPublisher }) {
  const { config, pool } = deps;
  const queries = new ConsoleQueries(pool, { applierStaleSeconds: config.CONSOLE_APPLIER_STALE });
  const audit = new AuditLog(pool);
  const actions = new AdminActions({
    pool,
    publisher: deps.publisher,
    policy: policyFromEnv(config),
    audit,
    queries,
  });
  return { queries, audit, actions };
}
