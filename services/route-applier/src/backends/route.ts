// Kernel routes of type blackhole | unreachable | prohibit, tagged with our `proto` number so that only
// our routes are ever listed, changed or removed. Changes go through one long-lived `ip -force -batch -`.
import { normalizeTarget, type RouteType } from '@banbus/core';
import type { Logger } from '@banbus/runtime';
import { inNamespace, LineTool, runOk } from './tool.js';
import type { KernelBackend, WriteFailure } from './types.js';

export interface RouteBackendOptions {
  type: RouteType;
  proto: number;
  netns?: string;
  logger: Logger;
}

interface Pending {
  first: number;
  count: number;
  entries: { adds: readonly string[]; dels: readonly string[]; retype: readonly string[] };
  failures: WriteFailure[];
}

/** The entry behind the index-th line of a write. */
function entryAt(e: Pending['entries'], i: number): { op: 'add' | 'del'; target: string } | undefined {
  if (i < e.adds.length) return { op: 'add', target: e.adds[i]! };
  i -= e.adds.length;
  if (i < e.dels.length) return { op: 'del', target: e.dels[i]! };
  i -= e.dels.length;
  return i < e.retype.length ? { op: 'add', target: e.retype[i]! } : undefined;
}

/** Route types ip prints first on a line. */
const ROUTE_TYPES = new Set([
  'unicast',
  'local',
  'broadcast',
  'multicast',
  'blackhole',
  'unreachable',
  'prohibit',
  'throw',
  'nat',
  'anycast',
]);

/** ip's answers that mean "already as wanted": adding a present route, deleting an absent one. */
const HARMLESS = { add: /File exists/, del: /No such process|not found|Cannot find/i } as const;

export class RouteBackend implements KernelBackend {
  readonly name = 'route';
  readonly disjoint = false;
  // Small enough that a slice's texts die young: at 8,192 they outlived the write and were promoted,
  // and the old generation they left behind raised the applier's peak RSS from 78 to 85 MB (100k
  // snapshot, `npm run bench applier`) at the same load time.
  readonly bulkSlice = 1024;
  private readonly tool: LineTool;
  /** Our routes of another type (the type was reconfigured): replaced on the next bulk write. */
  private retype = new Set<string>();
  private readonly pending: Pending[] = [];
  private message: string[] = [];

  constructor(private readonly options: RouteBackendOptions) {
    const [command, args] = inNamespace(options.netns, 'ip', ['-force', '-batch', '-']);
    this.tool = new LineTool({
      name: 'ip -batch',
      command,
      args,
      logger: options.logger,
      // Prints "1: lo: <LOOPBACK…" (and a second line), flushed at once: proof that the lines before ran.
      sentinel: 'link show dev lo',
      sentinelStream: 'stdout',
      isSentinel: (line) => /^\d+: lo: /.test(line),
      onError: (line) => this.onError(line),
    });
  }

  private ip(args: string[]): Promise<string> {
    const [command, full] = inNamespace(this.options.netns, 'ip', args);
    return runOk(command, full);
  }

  async init(): Promise<void> {
    // Fails early and clearly when ip is missing or we may not change routes.
    await this.ip(['-j', 'route', 'show', 'proto', String(this.options.proto)]);
    await this.tool.exec(0, () => '');
  }

  async list(): Promise<Set<string>> {
    const out = new Set<string>();
    const retype = new Set<string>();
    for (const family of ['-4', '-6']) {
      // The text form, not -j: a third of the bytes and no object per route (100k routes at a snapshot).
      const text = await this.ip([family, 'route', 'show', 'proto', String(this.options.proto)]);
      let start = 0;
      while (start < text.length) {
        let end = text.indexOf('\n', start);
        if (end < 0) end = text.length;
        const line = text.slice(start, end);
        start = end + 1;
        // "blackhole 10.0.0.1 …", "unreachable 2001:db8::/32 dev lo …", or "10.0.0.0/8 via …" (unicast).
        const words = line.trim().split(' ', 2);
        const typed = ROUTE_TYPES.has(words[0] ?? '');
        const dst = typed ? words[1] : words[0];
        if (!dst) continue;
        let target: string;
        try {
          target = normalizeTarget(dst);
        } catch {
          continue; // "default" or something else we never write
        }
        out.add(target);
        if ((typed ? words[0] : 'unicast') !== this.options.type) retype.add(target);
      }
    }
    this.retype = retype;
    return out;
  }

  async write(adds: readonly string[], dels: readonly string[], bulk: boolean): Promise<WriteFailure[]> {
    const { type } = this.options;
    const p = this.options.proto.toString();
    for (const t of dels) this.retype.delete(t);
    const retype = bulk ? [...this.retype] : [];
    if (bulk) this.retype.clear();
    // Lines are made as they are written (a snapshot is 100k of them): adds, then dels, then retypes.
    const entries: Pending['entries'] = { adds, dels, retype };
    const count = adds.length + dels.length + retype.length;
    const lineAt = (i: number): string => {
      // add, not replace: replace would take over a route to the same prefix that is not ours.
      if (i < adds.length) return `route add ${type} ${adds[i]} proto ${p}`;
      i -= adds.length;
      // No type: deletes our route whatever its type; proto keeps everyone else's routes safe.
      if (i < dels.length) return `route del ${dels[i]} proto ${p}`;
      return `route replace ${type} ${retype[i - dels.length]} proto ${p}`;
    };
    const pending: Pending = { first: 0, count, entries, failures: [] };
    await this.tool.exec(count, lineAt, (first) => {
      pending.first = first;
      this.pending.push(pending);
    });
    this.pending.splice(this.pending.indexOf(pending), 1);
    return pending.failures;
  }

  /** ip prints the reason first ("RTNETLINK answers: …", "Error: …"), then "Command failed -:LINE". */
  private onError(line: string): void {
    const failed = /^Command failed .*:(\d+)\s*$/.exec(line);
    if (!failed) {
      if (line.trim() !== '') this.message.push(line.trim());
      return;
    }
    const number = Number(failed[1]);
    const message = this.message.join('; ');
    this.message = [];
    const pending = this.pending.find((p) => number >= p.first && number < p.first + p.count);
    const entry = pending && entryAt(pending.entries, number - pending.first);
    if (!pending || !entry) {
      this.options.logger.warn(
        { line: number, message },
        'ip -batch reported an error for a line we cannot place',
      );
      return;
    }
    if (HARMLESS[entry.op].test(message)) return;
    pending.failures.push({ target: entry.target, op: entry.op, error: message });
  }

  async removeAll(): Promise<void> {
    const p = String(this.options.proto);
    for (const family of ['-4', '-6']) {
      try {
        await this.ip([family, 'route', 'flush', 'proto', p]);
      } catch (err) {
        // flush answers non-zero when there was nothing to flush on some kernels
        if (!/Nothing to flush/i.test((err as Error).message)) throw err;
      }
    }
  }

  async close(): Promise<void> {
    await this.tool.close();
  }
}
