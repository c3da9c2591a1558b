// Stops the shared broker (rabbitmqctl stop_app) and starts it again: runs alone, after the parallel tests.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { once } from 'node:events';
import { promisify } from 'node:util';
import { z } from 'zod';
import { createLogger, createRegistry, type Registry } from '@banbus/runtime';
import { amqpTestUrl, deleteNamespace, testNamespace } from '../../../test/harness/amqp.js';
import { Bus, BusUnavailableError, declareQuorumQueue } from '../src/index.js';

const run = promisify(execFile);
const Item = z.object({ n: z.number().int() });

let brokerStopped = false;

async function rabbitmqctl(command: 'stop_app' | 'start_app'): Promise<void> {
  await run('rabbitmqctl', [command], { timeout: 60_000 });
  brokerStopped = command === 'stop_app';
}

/** Resolves on the bus event, or fails after timeoutMs. */
function nextEvent(bus: Bus, event: 'connected' | 'disconnected', timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      bus.off(event, onEvent);
      reject(new Error(`no '${event}' event within ${timeoutMs} ms`));
    }, timeoutMs);
    const onEvent = (): void => {
      clearTimeout(timer);
      resolve();
    };
    bus.once(event, onEvent);
  });
}

describe('Bus across a broker restart', { timeout: 120_000 }, () => {
  let url: string;
  let namespace: string;
  let bus: Bus;
  let registry: Registry;
  let queue: string;
  const received: number[] = [];
  const arrivals = new (class extends EventTarget {})();

  before(async () => {
    url = await amqpTestUrl();
    namespace = testNamespace();
    queue = `${namespace}.test-restart`;
    registry = createRegistry(false);
    bus = await Bus.connect({
      url,
      namespace,
      logger: createLogger({ level: process.env.LOG_LEVEL ?? 'silent' }),
      registry,
      maxReconnectDelayMs: 1_000,
    });
    await bus.consume({
      queue,
      declare: (ch) => declareQuorumQueue(ch, bus.topology, queue),
      schema: Item,
      prefetch: 10,
      batchSize: 10,
      maxRetries: 3,
      handler: async (deliveries) => {
        for (const d of deliveries) received.push(d.body.n);
        arrivals.dispatchEvent(new Event('message'));
      },
    });
  });

  after(async () => {
    // ALWAYS leave the shared broker running, whatever happened above.
    if (brokerStopped) await rabbitmqctl('start_app');
    await bus?.close();
    if (url && namespace) await deleteNamespace(url, namespace, [queue]);
  });

  async function receive(n: number): Promise<void> {
    while (!received.includes(n)) await once(arrivals, 'message');
  }

  test('rejects publishes fast while the broker is down, then reconnects and consumes again', async () => {
    await bus.publish('', queue, [{ n: 1 }]);
    await receive(1);

    const disconnected = nextEvent(bus, 'disconnected', 60_000);
    try {
      await rabbitmqctl('stop_app');
      await disconnected;
      assert.equal(bus.connected, false);
      assert.match(await registry.getSingleMetricAsString('banbus_bus_connected'), /banbus_bus_connected 0/);

      const started = performance.now();
      await assert.rejects(bus.publish('', queue, [{ n: 2 }]), BusUnavailableError);
      const elapsed = performance.now() - started;
      assert.ok(elapsed < 500, `publish took ${elapsed} ms to reject`);
    } finally {
      const connected = nextEvent(bus, 'connected', 60_000);
      await rabbitmqctl('start_app');
      await connected;
    }

    assert.equal(bus.connected, true);
    await bus.publish('', queue, [{ n: 3 }]);
    await receive(3);
    assert.ok(!received.includes(2));
    assert.match(await registry.getSingleMetricAsString('banbus_bus_connected'), /banbus_bus_connected 1/);
  });
});
