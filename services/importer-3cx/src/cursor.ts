// What has been reported, as a position in the event log that survives restarts.
//
// Event times are not unique (several events in the same second, or microsecond) and a row may become
// visible after a newer one (transactions commit out of order). So the cursor is not one timestamp but a
// watermark plus the keys of every event reported within `overlap` seconds (event time) behind it: each
// poll reads from `watermark - overlap` on and skips those keys. Nothing older than the window is read
// again (no re-import) and nothing inside it is missed (no gap), whatever the number of events per instant.
// Times here are seconds since the epoch as PostgreSQL's extract(epoch) gives them (microseconds kept).
import { z } from 'zod';

export const CursorStateSchema = z.object({
  version: z.literal(1),
  /** Which database and table the cursor belongs to ("host:port/database/table"). */
  source: z.string(),
  /** How events are told apart (the keys in `seen`): "row-md5" or "column:<name>". */
  keys: z.string(),
  /** Never read events older than this (the start point chosen when there was no cursor yet). */
  floor: z.number().nullable(),
  /** Newest event time reported. */
  watermark: z.number().nullable(),
  /** Key → event time, for the events reported within the overlap window behind the watermark. */
  seen: z.record(z.string(), z.number()),
});
export type CursorState = z.infer<typeof CursorStateSchema>;

/** One event as far as the cursor cares. */
export interface CursorEvent {
  key: string;
  epoch: number;
}

// Events are pruned from `seen` one second later than the query window ends, so that float rounding of
// the bound at the window's edge can never hand back an event whose key was already dropped.
const PRUNE_MARGIN = 1;

export class Cursor {
  private constructor(
    private state: CursorState,
    readonly overlap: number,
  ) {}

  /** A cursor for a source that has none: start at `floor` (null: at the very first event). */
  static start(source: string, keys: string, floor: number | null, overlap: number): Cursor {
    return new Cursor({ version: 1, source, keys, floor, watermark: null, seen: {} }, overlap);
  }

  /**
   * The same log, but events are now told apart differently (THREECX_ID_COLUMN changed): the old keys
   * mean nothing, so go on strictly after the watermark. Reported events are not sent again; an event
   * committed late at or before the watermark would be missed, which is the lesser evil.
   */
  static rekey(state: CursorState, keys: string, overlap: number): Cursor {
    const floor = state.watermark === null ? state.floor : state.watermark + 0.000001;
    return new Cursor({ ...structuredClone(state), keys, floor, seen: {} }, overlap);
  }

  static from(state: CursorState, overlap: number): Cursor {
    return new Cursor(structuredClone(state), overlap);
  }

  get source(): string {
    return this.state.source;
  }

  get keys(): string {
    return this.state.keys;
  }

  get watermark(): number | null {
    return this.state.watermark;
  }

  /** Events at or after this time are read; null = from the first event on. */
  lowerBound(): number | null {
    const { floor, watermark } = this.state;
    const window = watermark === null ? null : watermark - this.overlap;
    if (floor === null) return window;
    if (window === null) return floor;
    return Math.max(floor, window);
  }

  /** Keys of the events inside the window that have been reported already. */
  seenKeys(): string[] {
    return Object.keys(this.state.seen);
  }

  has(key: string): boolean {
    return Object.hasOwn(this.state.seen, key);
  }

  /** Records events as reported; moves the watermark and drops keys that fell out of the window. */
  advance(events: readonly CursorEvent[]): void {
    let watermark = this.state.watermark;
    for (const e of events) {
      this.state.seen[e.key] = e.epoch;
      if (watermark === null || e.epoch > watermark) watermark = e.epoch;
    }
    this.state.watermark = watermark;
    if (watermark === null) return;
    const keepFrom = watermark - this.overlap - PRUNE_MARGIN;
    for (const [key, epoch] of Object.entries(this.state.seen)) {
      if (epoch < keepFrom) delete this.state.seen[key];
    }
  }

  toJSON(): CursorState {
    return structuredClone(this.state);
  }
}
