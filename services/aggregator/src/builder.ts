// Rebuilds the merged blocklists after changes: debounced, one build at a time, the merge in a worker
// thread that also renders the answers. The main thread only hands over the targets' columns (a few
// megabytes, transferred, not copied) and gets back counts and rendered bytes. The last good build keeps
// being served when a build fails.
import { Worker } from 'node:worker_threads';
import type { BlocklistFamily, BlocklistFormat, FamilyRanges } from '@banbus/core';
import type { Logger } from '@banbus/runtime';
import type { WorkerRequest, WorkerResponse } from './merge-worker.js';
import type { ColumnBuffers } from './state.js';

export interface Build {
  /** Increments with every finished build (cache key for rendered answers). */
  readonly id: number;
  /** The decision seq this build reflects. */
  readonly seq: number;
  readonly generatedAt: Date;
  /** Merged CIDRs per family. */
  readonly counts: { readonly v4: number; readonly v6: number };
}

/** A render asked of a build the worker no longer holds (two newer builds finished meanwhile). */
export class StaleBuildError extends Error {}

export interface RenderQuery {
  family: BlocklistFamily;
  format: BlocklistFormat;
  /** Entries [from, to) of the family's list; the whole list when absent. */
  from?: number;
  to?: number;
}

export interface BuilderOptions {
  /** The current targets' columns and their seq, read when a build starts, written into `buffers`. */
  source: (buffers: ColumnBuffers) => { seq: number; v4: FamilyRanges; v6: FamilyRanges };
  debounceMs: number;
  /** BLOCKLIST_DIR: blocklist4.txt, blocklist6.txt, blocklist.txt are written there after each build. */
  dir?: string | undefined;
  logger: Logger;
  onBuild?: (build: Build, seconds: number) => void;
}

/** After a failed build, the next try comes this much later even without a new change. */
const RETRY_AFTER_FAILURE_MS = 5_000;

/**
 * The merge worker. From the build it is dist/merge-worker.js. From source (tsx, tests) this module is a .ts
 * file: Node 20 does not hand tsx's loader hooks (`--import tsx`) to worker threads, so a small bootstrap
 * registers them in the worker before importing merge-worker.ts (the `banbus-source` condition is inherited
 * with execArgv).
 */
function spawnMergeWorker(): Worker {
  // The worker's data lives in typed arrays outside the JavaScript heap; a small young generation keeps
  // its heap from reserving tens of megabytes it never needs.
  const resourceLimits = { maxYoungGenerationSizeMb: 8 };
  if (!import.meta.url.endsWith('.ts'))
    return new Worker(new URL('./merge-worker.js', import.meta.url), { resourceLimits });
  const api = import.meta.resolve('tsx/esm/api');
  const entry = new URL('./merge-worker.ts', import.meta.url).href;
  const bootstrap =
    `(async () => { const { register } = await import(${JSON.stringify(api)}); register(); ` +
    `await import(${JSON.stringify(entry)}); })();`;
  return new Worker(bootstrap, { eval: true, resourceLimits });
}

/**
 * The columns handed to the worker, in shared memory: every build writes into the same buffers instead
 * of allocating (and transferring, and later freeing) megabytes per build. Safe without locks because
 * builds run one at a time: the main thread writes only between the worker's answer and the next build.
 */
class SharedColumns implements ColumnBuffers {
  private readonly buffers = new Map<string, Uint32Array | Uint8Array>();

  private get<T extends Uint32Array | Uint8Array>(
    key: string,
    length: number,
    make: (buffer: SharedArrayBuffer) => T,
    bytesPer: number,
  ): T {
    let array = this.buffers.get(key) as T | undefined;
    if (!array || array.length < length) {
      array = make(new SharedArrayBuffer(Math.max(1024, Math.ceil(length * 1.25)) * bytesPer));
      this.buffers.set(key, array);
    }
    return array.subarray(0, length) as T;
  }

  words(family: 4 | 6, length: number): Uint32Array {
    return this.get(`w${family}`, length, (b) => new Uint32Array(b), 4);
  }

  prefixes(family: 4 | 6, length: number): Uint8Array {
    return this.get(`p${family}`, length, (b) => new Uint8Array(b), 1);
  }
}

export class BlocklistBuilder {
  private readonly columns = new SharedColumns();
  current: Build | undefined;
  private timer: NodeJS.Timeout | undefined;
  private building = false;
  private dirty = false;
  private stopped = false;
  private worker: Worker | undefined;
  private nextRequest = 1;
  private readonly pending = new Map<
    number,
    { resolve: (r: WorkerResponse) => void; reject: (e: Error) => void }
  >();
  private readonly waiters: { seq: number; resolve: (b: Build) => void }[] = [];
  /** When the oldest change not yet in a finished build was applied (epoch ms), for the lag metric. */
  private changedSince: number | undefined;
  private changedDuringBuild: number | undefined;

  constructor(private readonly options: BuilderOptions) {}

  /** Seconds since the oldest change not yet reflected in the served lists (0 when up to date). */
  lagSeconds(now = Date.now()): number {
    return this.changedSince === undefined ? 0 : (now - this.changedSince) / 1000;
  }

  /** A change happened: build after the debounce (or now, with `immediate`). */
  schedule(immediate = false): void {
    if (this.stopped) return;
    const now = Date.now();
    this.changedSince ??= now;
    if (this.building) {
      this.changedDuringBuild ??= now;
      this.dirty = true;
      return;
    }
    if (this.timer) {
      if (!immediate) return;
      clearTimeout(this.timer);
    }
    this.timer = setTimeout(() => void this.build(), immediate ? 0 : this.options.debounceMs);
  }

  /** Resolves with the first build reflecting at least `seq`. */
  waitForSeq(seq: number): Promise<Build> {
    if (this.current && this.current.seq >= seq) return Promise.resolve(this.current);
    return new Promise((resolve) => this.waiters.push({ seq, resolve }));
  }

  private async build(): Promise<void> {
    this.timer = undefined;
    if (this.stopped) return;
    this.building = true;
    this.dirty = false;
    this.changedDuringBuild = undefined;
    const started = performance.now();
    try {
      const { seq, v4, v6 } = this.options.source(this.columns);
      const generatedAt = new Date();
      const id = (this.current?.id ?? 0) + 1;
      const response = await this.ask(
        {
          type: 'build',
          id: 0,
          build: id,
          seq,
          generatedAt: generatedAt.getTime(),
          v4,
          v6,
          ...(this.options.dir !== undefined ? { dir: this.options.dir } : {}),
        },
        // Transferred when they are ordinary arrays (a source that allocates); shared ones need not be.
        [v4.words, v4.prefixes, v6.words, v6.prefixes]
          .map((a) => a.buffer)
          .filter((b): b is ArrayBuffer => b instanceof ArrayBuffer),
      );
      if (!response.ok) throw new Error(response.error);
      if (!('v4' in response)) throw new Error('the merge worker answered a build with a render');
      const build: Build = { id, seq, generatedAt, counts: { v4: response.v4, v6: response.v6 } };
      this.current = build;
      this.changedSince = this.changedDuringBuild;
      const seconds = (performance.now() - started) / 1000;
      this.options.logger.debug(
        { seq, decisions: v4.size + v6.size, v4: build.counts.v4, v6: build.counts.v6, seconds },
        'blocklist rebuilt',
      );
      this.options.onBuild?.(build, seconds);
      for (let i = this.waiters.length - 1; i >= 0; i--) {
        const w = this.waiters[i]!;
        if (w.seq <= seq) {
          this.waiters.splice(i, 1);
          w.resolve(build);
        }
      }
    } catch (err) {
      // The last good build stays served; try again later even if nothing changes.
      this.options.logger.error({ err: (err as Error).message }, 'blocklist rebuild failed');
      this.dirty = true;
      if (!this.stopped) {
        this.timer = setTimeout(() => void this.build(), RETRY_AFTER_FAILURE_MS);
        this.timer.unref();
      }
      return;
    } finally {
      this.building = false;
    }
    if (this.dirty && !this.stopped) this.schedule();
  }

  /** The rendered answer for `query` from `build`; StaleBuildError when the worker let it go. */
  async render(build: Build, query: RenderQuery): Promise<Uint8Array> {
    const response = await this.ask({
      type: 'render',
      id: 0,
      build: build.id,
      family: query.family,
      format: query.format,
      ...(query.from !== undefined ? { from: query.from, to: query.to ?? Infinity } : {}),
    });
    if (!response.ok) {
      if (response.stale) throw new StaleBuildError(response.error);
      throw new Error(response.error);
    }
    if (!('body' in response)) throw new Error('the merge worker answered a render with a build');
    return response.body;
  }

  private ask(request: WorkerRequest, transfer: ArrayBuffer[] = []): Promise<WorkerResponse> {
    const worker = this.ensureWorker();
    const id = this.nextRequest++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      worker.postMessage({ ...request, id }, transfer);
    });
  }

  private ensureWorker(): Worker {
    if (this.worker) return this.worker;
    const worker = spawnMergeWorker();
    worker.unref();
    worker.on('message', (response: WorkerResponse | { type: 'log'; error: string }) => {
      if ('type' in response) {
        this.options.logger.error({ err: response.error }, 'blocklist files not written');
        return;
      }
      const p = this.pending.get(response.id);
      this.pending.delete(response.id);
      p?.resolve(response);
    });
    const fail = (err: Error) => {
      if (this.worker === worker) this.worker = undefined;
      for (const p of this.pending.values()) p.reject(err);
      this.pending.clear();
    };
    worker.on('error', fail);
    worker.on('exit', (code) => fail(new Error(`merge worker exited with code ${code}`)));
    this.worker = worker;
    return worker;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    const worker = this.worker;
    this.worker = undefined;
    await worker?.terminate();
  }
}
