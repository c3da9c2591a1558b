import { Registry, collectDefaultMetrics, Counter, Gauge, Histogram, Summary } from 'prom-client';

export { Registry, Counter, Gauge, Histogram, Summary };

/** One registry per process: in `banbus run all` every service registers its metrics in the same one. */
export function createRegistry(withDefaults = true): Registry {
  const registry = new Registry();
  if (withDefaults) collectDefaultMetrics({ register: registry, prefix: 'banbus_process_' });
  return registry;
}

/** Returns the metric already registered under that name, so two services in one process can share it. */
export function metric<T>(registry: Registry, name: string, create: () => T): T {
  const existing = registry.getSingleMetric(name);
  return (existing as T | undefined) ?? create();
}
