// startConsole: the operator console — admin API under /v1/admin/ and the web UI, one process. Reads go
// to PostgreSQL; bans and unbans are published to the reports exchange like ingest's, so the persister
// decides and the decision stream carries them. The pool, bus, logger and registry belong to the caller,
// which may share them with other services in one process (`banbus run all`).
import type pg from 'pg';
import type { Express } from 'express';
import type { ConsoleEnv } from '@banbus/core';
import type { Bus } from '@banbus/bus';
import { HostRepository } from '@banbus/db';
import { listen, type Logger, type Registry, type Running } from '@banbus/runtime';
import type { AdminActions } from './actions.js';
import { createConsoleApp } from './app.js';
import { ApplierPoller, ApplierStatusRepository } from './appliers.js';
import { ConsoleAuth, LoginLimiter } from './auth.js';
import { LiveEvents } from './events.js';
import { SessionStore } from './sessions.js';
import { UserRepository } from './users.js';
import { consoleParts } from './parts.js';
import type { ConsoleQueries } from './queries.js';

export { mainConsole } from './main.js';
export { createConsoleApp, PUBLIC_DIR, type ConsoleAppOptions } from './app.js';
export {
  AdminActions,
  type AllowResult,
  type AllowlistEntryJson,
  type BanResult,
  type HostJson,
  type ReportPublisher,
  type UnbanResult,
} from './actions.js';
export { ApplierPoller, ApplierStatusRepository, type PollResult } from './appliers.js';
export { AuditLog, AUDIT_ACTIONS, type Actor, type AuditAction, type AuditEntry } from './audit.js';
export { ConsoleAuth, LoginLimiter, CSRF_HEADER, cookieName, type Principal } from './auth.js';
export { LiveEvents } from './events.js';
export { hashPassword, verifyPassword, MIN_PASSWORD_LENGTH } from './passwords.js';
export {
  ConsoleQueries,
  encodeCursor,
  type ApplierItem,
  type DecisionDetail,
  type DecisionItem,
  type DecisionPage,
  type Overview,
  type ReportItem,
} from './queries.js';
export * from './schemas.js';
export { SessionStore, type Session } from './sessions.js';
export { UserRepository, checkPassword, type ConsoleUser } from './users.js';
export { consoleParts } from './parts.js';
export { HttpAdminClient, DirectAdminClient, AdminClientError, type AdminClient } from './client.js';

export interface ConsoleDeps {
  config: ConsoleEnv;
  logger: Logger;
  registry: Registry;
  pool: pg.Pool;
  bus: Bus;
}

export interface ConsoleRunning extends Running {
  readonly port: number;
  ready(): boolean;
  readonly queries: ConsoleQueries;
  readonly actions: AdminActions;
  readonly events: LiveEvents;
  /** Reads the appliers in CONSOLE_APPLIERS; poll() reads them all now. */
  readonly appliers: ApplierPoller;
  /** The express app (its routes are walked by the security tests). */
  readonly app: Express;
}

export async function startConsole(deps: ConsoleDeps): Promise<ConsoleRunning> {
  const { config, registry, pool, bus } = deps;
  const logger = deps.logger.child({ component: 'console' });
  const { queries, audit, actions } = consoleParts({ config, pool, publisher: bus });
  const sessions = new SessionStore(pool, config.CONSOLE_SESSION_TTL);
  const events = new LiveEvents({ databaseUrl: config.DATABASE_URL, logger });
  audit.onRecord((entry) => events.send('audit', entry));

  const applierStatus = new ApplierStatusRepository(pool);
  const poller = new ApplierPoller({
    urls: config.CONSOLE_APPLIERS,
    intervalMs: config.CONSOLE_APPLIER_POLL * 1000,
    repository: applierStatus,
    logger,
    onStatus: (status) => events.send('appliers', { applier: status.host, seq: status.seq }),
  });

  let dbUp = true;
  const app = createConsoleApp({
    logger,
    registry,
    readiness: { bus: () => bus.connected, database: () => dbUp },
    auth: new ConsoleAuth({
      hosts: new HostRepository(pool),
      sessions,
      secureCookie: config.CONSOLE_SECURE_COOKIE,
    }),
    sessions,
    users: new UserRepository(pool),
    limiter: new LoginLimiter(config.CONSOLE_LOGIN_ATTEMPTS),
    queries,
    actions,
    audit,
    appliers: applierStatus,
    events,
    sessionTtlSeconds: config.CONSOLE_SESSION_TTL,
    secureCookie: config.CONSOLE_SECURE_COOKIE,
  });

  await events.start();
  // Expired sessions are refused at lookup anyway; the sweep only keeps the table small. It doubles as
  // the database check behind /readyz.
  const sweep = async () => {
    try {
      await sessions.sweep();
      dbUp = true;
    } catch (err) {
      dbUp = false;
      logger.warn({ err: (err as Error).message }, 'session sweep failed');
    }
  };
  await sweep();
  poller.start();
  const sweeper = setInterval(() => void sweep(), 60_000);
  sweeper.unref();

  let server;
  try {
    server = await listen(app, config.CONSOLE_PORT, config.BANBUS_LISTEN);
  } catch (err) {
    clearInterval(sweeper);
    await poller.stop();
    await events.stop();
    throw err;
  }
  logger.info(
    { port: server.port, host: config.BANBUS_LISTEN, appliers: config.CONSOLE_APPLIERS.length },
    'console listening',
  );
  const listening = server;
  return {
    port: listening.port,
    ready: () => bus.connected && dbUp,
    queries,
    actions,
    events,
    appliers: poller,
    app,
    async stop() {
      clearInterval(sweeper);
      await poller.stop();
      // Open event streams would hold the server's close until their clients leave.
      await events.stop();
      await listening.close();
    },
  };
}
