// The cursor on disk: JSON, replaced atomically (write a temporary file, fsync, rename, fsync the
// directory), so a crash or power loss leaves either the old cursor or the new one, never half of one.
import { mkdir, open, readFile, rename } from 'node:fs/promises';
import { dirname } from 'node:path';
import { CursorStateSchema, type CursorState } from './cursor.js';

export interface CursorStore {
  load(): Promise<CursorState | null>;
  save(state: CursorState): Promise<void>;
}

export class CursorFileError extends Error {
  override name = 'CursorFileError';
}

export class CursorFile implements CursorStore {
  constructor(readonly path: string) {}

  async load(): Promise<CursorState | null> {
    let text: string;
    try {
      text = await readFile(this.path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw new CursorFileError(`THREECX_CURSOR_FILE ${this.path}: ${(err as Error).message}`);
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = undefined;
    }
    const state = CursorStateSchema.safeParse(parsed);
    if (!state.success) {
      // Guessing a position would either re-import or skip events: the operator decides.
      throw new CursorFileError(
        `THREECX_CURSOR_FILE ${this.path} is not a cursor this importer wrote; ` +
          'remove it to start again THREECX_LOOKBACK before the newest event',
      );
    }
    return state.data;
  }

  async save(state: CursorState): Promise<void> {
    const dir = dirname(this.path);
    await mkdir(dir, { recursive: true });
    const tmp = `${this.path}.tmp`;
    const file = await open(tmp, 'w', 0o640);
    try {
      await file.writeFile(JSON.stringify(state));
      await file.sync();
    } finally {
      await file.close();
    }
    await rename(tmp, this.path);
    const directory = await open(dir, 'r');
    try {
      await directory.sync();
    } finally {
      await directory.close();
    }
  }
}
