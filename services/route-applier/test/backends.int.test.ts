// Each kernel backend in a network namespace of its own (a real kernel, no effect on the machine):
// a snapshot of a few thousand decisions, then live adds and deletes from the decision stream, with
// everything that is not ours left alone and never-block addresses refused.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { Bus } from '@banbus/bus';
import type { ApplierBackendName, DecisionChange } from '@banbus/core';
import { createLogger, createRegistry } from '@banbus/runtime';
import { amqpTestUrl, deleteNamespace, testNamespace, waitFor } from '../../../test/harness/index.js';
import { maximalTargets, startRouteApplier, type RouteApplierRunning } from '../src/index.js';
import { parseTarget } from '@banbus/core';
import {
  applierConfig,
  createNetns,
  FakeAggregator,
  haveTools,
  ipsetOf,
  nftOf,
  routesOf,
  sameSet,
  setDiff,
  type Netns,
} from './support.js';

const logger = createLogger({ level: process.env.TEST_LOG_LEVEL ?? 'silent' });

/** A few thousand decisions: IPv4 and IPv6 hosts, networks, one address inside a network. */
function fillDecisions(fake: FakeAggregator): void {
  for (let i = 0; i < 2500; i++) fake.push('add', `10.${(i >> 8) & 255}.${i & 255}.${(i % 200) + 1}`);
  for (let i = 0; i < 400; i++) fake.push('add', `2001:db8:${i.toString(16)}::1`);
  for (let i = 0; i < 100; i++) fake.push('add', `172.16.${i}.0/24`);
  fake.push('add', '172.16.5.7'); // inside 172.16.5.0/24
  fake.push('add', '2001:db8:ffff::/48');
  // Never-block: the namespace's own address, a network holding it, an admin network, loopback.
  for (const t of ['10.250.0.1', '10.250.0.0/24', '192.168.77.5', '127.0.0.1']) fake.push('add', t);
}
const REFUSED = ['10.250.0.1', '10.250.0.0/24', '192.168.77.5', '127.0.0.1'];

function kernelOf(backend: ApplierBackendName, ns: Netns): Set<string> {
  if (backend === 'route') return new Set(routesOf(ns).keys());
  if (backend === 'ipset') return ipsetOf(ns);
  return nftOf(ns);
}

function expectedFor(backend: ApplierBackendName, decisions: Set<string>): Set<string> {
  const allowed = [...decisions].filter((t) => !REFUSED.includes(t));
  if (backend !== 'nftables') return new Set(allowed);
  return new Set(maximalTargets(allowed.map(parseTarget)).map((t) => t.text));
}

/** Something of someone else's in the namespace, and how to check it is still there. */
function addForeign(backend: ApplierBackendName, ns: Netns): () => void {
  if (backend === 'route') {
    ns.ip('route', 'add', 'blackhole', '10.77.0.0/16');
    ns.ip('route', 'add', 'unreachable', '10.78.0.1', 'proto', 'static');
    ns.ip('-6', 'route', 'add', 'blackhole', '2001:db8:77::/48', 'proto', '202');
    return () => {
      const all = ns.ip('route', 'show') + ns.ip('-6', 'route', 'show');
      for (const r of ['blackhole 10.77.0.0/16', 'unreachable 10.78.0.1', 'blackhole 2001:db8:77::/48'])
        assert.ok(all.includes(r), `${r} is still there:\n${all}`);
    };
  }
  if (backend === 'ipset') {
    ns.exec('ipset', 'create', 'other', 'hash:ip');
    ns.exec('ipset', 'add', 'other', '10.0.0.1');
    return () => assert.match(ns.exec('ipset', 'list', 'other'), /^10\.0\.0\.1$/m);
  }
  ns.exec(
    'nft',
    'add table inet other; add set inet other s { type ipv4_addr; }; add element inet other s { 10.0.0.1 }',
  );
  return () => assert.match(ns.exec('nft', 'list', 'table', 'inet', 'other'), /10\.0\.0\.1/);
}

describe(
  'route-applier backends in network namespaces',
  { skip: !haveTools() && 'needs root, ip, ipset and nft' },
  () => {
    let amqpUrl: string;
    let namespace: string;
    let publisher: Bus;
    const queues: string[] = [];

    before(async () => {
      amqpUrl = await amqpTestUrl();
      namespace = testNamespace();
      publisher = await Bus.connect({ url: amqpUrl, namespace, logger, registry: createRegistry(false) });
    });
    after(async () => {
      await publisher?.close();
      if (amqpUrl) await deleteNamespace(amqpUrl, namespace, queues);
    });

    for (const backend of ['route', 'ipset', 'nftables'] as const) {
      test(`${backend}: snapshot, live adds and deletes, nothing else touched, never-block refused`, async () => {
        const ns = createNetns();
        const fake = await new FakeAggregator().start();
        const running: { stop(): Promise<void> }[] = [];
        try {
          ns.ip('addr', 'add', '10.250.0.1/32', 'dev', 'lo');
          const foreignIntact = addForeign(backend, ns);
          fillDecisions(fake);

          const start = async (extra: Record<string, string> = {}): Promise<RouteApplierRunning> => {
            const bus = await Bus.connect({
              url: amqpUrl,
              namespace,
              logger,
              registry: createRegistry(false),
            });
            const config = applierConfig({
              AMQP_URL: amqpUrl,
              BANBUS_NAMESPACE: namespace,
              BANBUS_URL: fake.url,
              APPLIER_HOST: `h-${backend}`,
              APPLIER_BACKEND: backend,
              APPLIER_NETNS: ns.name,
              APPLIER_NEVER_BLOCK: '192.168.77.0/24',
              ...extra,
            });
            const applier = await startRouteApplier({ config, logger, registry: createRegistry(false), bus });
            queues.push(applier.queue);
            const stop = async () => {
              await applier.stop();
              await bus.close();
            };
            running.push({ stop });
            return Object.assign(Object.create(applier) as RouteApplierRunning, { stop });
          };

          const applier = await start();
          await waitFor(() => applier.applier.ready, { what: 'the first snapshot', timeoutMs: 30_000 });
          let expected = expectedFor(backend, fake.set());
          let kernel = kernelOf(backend, ns);
          assert.ok(sameSet(kernel, expected), `after the snapshot: ${setDiff(kernel, expected)}`);
          assert.ok(expected.size > 2900, `${expected.size} entries`);
          if (backend === 'route') {
            assert.ok([...routesOf(ns).values()].every((type) => type === 'blackhole'));
          }
          assert.equal(applier.applier.refusedCount, REFUSED.length);

          // Live: new bans (one of them a network swallowing held addresses), lifted bans, never-block.
          const live: DecisionChange[] = [
            fake.push('add', '198.51.100.7'),
            fake.push('add', '2001:db8:beef::9'),
            fake.push('add', '10.0.0.0/16'),
            fake.push('del', '10.0.1.2'),
            fake.push('del', '2001:db8:5::1'),
            fake.push('del', '172.16.5.0/24'),
            fake.push('add', '192.168.77.0/25'),
          ];
          await publisher.publishDecisionChanges(live.slice(0, 3));
          await publisher.publishDecisionChanges(live.slice(3));
          expected = expectedFor(backend, fake.set());
          expected.delete('192.168.77.0/25');
          await waitFor(() => applier.applier.seq === fake.seq, { what: 'the live changes' });
          kernel = kernelOf(backend, ns);
          assert.ok(sameSet(kernel, expected), `after the live changes: ${setDiff(kernel, expected)}`);
          assert.ok(kernel.has('198.51.100.7') && kernel.has('2001:db8:beef::9'));
          assert.ok(!kernel.has('172.16.5.0/24'));
          assert.equal(kernel.has('172.16.5.7'), true, 'held on its own again once its network went');
          foreignIntact();

          // Stopping leaves the bans in place (the default); with APPLIER_REMOVE_ON_SHUTDOWN they go.
          await applier.stop();
          kernel = kernelOf(backend, ns);
          assert.ok(sameSet(kernel, expected), `after a stop: ${setDiff(kernel, expected)}`);
          const again = await start({ APPLIER_REMOVE_ON_SHUTDOWN: 'true' });
          await waitFor(() => again.applier.ready, { what: 'the second start' });
          await again.stop();
          if (backend === 'route') assert.equal(routesOf(ns).size, 0);
          if (backend === 'ipset') assert.doesNotMatch(ns.exec('ipset', 'list', '-n'), /banbus/);
          if (backend === 'nftables') assert.doesNotMatch(ns.exec('nft', 'list', 'tables'), /banbus/);
          foreignIntact();
        } finally {
          for (const r of running.reverse()) await r.stop().catch(() => undefined);
          await fake.stop();
          ns.remove();
        }
      });
    }
  },
);
