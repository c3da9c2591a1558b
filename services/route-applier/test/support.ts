// Test support for the route-applier: network namespaces as hosts (real kernel, no effect on the
// machine), an independent read of what the kernel holds, and a fake aggregator whose answers tests
// control (empty or truncated snapshots, 410, down).
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import {
  normalizeTarget,
  parseEnv,
  RouteApplierEnvSchema,
  type DecisionChange,
  type RouteApplierEnv,
} from '@banbus/core';

/** Every namespace the tests make starts with this; `cleanupNamespaces` removes leftovers of killed runs. */
export const NETNS_PREFIX = 'bbt-ra-';

export function haveTools(): boolean {
  const ok = (cmd: string) => spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;
  return process.getuid?.() === 0 && ok('ip') && ok('ipset') && ok('nft');
}

export interface Netns {
  name: string;
  ip(...args: string[]): string;
  exec(command: string, ...args: string[]): string;
  remove(): void;
}

export function createNetns(): Netns {
  const name = `${NETNS_PREFIX}${randomBytes(4).toString('hex')}`;
  execFileSync('ip', ['netns', 'add', name]);
  execFileSync('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
  return {
    name,
    ip: (...args) => execFileSync('ip', ['-n', name, ...args], { encoding: 'utf8', maxBuffer: 2 ** 28 }),
    exec: (command, ...args) =>
      execFileSync('ip', ['netns', 'exec', name, command, ...args], { encoding: 'utf8', maxBuffer: 2 ** 28 }),
    remove: () => void spawnSync('ip', ['netns', 'del', name]),
  };
}

/** Our routes in the namespace (both families), read with ip itself. */
export function routesOf(ns: Netns, proto = 201): Map<string, string> {
  const out = new Map<string, string>();
  for (const family of ['-4', '-6']) {
    const routes = JSON.parse(ns.ip('-j', family, 'route', 'show', 'proto', String(proto)) || '[]') as {
      dst: string;
      type?: string;
    }[];
    for (const r of routes) out.set(normalizeTarget(r.dst), r.type ?? 'unicast');
  }
  return out;
}

export function ipsetOf(ns: Netns, name = 'banbus'): Set<string> {
  const out = new Set<string>();
  for (const set of [`${name}4`, `${name}6`]) {
    for (const line of ns.exec('ipset', 'list', set).split('\n')) {
      if (/^[0-9a-f:.]+(\/\d+)?$/i.test(line.trim())) out.add(normalizeTarget(line.trim()));
    }
  }
  return out;
}

export function nftOf(ns: Netns, table = 'banbus'): Set<string> {
  const out = new Set<string>();
  for (const set of ['v4', 'v6']) {
    const json = JSON.parse(ns.exec('nft', '-j', 'list', 'set', 'inet', table, set)) as {
      nftables: { set?: { elem?: (string | { prefix: { addr: string; len: number } })[] } }[];
    };
    for (const item of json.nftables)
      for (const e of item.set?.elem ?? [])
        out.add(normalizeTarget(typeof e === 'string' ? e : `${e.prefix.addr}/${e.prefix.len}`));
  }
  return out;
}

export function sameSet(a: Iterable<string>, b: Iterable<string>): boolean {
  const x = new Set(a);
  const y = new Set(b);
  if (x.size !== y.size) return false;
  for (const v of x) if (!y.has(v)) return false;
  return true;
}

/** What differs, for assertion messages. */
export function setDiff(actual: Iterable<string>, expected: Iterable<string>): string {
  const a = new Set(actual);
  const e = new Set(expected);
  const missing = [...e].filter((t) => !a.has(t));
  const extra = [...a].filter((t) => !e.has(t));
  return `missing ${missing.length} (${missing.slice(0, 5).join(' ')}), extra ${extra.length} (${extra.slice(0, 5).join(' ')})`;
}

/** Config for an applier in tests: any free port, fast retries, our namespace and aggregator. */
export function applierConfig(env: Record<string, string>): RouteApplierEnv {
  return parseEnv(RouteApplierEnvSchema, {
    LOG_LEVEL: 'silent',
    APPLIER_PORT: '0',
    BANBUS_LISTEN: '127.0.0.1',
    APPLIER_SNAPSHOT_RETRY_MIN: '0.05',
    APPLIER_SNAPSHOT_RETRY_MAX: '0.5',
    APPLIER_CHECK_INTERVAL: '0',
    ...env,
  });
}

/**
 * A stand-in for the aggregator's GET /v1/decisions and ?since=, over HTTP, from an in-memory log.
 * `mode` makes it answer like a broken one.
 */
export class FakeAggregator {
  log: DecisionChange[] = [];
  trimmedTo = 0;
  mode: 'ok' | 'down' | 'empty' | 'truncated' = 'ok';
  snapshots = 0;
  deltas = 0;
  private server: Server | undefined;
  url = '';

  get seq(): number {
    return this.log.length;
  }

  push(op: 'add' | 'del', target: string): DecisionChange {
    const change: DecisionChange = { seq: this.log.length + 1, op, target: normalizeTarget(target) };
    this.log.push(change);
    return change;
  }

  set(): Set<string> {
    const s = new Set<string>();
    for (const c of this.log) {
      if (c.op === 'add') s.add(c.target);
      else s.delete(c.target);
    }
    return s;
  }

  async start(): Promise<this> {
    this.server = createServer((req, res) => {
      const url = new URL(req.url ?? '/', 'http://x');
      if (url.pathname !== '/v1/decisions') {
        res.writeHead(404).end();
        return;
      }
      if (this.mode === 'down') {
        res.writeHead(503, { 'retry-after': '1' }).end('{"error":"down"}');
        return;
      }
      const since = url.searchParams.get('since');
      if (since !== null) {
        this.deltas++;
        const n = Number(since);
        if (n < this.trimmedTo || n > this.seq) {
          res.writeHead(410).end('{"error":"gone"}');
          return;
        }
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ seq: this.seq, changes: this.log.slice(n) }));
        return;
      }
      this.snapshots++;
      const targets = this.mode === 'empty' ? [] : [...this.set()];
      const body = JSON.stringify({
        seq: this.seq,
        decisions: targets.map((target) => ({ target, expires_at: null, reason: null })),
      });
      res.writeHead(200, { 'content-type': 'application/json', 'x-banbus-seq': String(this.seq) });
      if (this.mode === 'truncated') {
        // The connection dies half-way through the body, as when the aggregator crashes mid-stream.
        res.write(body.slice(0, Math.floor(body.length / 2)));
        setImmediate(() => res.destroy());
        return;
      }
      res.end(body);
    });
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return this;
  }

  async stop(): Promise<void> {
    await new Promise<void>((resolve) => {
      this.server?.close(() => resolve());
      this.server?.closeAllConnections();
    });
  }
}
