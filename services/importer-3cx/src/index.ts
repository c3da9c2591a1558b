// startImporter3cx: polls a 3CX PBX's event log for blacklisted addresses and reports them through
// ingest, with a cursor that survives restarts. The event source, the ingest client and the cursor store
// come from the caller (main.ts wires the real ones; tests may pass their own).
import type { Importer3cxEnv } from '@banbus/core';
import {
  createServiceApp,
  finishApp,
  listen,
  type Logger,
  type Registry,
  type Running,
} from '@banbus/runtime';
import type { CursorStore } from './cursor-file.js';
import { Importer3cx, type ReportSender } from './importer.js';
import { createImporter3cxMetrics } from './metrics.js';
import type { EventSource } from './source.js';

export { mainImporter3cx } from './main.js';
export { Importer3cx, type ImporterOptions, type ReportSender, type Dependency } from './importer.js';
export { Cursor, CursorStateSchema, type CursorState, type CursorEvent } from './cursor.js';
export { CursorFile, CursorFileError, type CursorStore } from './cursor-file.js';
export { extractAddresses } from './extract.js';
export {
  eventToReports,
  reasonOf,
  reportId,
  REPORT_ID_NAMESPACE,
  type EventRow,
  type ReportBody,
  type EventOutcome,
} from './events.js';
export {
  IngestClient,
  IngestRefusedError,
  IngestUnavailableError,
  type IngestClientOptions,
  type SendResult,
} from './ingest-client.js';
export {
  PgEventSource,
  sourceConfig,
  SourceShapeError,
  sourceIdentity,
  type EventSource,
  type SourceConfig,
} from './source.js';

export interface Importer3cxDeps {
  config: Importer3cxEnv;
  logger: Logger;
  registry: Registry;
  source: EventSource & { reset?(): void };
  sender: ReportSender;
  store: CursorStore;
  /** Backoff while a dependency is away; defaults to 0.5 s doubling up to THREECX_RETRY_MAX. */
  retry?: { minMs: number; maxMs: number };
}

export interface Importer3cxRunning extends Running {
  readonly port: number;
  readonly importer: Importer3cx;
  ready(): boolean;
}

export async function startImporter3cx(deps: Importer3cxDeps): Promise<Importer3cxRunning> {
  const { config, registry, source, sender, store } = deps;
  const logger = deps.logger.child({ component: 'importer-3cx' });

  // A cursor file that cannot be read stops the start (CursorFileError): guessing would re-import or skip.
  let saved = await store.load();
  if (saved !== null && saved.source !== source.identity) {
    logger.warn(
      { cursor: saved.source, source: source.identity },
      'the cursor belongs to another 3CX database or table; starting a new one',
    );
    saved = null;
  } else if (saved !== null && saved.keys !== source.keyScheme) {
    logger.warn(
      { cursor: saved.keys, now: source.keyScheme },
      'THREECX_ID_COLUMN changed: going on after the newest event reported',
    );
  }
  const importer = new Importer3cx({
    source,
    sender,
    store,
    saved,
    logger,
    metrics: createImporter3cxMetrics(registry),
    batchSize: config.THREECX_BATCH_SIZE,
    pollIntervalMs: config.THREECX_POLL_INTERVAL * 1000,
    lookbackSeconds: config.THREECX_LOOKBACK,
    overlapSeconds: config.THREECX_OVERLAP,
    bantime: config.THREECX_BANTIME,
    retry: deps.retry ?? { minMs: 500, maxMs: config.THREECX_RETRY_MAX * 1000 },
  });

  const app = createServiceApp({
    logger,
    registry,
    readiness: {
      database: () => importer.dependencies().database,
      ingest: () => importer.dependencies().ingest,
      cursor: () => importer.dependencies().cursor,
    },
  });
  finishApp(app);
  const server = await listen(app, config.IMPORTER_PORT, config.BANBUS_LISTEN);
  importer.start();
  logger.info(
    { port: server.port, source: source.identity, eventIds: config.THREECX_EVENT_IDS },
    'importer-3cx started',
  );

  return {
    port: server.port,
    importer,
    ready: () => importer.ready(),
    async stop() {
      await importer.stop();
      await server.close();
    },
  };
}
