// The applier's Prometheus series: applied entries, the seq held, the lag behind the stream, errors.
import { Counter, Gauge, Histogram, metric, type Registry } from '@banbus/runtime';
import type { Applier, ApplierObserver } from './applier.js';
import { TargetSet } from './target-set.js';

export function createApplierMetrics(
  registry: Registry,
  applier: () => Applier | undefined,
): ApplierObserver {
  metric(
    registry,
    'banbus_applier_entries',
    () =>
      new Gauge({
        name: 'banbus_applier_entries',
        help: 'Entries this applier holds in the kernel, by family',
        labelNames: ['family'] as const,
        registers: [registry],
        collect() {
          const view = applier()?.kernelView ?? new Set<string>();
          let v6 = 0;
          // A TargetSet's IPv4 addresses are numbers: no need to spell 100k of them out per scrape.
          for (const t of view instanceof TargetSet ? view.nonV4Hosts() : view) if (t.includes(':')) v6++;
          this.set({ family: '4' }, view.size - v6);
          this.set({ family: '6' }, v6);
        },
      }),
  );
  metric(
    registry,
    'banbus_applier_seq',
    () =>
      new Gauge({
        name: 'banbus_applier_seq',
        help: 'Decision seq the kernel reflects (-1 before the first snapshot)',
        registers: [registry],
        collect() {
          this.set(applier()?.seq ?? -1);
        },
      }),
  );
  metric(
    registry,
    'banbus_applier_lag_seqs',
    () =>
      new Gauge({
        name: 'banbus_applier_lag_seqs',
        help: 'Decision changes seen on the stream or at the aggregator but not yet in the kernel',
        registers: [registry],
        collect() {
          this.set(applier()?.lag().seqs ?? 0);
        },
      }),
  );
  metric(
    registry,
    'banbus_applier_lag_seconds',
    () =>
      new Gauge({
        name: 'banbus_applier_lag_seconds',
        help: 'How long the oldest change seen but not yet in the kernel has waited (0 = up to date)',
        registers: [registry],
        collect() {
          this.set(applier()?.lag().seconds ?? 0);
        },
      }),
  );
  metric(
    registry,
    'banbus_applier_refused',
    () =>
      new Gauge({
        name: 'banbus_applier_refused',
        help: 'Decisions kept out of the kernel by the never-block list',
        registers: [registry],
        collect() {
          this.set(applier()?.refusedCount ?? 0);
        },
      }),
  );
  const snapshots = metric(
    registry,
    'banbus_applier_snapshots_total',
    () =>
      new Counter({
        name: 'banbus_applier_snapshots_total',
        help: 'Snapshot attempts by result: applied, or why not (unavailable, truncated, invalid, suspicious, backend)',
        labelNames: ['result'] as const,
        registers: [registry],
      }),
  );
  const deltas = metric(
    registry,
    'banbus_applier_deltas_total',
    () =>
      new Counter({
        name: 'banbus_applier_deltas_total',
        help: 'Gaps and missed changes caught up from a delta',
        registers: [registry],
      }),
  );
  const changes = metric(
    registry,
    'banbus_applier_changes_total',
    () =>
      new Counter({
        name: 'banbus_applier_changes_total',
        help: 'Entries added to and deleted from the kernel',
        labelNames: ['op'] as const,
        registers: [registry],
      }),
  );
  const errors = metric(
    registry,
    'banbus_applier_errors_total',
    () =>
      new Counter({
        name: 'banbus_applier_errors_total',
        help: 'Errors: kernel (an entry refused), backend (the tool failed), source (aggregator)',
        labelNames: ['kind'] as const,
        registers: [registry],
      }),
  );
  const refused = metric(
    registry,
    'banbus_applier_refused_total',
    () =>
      new Counter({
        name: 'banbus_applier_refused_total',
        help: 'Decisions refused by the never-block list',
        registers: [registry],
      }),
  );
  const skipped = metric(
    registry,
    'banbus_applier_skipped_total',
    () =>
      new Counter({
        name: 'banbus_applier_skipped_total',
        help: 'Changes received again or already held (redeliveries, republished seqs)',
        registers: [registry],
      }),
  );
  const writeSeconds = metric(
    registry,
    'banbus_applier_write_seconds',
    () =>
      new Histogram({
        name: 'banbus_applier_write_seconds',
        help: 'Time to write one batch of changes to the kernel',
        buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 2.5, 5],
        registers: [registry],
      }),
  );
  return {
    snapshot(result) {
      snapshots.inc({ result });
      if (result !== 'applied') errors.inc({ kind: result === 'backend' ? 'backend' : 'source' });
    },
    delta() {
      deltas.inc();
    },
    written(adds, dels, seconds) {
      if (adds) changes.inc({ op: 'add' }, adds);
      if (dels) changes.inc({ op: 'del' }, dels);
      writeSeconds.observe(seconds);
    },
    failed(kind, count) {
      errors.inc({ kind }, count);
    },
    refused(count) {
      refused.inc(count);
    },
    skipped(count) {
      skipped.inc(count);
    },
  };
}
