// Runs in a worker thread: merging 1M targets takes hundreds of milliseconds of CPU, which the main thread
// (HTTP answers, the decision stream) must not spend. Also writes the blocklist files, so rendering and
// disk I/O of the big texts stay off the main thread too.
import { parentPort } from 'node:worker_threads';
import { rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { mergeTargets, renderBlocklist } from '@banbus/core';

export interface MergeRequest {
  id: number;
  targets: string[];
  seq: number;
  generatedAt: number;
  /** BLOCKLIST_DIR, when the files are wanted. */
  dir?: string;
}

export type MergeResponse =
  | { id: number; ok: true; v4: string[]; v6: string[]; seconds: number }
  | { id: number; ok: false; error: string };

/** Writes through a temporary file and a rename, so a reader (a web server, rsync) never sees half a list. */
async function writeAtomically(path: string, text: string): Promise<void> {
  const tmp = `${path}.${process.pid}.tmp`;
  await writeFile(tmp, text);
  await rename(tmp, path);
}

parentPort?.on('message', async (request: MergeRequest) => {
  const started = performance.now();
  try {
    const merged = mergeTargets(request.targets);
    if (request.dir !== undefined) {
      const generatedAt = new Date(request.generatedAt);
      const files: [string, 4 | 6 | 'all'][] = [
        ['blocklist4.txt', 4],
        ['blocklist6.txt', 6],
        ['blocklist.txt', 'all'],
      ];
      for (const [name, family] of files) {
        const text = renderBlocklist(merged, { family, format: 'plain', generatedAt, seq: request.seq });
        await writeAtomically(join(request.dir, name), text);
      }
    }
    const seconds = (performance.now() - started) / 1000;
    parentPort!.postMessage({
      id: request.id,
      ok: true,
      v4: merged.v4,
      v6: merged.v6,
      seconds,
    } satisfies MergeResponse);
  } catch (err) {
    parentPort!.postMessage({
      id: request.id,
      ok: false,
      error: (err as Error).message,
    } satisfies MergeResponse);
  }
});
