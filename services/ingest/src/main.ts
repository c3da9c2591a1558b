// Runs ingest alone: config → logger, registry, pool, bus → startIngest → graceful shutdown.
import { IngestEnvSchema, parseEnv } from '@banbus/core';
import { createLogger, createRegistry, stopOnSignals } from '@banbus/runtime';
import { Bus } from '@banbus/bus';
import { createPool } from '@banbus/db';
import { startIngest } from './index.js';

const config = parseEnv(IngestEnvSchema);
const logger = createLogger({ level: config.LOG_LEVEL, name: 'ingest' });
const registry = createRegistry();
const pool = createPool(config.DATABASE_URL, { logger });
const bus = await Bus.connect({ url: config.AMQP_URL, namespace: config.BANBUS_NAMESPACE, logger, registry });
const ingest = await startIngest({ config, logger, registry, pool, bus });

stopOnSignals(
  {
    async stop() {
      await ingest.stop();
      await bus.close();
      await pool.end();
    },
  },
  logger,
);
