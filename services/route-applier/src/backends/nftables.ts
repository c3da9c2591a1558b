// An nftables table of ours, `inet <name>`: interval sets v4 and v6 and a drop rule for their sources in
// the input and forward hooks. A snapshot is one `nft -f -` transaction; single changes go through one
// long-lived `nft -i`. Interval sets refuse overlapping elements, so this backend is `disjoint`: the
// applier hands it only the decisions no other decision contains.
import { normalizeTarget } from '@banbus/core';
import type { Logger } from '@banbus/runtime';
import { inNamespace, LineTool, run, runOk } from './tool.js';
import { isV6, type KernelBackend, type WriteFailure } from './types.js';

export interface NftablesBackendOptions {
  table: string;
  netns?: string;
  logger: Logger;
}

type NftElem = string | { prefix?: { addr: string; len: number }; range?: [string, string] };

/** Elements per `add element` statement in a bulk load. */
const ELEMENTS_PER_STATEMENT = 5_000;

export class NftablesBackend implements KernelBackend {
  readonly name = 'nftables';
  readonly disjoint = true;
  private readonly tool: LineTool;
  private errors: { message: string; command?: string }[] = [];

  constructor(private readonly options: NftablesBackendOptions) {
    const [command, args] = inNamespace(options.netns, 'nft', ['-i']);
    const header = `table inet ${options.table} {`;
    this.tool = new LineTool({
      name: 'nft -i',
      command,
      args,
      logger: options.logger,
      // A small, fixed answer that starts with the table line.
      sentinel: `list chain inet ${options.table} input`,
      sentinelStream: 'stdout',
      isSentinel: (line) => line.replace(/^(nft> )+/, '') === header,
      onError: (line) => this.onError(line),
    });
  }

  private nft(args: string[], input?: string) {
    const [command, full] = inNamespace(this.options.netns, 'nft', args);
    return run(command, full, input);
  }

  private set(target: string): string {
    return isV6(target) ? 'v6' : 'v4';
  }

  async init(): Promise<void> {
    const t = this.options.table;
    // Declaring what exists is a no-op, so the sets (and the bans in them) survive a restart; the
    // chains are emptied and get their rules again, so there is always exactly one of each.
    const script = `
table inet ${t} {
  set v4 { type ipv4_addr; flags interval; }
  set v6 { type ipv6_addr; flags interval; }
  chain input { type filter hook input priority filter - 10; policy accept; }
  chain forward { type filter hook forward priority filter - 10; policy accept; }
}
flush chain inet ${t} input
flush chain inet ${t} forward
add rule inet ${t} input ip saddr @v4 drop
add rule inet ${t} input ip6 saddr @v6 drop
add rule inet ${t} forward ip saddr @v4 drop
add rule inet ${t} forward ip6 saddr @v6 drop
`;
    const [command, args] = inNamespace(this.options.netns, 'nft', ['-f', '-']);
    await runOk(command, args, script);
    await this.tool.exec(0, () => '');
  }

  async list(): Promise<Set<string>> {
    const out = new Set<string>();
    for (const set of ['v4', 'v6']) {
      const [command, args] = inNamespace(this.options.netns, 'nft', [
        '-j',
        'list',
        'set',
        'inet',
        this.options.table,
        set,
      ]);
      const json = JSON.parse(await runOk(command, args)) as { nftables: { set?: { elem?: NftElem[] } }[] };
      for (const item of json.nftables) {
        for (const e of item.set?.elem ?? []) out.add(elementText(e));
      }
    }
    return out;
  }

  async write(adds: readonly string[], dels: readonly string[], bulk: boolean): Promise<WriteFailure[]> {
    if (bulk) {
      // One transaction: deletions first, so that a network may replace what it now contains.
      const lines: string[] = [];
      for (const [op, list] of [
        ['delete', dels],
        ['add', adds],
      ] as const) {
        for (const set of ['v4', 'v6']) {
          const mine = list.filter((t) => this.set(t) === set);
          for (let i = 0; i < mine.length; i += ELEMENTS_PER_STATEMENT) {
            const chunk = mine.slice(i, i + ELEMENTS_PER_STATEMENT);
            lines.push(`${op} element inet ${this.options.table} ${set} { ${chunk.join(', ')} }`);
          }
        }
      }
      const r = await this.nft(['-f', '-'], lines.join('\n') + '\n');
      if (r.code === 0) return [];
      // Something in the transaction was refused (and with it all of it): go element by element.
      this.options.logger.warn(
        { error: r.stderr.trim().slice(0, 300) },
        'nft bulk load refused; applying one by one',
      );
    }
    return this.oneByOne(adds, dels);
  }

  private async oneByOne(adds: readonly string[], dels: readonly string[]): Promise<WriteFailure[]> {
    const t = this.options.table;
    const lines = [
      ...dels.map((x) => `delete element inet ${t} ${this.set(x)} { ${x} }`),
      ...adds.map((x) => `add element inet ${t} ${this.set(x)} { ${x} }`),
    ];
    this.errors = [];
    await this.tool.exec(lines.length, (i) => lines[i]!);
    const failures: WriteFailure[] = [];
    for (const e of this.errors.splice(0)) {
      const m = /^(add|delete) element \S+ \S+ \S+ \{ (.+) \}$/.exec(e.command ?? '');
      const op = m?.[1] === 'delete' ? 'del' : 'add';
      // Deleting what is not there is what we wanted anyway.
      if (op === 'del' && /does not exist|No such file/i.test(e.message)) continue;
      failures.push({ target: m?.[2] ?? '?', op, error: e.message });
    }
    return failures;
  }

  /** nft prints "Error: …", then the command, then a line of carets under the culprit. */
  private onError(line: string): void {
    const text = line.replace(/^(nft> )+/, '');
    if (text.startsWith('Error:')) {
      this.errors.push({ message: text.slice(6).trim() });
      return;
    }
    const last = this.errors[this.errors.length - 1];
    if (last && last.command === undefined && /^(add|delete) element /.test(text)) {
      last.command = text.trim();
    } else if (last && last.message === '' && text.trim() !== '') {
      last.message = text.trim(); // "Error: " and its text may come on two reads
    }
  }

  async removeAll(): Promise<void> {
    await this.nft(['delete', 'table', 'inet', this.options.table]);
  }

  async close(): Promise<void> {
    await this.tool.close();
  }
}

function elementText(e: NftElem): string {
  if (typeof e === 'string') return normalizeOr(e);
  if (e.prefix) return normalizeOr(`${e.prefix.addr}/${e.prefix.len}`);
  if (e.range) return `${e.range[0]}-${e.range[1]}`; // not ours (we write no ranges): reconcile deletes it
  return JSON.stringify(e);
}

function normalizeOr(text: string): string {
  try {
    return normalizeTarget(text);
  } catch {
    return text;
  }
}
