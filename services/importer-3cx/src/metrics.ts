import { Counter, Gauge, metric, type Registry } from '@banbus/runtime';

export interface Importer3cxMetrics {
  events: Counter<'outcome'>;
  reports: Counter<'outcome'>;
  retries: Counter<'dependency'>;
  polls: Counter;
  lastPoll: Gauge;
  watermark: Gauge;
}

export function createImporter3cxMetrics(registry: Registry): Importer3cxMetrics {
  return {
    events: metric(
      registry,
      'banbus_importer3cx_events_total',
      () =>
        new Counter({
          name: 'banbus_importer3cx_events_total',
          help: 'Events read from the 3CX event log, by outcome: reported, no-address, unreadable',
          labelNames: ['outcome'] as const,
          registers: [registry],
        }),
    ),
    reports: metric(
      registry,
      'banbus_importer3cx_reports_total',
      () =>
        new Counter({
          name: 'banbus_importer3cx_reports_total',
          help: 'Reports sent to ingest, by outcome: accepted, rejected (refused by ingest and dropped)',
          labelNames: ['outcome'] as const,
          registers: [registry],
        }),
    ),
    retries: metric(
      registry,
      'banbus_importer3cx_retries_total',
      () =>
        new Counter({
          name: 'banbus_importer3cx_retries_total',
          help: 'Failed attempts that are retried with backoff, by dependency: database, ingest, cursor',
          labelNames: ['dependency'] as const,
          registers: [registry],
        }),
    ),
    polls: metric(
      registry,
      'banbus_importer3cx_polls_total',
      () =>
        new Counter({
          name: 'banbus_importer3cx_polls_total',
          help: 'Successful reads of the 3CX event log',
          registers: [registry],
        }),
    ),
    lastPoll: metric(
      registry,
      'banbus_importer3cx_last_poll_timestamp_seconds',
      () =>
        new Gauge({
          name: 'banbus_importer3cx_last_poll_timestamp_seconds',
          help: 'When the 3CX event log was last read successfully',
          registers: [registry],
        }),
    ),
    watermark: metric(
      registry,
      'banbus_importer3cx_cursor_seconds',
      () =>
        new Gauge({
          name: 'banbus_importer3cx_cursor_seconds',
          help: 'Event time of the newest event reported (as the 3CX database writes it, read as UTC)',
          registers: [registry],
        }),
    ),
  };
}
