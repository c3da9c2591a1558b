// startIngest: wires the HTTP app to PostgreSQL (tokens, allowlist) and the bus. The process-level
// resources (pool, bus, logger, registry) belong to the caller, which may share them with other
// services in one process (`banbus run all`), so stop() leaves them open.
import type pg from 'pg';
import { listen, type Logger, type Registry, type Running } from '@banbus/runtime';
import { policyFromEnv, type IngestEnv } from '@banbus/core';
import type { Bus } from '@banbus/bus';
import { AllowlistRepository, CHANNELS, HostRepository, listenChannel } from '@banbus/db';
import { createIngestApp, type ReportHandoff } from './app.js';
import { TokenAuthenticator } from './auth.js';
import { AllowlistCache } from './checks.js';
import { ReportRateLimiter } from './rate.js';

export {
  createIngestApp,
  toReport,
  type IngestAppOptions,
  type ReportHandoff,
  type ReportPublisher,
} from './app.js';
export { parseReportBody, parseCompatQuery, type ReportInput } from './parse.js';
export { mainIngest } from './main.js';

export interface IngestDeps {
  config: IngestEnv;
  logger: Logger;
  registry: Registry;
  pool: pg.Pool;
  bus: Bus;
  /** The persister of this process, when there is one (`banbus run all`). */
  handoff?: ReportHandoff;
}

export async function startIngest(deps: IngestDeps): Promise<Running & { port: number }> {
  const { config, registry, pool, bus } = deps;
  const logger = deps.logger.child({ component: 'ingest' });
  const policy = policyFromEnv(config);

  const auth = new TokenAuthenticator({
    hosts: new HostRepository(pool),
    ttlSeconds: config.INGEST_TOKEN_CACHE_TTL,
    logger,
  });
  const allowlists = new AllowlistRepository(pool);
  const allowlist = new AllowlistCache(
    {
      load: () => allowlists.active(),
      subscribe: (onChange, onReconnect) =>
        listenChannel(config.DATABASE_URL, CHANNELS.allowlist, onChange, { logger, onReconnect }),
    },
    logger,
  );
  // Not fatal when PostgreSQL is away at start: /readyz says "not ready" and the cache keeps retrying.
  await allowlist.start();

  const app = createIngestApp({
    logger,
    registry,
    bus,
    auth,
    allowlist,
    limiter: new ReportRateLimiter(config.INGEST_RATE_LIMIT, config.INGEST_RATE_BURST),
    policy,
    maxBatch: config.INGEST_MAX_BATCH,
    handoff: deps.handoff,
  });
  const listening = await listen(app, config.INGEST_PORT, config.BANBUS_LISTEN);
  logger.info({ port: listening.port, host: config.BANBUS_LISTEN }, 'ingest listening');

  return {
    port: listening.port,
    async stop() {
      // Stop taking requests first (in-flight ones finish and get their answer), then the helpers.
      await listening.close();
      await allowlist.stop();
      await auth.stop();
    },
  };
}
