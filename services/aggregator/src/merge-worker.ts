// Runs in a worker thread: merging 1M targets and rendering the lists take hundreds of milliseconds of CPU,
// which the main thread (HTTP answers, the decision stream) must not spend. The worker keeps the merged
// columns of the newest builds and renders answers from them on request; it also writes the blocklist
// files, so rendering and disk I/O of the big texts stay off the main thread too.
import { parentPort } from 'node:worker_threads';
import { rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  mergeRanges,
  renderRanges,
  sliceRanges,
  type BlocklistFamily,
  type BlocklistFormat,
  type FamilyRanges,
  type MergedRanges,
  // Only the blocklist module: the worker has no use for the rest of core (schemas, config), whose
  // modules would cost its heap several megabytes.
} from '@banbus/core/blocklist';

export interface BuildRequest {
  type: 'build';
  id: number;
  /** The build's number (Build.id). */
  build: number;
  seq: number;
  generatedAt: number;
  v4: FamilyRanges;
  v6: FamilyRanges;
  /** BLOCKLIST_DIR, when the files are wanted. */
  dir?: string;
}

export interface RenderRequest {
  type: 'render';
  id: number;
  build: number;
  family: BlocklistFamily;
  format: BlocklistFormat;
  /** Entries [from, to) of the family's list (a part); the whole list when absent. */
  from?: number;
  to?: number;
}

export type WorkerRequest = BuildRequest | RenderRequest;

export type WorkerResponse =
  | { id: number; ok: true; v4: number; v6: number; seconds: number }
  | { id: number; ok: true; body: Uint8Array }
  | { id: number; ok: false; error: string; stale?: boolean };

interface Held {
  build: number;
  seq: number;
  generatedAt: Date;
  ranges: MergedRanges;
}

/** Builds kept for rendering: the newest, and the one the main thread may still be serving. */
const KEEP = 2;
const held: Held[] = [];
let files: Promise<void> = Promise.resolve();

/** Writes through a temporary file and a rename, so a reader (a web server, rsync) never sees half a list. */
async function writeAtomically(path: string, bytes: Uint8Array): Promise<void> {
  const tmp = `${path}.${process.pid}.tmp`;
  await writeFile(tmp, bytes);
  await rename(tmp, path);
}

async function writeFiles(build: Held, dir: string): Promise<void> {
  const targets: [string, BlocklistFamily][] = [
    ['blocklist4.txt', 4],
    ['blocklist6.txt', 6],
    ['blocklist.txt', 'all'],
  ];
  for (const [name, family] of targets) {
    // A newer build is already held: its own write follows, this one would only be overwritten.
    if (held[held.length - 1]!.build !== build.build) return;
    const bytes = renderRanges(build.ranges, {
      family,
      format: 'plain',
      generatedAt: build.generatedAt,
      seq: build.seq,
    });
    await writeAtomically(join(dir, name), bytes);
  }
}

function handle(request: WorkerRequest): void {
  if (request.type === 'build') {
    const started = performance.now();
    const ranges = mergeRanges(request.v4, request.v6);
    const build: Held = {
      build: request.build,
      seq: request.seq,
      generatedAt: new Date(request.generatedAt),
      ranges,
    };
    held.push(build);
    if (held.length > KEEP) held.shift();
    reply({
      id: request.id,
      ok: true,
      v4: ranges.v4.size,
      v6: ranges.v6.size,
      seconds: (performance.now() - started) / 1000,
    });
    const dir = request.dir;
    if (dir !== undefined) {
      // One write at a time, in build order: a slow disk never puts an older list over a newer one.
      files = files
        .then(() => writeFiles(build, dir))
        .catch((err: unknown) =>
          parentPort!.postMessage({
            type: 'log',
            error: `writing blocklist files: ${(err as Error).message}`,
          }),
        );
    }
    return;
  }
  const build = held.find((b) => b.build === request.build);
  if (!build) {
    reply({ id: request.id, ok: false, error: `build ${request.build} is no longer held`, stale: true });
    return;
  }
  const ranges =
    request.from === undefined
      ? build.ranges
      : sliceRanges(build.ranges, request.family, request.from, request.to ?? Infinity);
  const body = renderRanges(ranges, {
    family: request.family,
    format: request.format,
    generatedAt: build.generatedAt,
    seq: build.seq,
  });
  reply({ id: request.id, ok: true, body }, [body.buffer as ArrayBuffer]);
}

function reply(response: WorkerResponse, transfer: ArrayBuffer[] = []): void {
  parentPort!.postMessage(response, transfer);
}

parentPort?.on('message', (request: WorkerRequest) => {
  try {
    handle(request);
  } catch (err) {
    reply({ id: request.id, ok: false, error: (err as Error).message });
  }
});
