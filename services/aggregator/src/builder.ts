// Rebuilds the merged blocklists after changes: debounced, one build at a time, the merge itself in a
// worker thread. The last good build keeps being served when a build fails.
import { Worker } from 'node:worker_threads';
import type { Logger } from '@banbus/runtime';
import type { MergeRequest, MergeResponse } from './merge-worker.js';

export interface Build {
  /** Increments with every finished build (cache key for rendered answers). */
  readonly id: number;
  /** The decision seq this build reflects. */
  readonly seq: number;
  readonly generatedAt: Date;
  readonly v4: readonly string[];
  readonly v6: readonly string[];
}

export interface BuilderOptions {
  /** The current targets and their seq, read when a build starts. */
  source: () => { seq: number; targets: string[] };
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
  if (!import.meta.url.endsWith('.ts')) return new Worker(new URL('./merge-worker.js', import.meta.url));
  const api = import.meta.resolve('tsx/esm/api');
  const entry = new URL('./merge-worker.ts', import.meta.url).href;
  const bootstrap =
    `(async () => { const { register } = await import(${JSON.stringify(api)}); register(); ` +
    `await import(${JSON.stringify(entry)}); })();`;
  return new Worker(bootstrap, { eval: true });
}

export class BlocklistBuilder {
  current: Build | undefined;
  private timer: NodeJS.Timeout | undefined;
  private building = false;
  private dirty = false;
  private stopped = false;
  private worker: Worker | undefined;
  private nextRequest = 1;
  private readonly pending = new Map<
    number,
    { resolve: (r: MergeResponse) => void; reject: (e: Error) => void }
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
      const { seq, targets } = this.options.source();
      const generatedAt = new Date();
      const response = await this.merge({
        id: 0,
        targets,
        seq,
        generatedAt: generatedAt.getTime(),
        ...(this.options.dir !== undefined ? { dir: this.options.dir } : {}),
      });
      if (!response.ok) throw new Error(response.error);
      const build: Build = {
        id: (this.current?.id ?? 0) + 1,
        seq,
        generatedAt,
        v4: response.v4,
        v6: response.v6,
      };
      this.current = build;
      this.changedSince = this.changedDuringBuild;
      const seconds = (performance.now() - started) / 1000;
      this.options.logger.debug(
        { seq, targets: targets.length, v4: build.v4.length, v6: build.v6.length, seconds },
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

  private merge(request: MergeRequest): Promise<MergeResponse> {
    const worker = this.ensureWorker();
    const id = this.nextRequest++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      worker.postMessage({ ...request, id });
    });
  }

  private ensureWorker(): Worker {
    if (this.worker) return this.worker;
    const worker = spawnMergeWorker();
    worker.unref();
    worker.on('message', (response: MergeResponse) => {
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
