// Changes nothing: keeps the set in memory and logs what it would do. For trying banbus safely, and
// for tests and benchmarks, which read `entries` and listen with `onWrite`.
import type { Logger } from '@banbus/runtime';
import type { KernelBackend, WriteFailure } from './types.js';

export type WriteListener = (adds: readonly string[], dels: readonly string[], at: number) => void;

export class DryRunBackend implements KernelBackend {
  readonly name = 'dry-run';
  readonly disjoint = false;
  readonly entries = new Set<string>();
  private readonly listeners = new Set<WriteListener>();

  constructor(private readonly logger: Logger) {}

  /** Called after every write with what changed and when (performance.now()). */
  onWrite(listener: WriteListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  async init(): Promise<void> {}

  async list(): Promise<Set<string>> {
    return new Set(this.entries);
  }

  async write(adds: readonly string[], dels: readonly string[], bulk: boolean): Promise<WriteFailure[]> {
    for (const t of adds) this.entries.add(t);
    for (const t of dels) this.entries.delete(t);
    const at = performance.now();
    if (bulk || adds.length + dels.length > 20) {
      this.logger.info(
        { adds: adds.length, dels: dels.length, held: this.entries.size },
        'dry-run: would write',
      );
    } else {
      this.logger.info({ adds, dels, held: this.entries.size }, 'dry-run: would write');
    }
    for (const listener of this.listeners) listener(adds, dels, at);
    return [];
  }

  async removeAll(): Promise<void> {
    this.entries.clear();
  }

  async close(): Promise<void> {}
}
