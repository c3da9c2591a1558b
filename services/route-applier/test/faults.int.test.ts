// Faults: the applier killed mid-stream and restarted, duplicated and reordered messages, the aggregator
// down at start, empty and truncated snapshots while the host holds bans. The kernel is a network
// namespace; "converged" means the routes of our proto equal the decision set exactly.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Bus } from '@banbus/bus';
import { targetFromDb, type DecisionChange } from '@banbus/core';
import { createLogger, createRegistry } from '@banbus/runtime';
import { amqpTestUrl, deleteNamespace, testNamespace, waitFor } from '../../../test/harness/index.js';
import { freePort } from '../../../test/bench/lib.js';
import { createWorld, report, type World } from '../../aggregator/test/setup.js';
import { startRouteApplier, type RouteApplierRunning } from '../src/index.js';
import {
  applierConfig,
  createNetns,
  FakeAggregator,
  haveTools,
  routesOf,
  sameSet,
  setDiff,
  type Netns,
} from './support.js';

const ROOT = fileURLToPath(new URL('../../..', import.meta.url));
const logger = createLogger({ level: process.env.TEST_LOG_LEVEL ?? 'silent' });
const skip = !haveTools() && 'needs root, ip, ipset and nft';

/** `banbus run route-applier` as its own process, the way systemd starts it. */
function spawnApplier(env: Record<string, string>): ChildProcess {
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', '--conditions=banbus-source', 'packages/cli/src/bin.ts', 'run', 'route-applier'],
    { cwd: ROOT, env: { ...process.env, LOG_LEVEL: 'warn', ...env }, stdio: ['ignore', 'ignore', 'inherit'] },
  );
  return child;
}

async function readyz(port: number): Promise<number | undefined> {
  const res = await fetch(`http://127.0.0.1:${port}/readyz`).catch(() => undefined);
  return res?.status;
}

describe('route-applier faults, against the real pipeline', { skip }, () => {
  let world: World;
  let ns: Netns;
  const children: ChildProcess[] = [];

  before(async () => {
    world = await createWorld();
    ns = createNetns();
  });
  after(async () => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    ns?.remove();
    await world?.close();
    if (world) await deleteNamespace(world.amqpUrl, world.namespace, [`${world.namespace}.applier.killed`]);
  });

  test('killed (SIGKILL) mid-stream while bans keep coming, restarted: the kernel equals the decisions', async () => {
    const agg = await world.startAggregator();
    await agg.follower.whenLoaded();
    const port = await freePort();
    const env = {
      AMQP_URL: world.amqpUrl,
      BANBUS_NAMESPACE: world.namespace,
      BANBUS_URL: agg.url,
      BANBUS_TOKEN: world.tokens.read,
      APPLIER_HOST: 'killed',
      APPLIER_NETNS: ns.name,
      APPLIER_PORT: String(port),
      BANBUS_LISTEN: '127.0.0.1',
      APPLIER_SNAPSHOT_RETRY_MIN: '0.1',
      APPLIER_SNAPSHOT_RETRY_MAX: '1',
    };
    let child = spawnApplier(env);
    children.push(child);
    await waitFor(async () => (await readyz(port)) === 200, {
      timeoutMs: 60_000,
      what: 'the applier process',
    });

    // Bans (and some lifts) keep coming from a loop until told to stop.
    let n = 0;
    let streaming = true;
    const sent: string[] = [];
    const stream = (async () => {
      while (streaming) {
        const batch = [];
        for (let i = 0; i < 20; i++) {
          n++;
          const target = `198.18.${Math.floor(n / 250)}.${(n % 250) + 1}`;
          sent.push(target);
          batch.push(report({ target }));
          if (n % 7 === 0) batch.push(report({ target: sent[n - 5]!, action: 'unban', origin: 'manual' }));
        }
        await world.bus.publishReports(batch);
        // Paces the stream of bans that keeps coming while the applier is killed; nothing waits on it.
        await new Promise((r) => setTimeout(r, 10));
      }
    })();

    await waitFor(() => routesOf(ns).size >= 300, { timeoutMs: 30_000, what: 'routes arriving' });
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    const atKill = routesOf(ns).size;
    const sentAtKill = n;
    // Bans go on while the host is down; its queue keeps them.
    await waitFor(() => n > sentAtKill + 500, {
      timeoutMs: 60_000,
      what: 'more bans while the applier is down',
    });
    child = spawnApplier(env);
    children.push(child);
    await waitFor(async () => (await readyz(port)) === 200, {
      timeoutMs: 60_000,
      what: 'the restarted applier',
    });
    await waitFor(() => routesOf(ns).size > atKill, { what: 'new routes after the restart' });
    streaming = false;
    await stream;
    const last = await world.publish([report({ target: '198.19.0.1' })]);
    assert.equal(last.op, 'add');

    const decisions = async () => {
      const { rows } = await world.pool.query<{ t: string }>('SELECT target::text AS t FROM decisions');
      return new Set(rows.map((r) => targetFromDb(r.t)));
    };
    let expected = new Set<string>();
    await waitFor(
      async () => {
        expected = await decisions();
        return sameSet(routesOf(ns).keys(), expected);
      },
      { timeoutMs: 30_000, what: 'the kernel to equal the decisions' },
    ).catch((err: Error) => {
      throw new Error(`${err.message}: ${setDiff(routesOf(ns).keys(), expected)}`);
    });
    assert.ok(expected.size > 1000, `${expected.size} decisions`);
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    await exited;
    // A clean stop leaves the bans enforced.
    assert.ok(sameSet(routesOf(ns).keys(), expected));
  });
});

describe('route-applier faults, against a fake aggregator', { skip }, () => {
  let amqpUrl: string;
  let namespace: string;
  let publisher: Bus;
  const queues: string[] = [];
  const cleanup: (() => Promise<void> | void)[] = [];

  before(async () => {
    amqpUrl = await amqpTestUrl();
    namespace = testNamespace();
    publisher = await Bus.connect({ url: amqpUrl, namespace, logger, registry: createRegistry(false) });
  });
  after(async () => {
    for (const c of cleanup.reverse()) await c();
    await publisher?.close();
    if (amqpUrl) await deleteNamespace(amqpUrl, namespace, queues);
  });

  async function setup(
    host: string,
  ): Promise<{ ns: Netns; fake: FakeAggregator; start(): Promise<RouteApplierRunning & { bus: Bus }> }> {
    const ns = createNetns();
    const fake = await new FakeAggregator().start();
    cleanup.push(
      () => ns.remove(),
      () => fake.stop(),
    );
    return {
      ns,
      fake,
      async start() {
        const bus = await Bus.connect({ url: amqpUrl, namespace, logger, registry: createRegistry(false) });
        const config = applierConfig({
          AMQP_URL: amqpUrl,
          BANBUS_NAMESPACE: namespace,
          BANBUS_URL: fake.url,
          APPLIER_HOST: host,
          APPLIER_NETNS: ns.name,
        });
        const applier = await startRouteApplier({ config, logger, registry: createRegistry(false), bus });
        queues.push(applier.queue);
        cleanup.push(async () => {
          await applier.stop();
          await bus.close();
        });
        return Object.assign(applier, { bus });
      },
    };
  }

  test('duplicated and reordered messages give the same kernel set', async () => {
    const { ns, fake, start } = await setup('shuffled');
    for (let i = 1; i <= 100; i++) fake.push('add', `10.1.0.${i}`);
    const applier = await start();
    await waitFor(() => applier.applier.ready, { what: 'the snapshot' });

    const changes: DecisionChange[] = [];
    for (let i = 1; i <= 200; i++) {
      changes.push(
        fake.push(i % 4 === 0 ? 'del' : 'add', i % 4 === 0 ? `10.1.0.${i / 4}` : `10.2.${i >> 8}.${i & 255}`),
      );
    }
    // Messages of 1..10 changes, each sent twice, in an order that runs backwards in places.
    const messages: DecisionChange[][] = [];
    for (let i = 0; i < changes.length;) {
      const size = 1 + (i % 10);
      messages.push(changes.slice(i, i + size));
      i += size;
    }
    const order = messages.flatMap((m, i) => (i % 3 === 1 ? [messages[i + 1] ?? m, m, m] : [m]));
    for (const m of [...order, ...messages.slice(0, 5)]) {
      await publisher.publish(publisher.topology.decisionsExchange, '', [m.length === 1 ? m[0] : m]);
    }
    await waitFor(() => applier.applier.seq === fake.seq, { what: 'every seq applied' });
    assert.ok(sameSet(routesOf(ns).keys(), fake.set()), setDiff(routesOf(ns).keys(), fake.set()));
    // More duplicates after the fact change nothing.
    const skipped = async () => {
      const text = await fetch(`http://127.0.0.1:${applier.port}/metrics`).then((r) => r.text());
      return Number(/^banbus_applier_skipped_total (\d+)/m.exec(text)?.[1] ?? 0);
    };
    const before = await skipped();
    await publisher.publish(publisher.topology.decisionsExchange, '', [changes.slice(0, 50)]);
    await waitFor(async () => (await skipped()) >= before + 50, { what: 'the late duplicates skipped' });
    assert.ok(sameSet(routesOf(ns).keys(), fake.set()));
  });

  test('after a lost broker connection, changes the queue no longer holds are caught up from a delta', async () => {
    const { ns, fake, start } = await setup('reconnect');
    for (let i = 1; i <= 20; i++) fake.push('add', `10.5.0.${i}`);
    const applier = await start();
    await waitFor(() => applier.applier.ready, { what: 'the snapshot' });
    const deltas = applier.applier.deltas;
    // The connection drops (as when the broker restarts). Decision messages are transient, so what the
    // broker held for this host is gone: here the changes below never reach the queue at all, and no
    // later change comes to show the gap.
    const reconnected = new Promise<void>((resolve) => applier.bus.on('connected', resolve));
    const model = applier.bus.currentModel() as unknown as {
      connection: { stream: { destroy(err: Error): void } };
    };
    model.connection.stream.destroy(new Error('connection reset (test)'));
    fake.push('add', '10.5.1.1');
    fake.push('del', '10.5.0.1');
    await reconnected;
    await waitFor(() => applier.applier.seq === fake.seq, { what: 'the delta after the reconnect' });
    assert.ok(applier.applier.deltas > deltas);
    assert.ok(sameSet(routesOf(ns).keys(), fake.set()), setDiff(routesOf(ns).keys(), fake.set()));
  });

  test('aggregator down at start: retries while the host keeps its bans, then converges', async () => {
    const { ns, fake, start } = await setup('aggdown');
    for (let i = 1; i <= 50; i++) ns.ip('route', 'add', 'blackhole', `10.3.0.${i}`, 'proto', '201');
    for (let i = 1; i <= 40; i++) fake.push('add', `10.3.0.${i + 10}`);
    fake.mode = 'down';
    const applier = await start();
    await waitFor(() => fake.snapshots === 0 && applier.applier.lastSnapshotError !== undefined, {
      what: 'a failed attempt',
    });
    await waitFor(async () => (await readyz(applier.port)) === 503, { what: 'not ready' });
    const held = routesOf(ns);
    assert.equal(held.size, 50, 'nothing removed while no snapshot is usable');
    const metrics = await fetch(`http://127.0.0.1:${applier.port}/metrics`).then((r) => r.text());
    assert.match(metrics, /banbus_applier_snapshots_total\{result="unavailable"\} [1-9]/);
    fake.mode = 'ok';
    await waitFor(() => applier.applier.ready, { what: 'the snapshot after the aggregator came back' });
    assert.ok(sameSet(routesOf(ns).keys(), fake.set()), setDiff(routesOf(ns).keys(), fake.set()));
    assert.equal(await readyz(applier.port), 200);
  });

  test('an empty or truncated snapshot while the host holds bans wipes nothing', async () => {
    const { ns, fake, start } = await setup('guarded');
    for (let i = 1; i <= 300; i++)
      ns.ip('route', 'add', 'blackhole', `10.4.${i >> 8}.${i & 255}`, 'proto', '201');
    for (let i = 1; i <= 300; i++) fake.push('add', `10.4.${i >> 8}.${i & 255}`);
    fake.push('add', '10.4.9.9');
    fake.mode = 'empty';
    const applier = await start();
    const metrics = () => fetch(`http://127.0.0.1:${applier.port}/metrics`).then((r) => r.text());
    await waitFor(
      async () => /banbus_applier_snapshots_total\{result="suspicious"\} [2-9]/.test(await metrics()),
      {
        what: 'refused empty snapshots',
      },
    );
    assert.equal(routesOf(ns).size, 300);
    assert.match(applier.applier.lastSnapshotError ?? '', /empty while this host holds 300/);

    fake.mode = 'truncated';
    await waitFor(
      async () => /banbus_applier_snapshots_total\{result="truncated"\} [1-9]/.test(await metrics()),
      {
        what: 'refused truncated snapshots',
      },
    );
    assert.equal(routesOf(ns).size, 300);
    assert.equal(applier.applier.ready, false);

    fake.mode = 'ok';
    await waitFor(() => applier.applier.ready, { what: 'a good snapshot' });
    assert.ok(sameSet(routesOf(ns).keys(), fake.set()));
    assert.equal(routesOf(ns).size, 301);
  });
});
