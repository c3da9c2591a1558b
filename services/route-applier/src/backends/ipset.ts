// Two ipset sets, `<name>4` and `<name>6` (hash:net, sized for millions). A snapshot is loaded with one
// `ipset restore`; single changes go through one long-lived interactive `ipset -`. The sets only hold the
// bans: the firewall refers to them (e.g. `iptables -I INPUT -m set --match-set banbus4 src -j DROP`).
import { normalizeTarget } from '@banbus/core';
import type { Logger } from '@banbus/runtime';
import { inNamespace, LineTool, run, runLines, runOk } from './tool.js';
import { isV6, type KernelBackend, type WriteFailure } from './types.js';

export interface IpsetBackendOptions {
  name: string;
  maxelem: number;
  netns?: string;
  logger: Logger;
}

export class IpsetBackend implements KernelBackend {
  readonly name = 'ipset';
  readonly disjoint = false;
  readonly set4: string;
  readonly set6: string;
  private readonly tool: LineTool;
  private errors: string[] = [];
  /**
   * Each set's `create` line as `ipset save` printed it at the last list(). ipset restore takes 100k
   * lines more than twice as fast when the input starts with the set's own create line (with -exist a
   * no-op for the identical set): it then knows the set instead of asking the kernel about it per line.
   */
  private headers: string[] = [];

  constructor(private readonly options: IpsetBackendOptions) {
    this.set4 = `${options.name}4`;
    this.set6 = `${options.name}6`;
    const [command, args] = inNamespace(options.netns, 'ipset', ['-exist', '-']);
    // Loopback is never in the set (never-block), so the test always answers "is NOT in set", on stderr
    // and in order with the errors of the lines before it.
    const sentinelAnswer = `127.0.0.1 is NOT in set ${this.set4}.`;
    this.tool = new LineTool({
      name: 'ipset -',
      command,
      args,
      logger: options.logger,
      sentinel: `test ${this.set4} 127.0.0.1`,
      sentinelStream: 'stderr',
      isSentinel: (line) => line.replace(/^(ipset> )+/, '') === sentinelAnswer,
      onError: (line) => {
        const text = line.replace(/^(ipset> )+/, '').trim();
        if (text !== '') this.errors.push(text);
      },
    });
  }

  private ipset(args: string[], input?: string) {
    const [command, full] = inNamespace(this.options.netns, 'ipset', args);
    return run(command, full, input);
  }

  async init(): Promise<void> {
    const size = ['hashsize', '65536', 'maxelem', String(this.options.maxelem)];
    for (const [set, family] of [
      [this.set4, 'inet'],
      [this.set6, 'inet6'],
    ] as const) {
      const [command, args] = inNamespace(this.options.netns, 'ipset', [
        '-exist',
        'create',
        set,
        'hash:net',
        'family',
        family,
        ...size,
      ]);
      await runOk(command, args);
    }
    await this.tool.exec(0, () => '');
  }

  async list(): Promise<Set<string>> {
    const out = new Set<string>();
    const headers: string[] = [];
    for (const set of [this.set4, this.set6]) {
      const [command, args] = inNamespace(this.options.netns, 'ipset', ['save', set]);
      const text = await runOk(command, args);
      const create = text.slice(0, text.indexOf('\n'));
      if (create.startsWith(`create ${set} `)) headers.push(create);
      const prefix = `add ${set} `;
      for (const line of text.split('\n')) {
        if (!line.startsWith(prefix)) continue;
        const entry = line.slice(prefix.length).split(' ')[0]!;
        try {
          out.add(normalizeTarget(entry));
        } catch {
          out.add(entry); // not a target of ours: listed so that a reconcile removes it
        }
      }
    }
    this.headers = headers;
    return out;
  }

  private line(op: 'add' | 'del', t: string): string {
    return `${op} ${isV6(t) ? this.set6 : this.set4} ${t}`;
  }

  private lines(adds: readonly string[], dels: readonly string[]): string[] {
    return [...adds.map((t) => this.line('add', t)), ...dels.map((t) => this.line('del', t))];
  }

  async write(adds: readonly string[], dels: readonly string[], bulk: boolean): Promise<WriteFailure[]> {
    return bulk ? this.restore(adds, dels) : this.interactive(adds, dels);
  }

  private async interactive(adds: readonly string[], dels: readonly string[]): Promise<WriteFailure[]> {
    this.errors = [];
    const lines = this.lines(adds, dels);
    await this.tool.exec(lines.length, (i) => lines[i]!);
    const errors = this.errors.splice(0);
    // ipset does not say which line failed; the message usually names the entry.
    return errors.map((error) => ({
      target: [...adds, ...dels].find((t) => error.includes(t)) ?? '?',
      op: adds.some((t) => error.includes(t)) ? 'add' : 'del',
      error,
    }));
  }

  /** `ipset -exist restore` stops at the first bad line ("Error in line N"): report it, go on after it. */
  private async restore(adds: readonly string[], dels: readonly string[]): Promise<WriteFailure[]> {
    const failures: WriteFailure[] = [];
    const total = adds.length + dels.length;
    // Lines are made as the pipe takes them: adds, then dels, numbered from `from`.
    const entryAt = (i: number): { op: 'add' | 'del'; t: string } =>
      i < adds.length ? { op: 'add', t: adds[i]! } : { op: 'del', t: dels[i - adds.length]! };
    const lineAt = (i: number): string => {
      const { op, t } = entryAt(i);
      return this.line(op, t);
    };
    const [command, args] = inNamespace(this.options.netns, 'ipset', ['-exist', 'restore']);
    let from = 0;
    while (from < total) {
      const start = from;
      const headers = this.headers;
      const r = await runLines(command, args, headers.length + total - start, (i) =>
        i < headers.length ? headers[i]! : lineAt(start + i - headers.length),
      );
      if (r.code === 0) break;
      const m = /Error in line (\d+)/.exec(r.stderr);
      const line = m ? Number(m[1]) - 1 : -1;
      if (m && line < headers.length) {
        // The set changed since we listed it (recreated with other sizes): go on without the headers.
        this.headers = [];
        continue;
      }
      const index = m ? start + line - headers.length : -1;
      if (index < start || index >= total) {
        failures.push({ target: '?', op: 'add', error: r.stderr.trim().slice(0, 500) });
        break;
      }
      const { op, t } = entryAt(index);
      failures.push({ target: t, op, error: r.stderr.trim().slice(0, 500) });
      from = index + 1;
    }
    return failures;
  }

  async removeAll(): Promise<void> {
    for (const set of [this.set4, this.set6]) {
      await this.ipset(['flush', set]);
      // Destroying fails while a firewall rule refers to the set: then it stays, empty.
      await this.ipset(['destroy', set]);
    }
  }

  async close(): Promise<void> {
    await this.tool.close();
  }
}
