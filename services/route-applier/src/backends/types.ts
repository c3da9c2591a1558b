/** One entry the kernel refused, with the tool's message. */
export interface WriteFailure {
  target: string;
  op: 'add' | 'del';
  error: string;
}

/**
 * Where bans are enforced: kernel routes, an ipset pair, an nftables table, or memory. Entries are
 * canonical target texts (see @banbus/core's parseTarget); the family follows from the text.
 */
export interface KernelBackend {
  readonly name: string;
  /**
   * True when the kernel cannot hold a network and an entry inside it at once (nftables interval sets):
   * the applier then writes only the entries that no other decision contains.
   */
  readonly disjoint: boolean;
  /**
   * Largest number of entries worth one bulk write when a snapshot is loaded; unset: all at once.
   * A long-lived tool (ip -batch) takes a snapshot in slices at no cost, and the applier then never
   * holds the texts of all adds at once; a tool started per write (ipset restore, an nft transaction)
   * loads fastest in one go.
   */
  readonly bulkSlice?: number;
  /** Creates what the backend needs (sets, table, the long-lived tool process). Idempotent. */
  init(): Promise<void>;
  /** Our entries in the kernel now (only ours: our proto, our sets, our table). */
  list(): Promise<Set<string>>;
  /**
   * Adds and deletes entries. `bulk` marks a snapshot or reconcile (thousands at once) so the backend
   * may take its bulk path. Deleting an absent entry or adding a present one is not a failure.
   * Rejects only when the backend itself broke (the tool process died); refused entries come back.
   */
  write(adds: readonly string[], dels: readonly string[], bulk: boolean): Promise<WriteFailure[]>;
  /** Removes everything of ours (APPLIER_REMOVE_ON_SHUTDOWN). */
  removeAll(): Promise<void>;
  /** Stops the tool processes; the kernel keeps its entries. */
  close(): Promise<void>;
}

/** The backend itself failed (tool missing, process died, no permission): retried, never counted against a message. */
export class BackendError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'BackendError';
  }
}

export function isV6(target: string): boolean {
  return target.includes(':');
}
