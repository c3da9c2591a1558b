import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import type { Report } from '@banbus/core';
import { waitFor } from '../../../test/harness/wait.js';
import { CoalescingPublisher, ConfirmTimeoutError } from '../src/coalesce.js';

function report(n: number): Report {
  return {
    id: randomUUID(),
    action: 'ban',
    target: `192.0.2.${n}`,
    host: 'web1',
    origin: 'fail2ban',
    time: new Date().toISOString(),
  };
}

class RecordingBus {
  connected = true;
  calls: Report[][] = [];
  fail: Error | null = null;
  private release: (() => void)[] = [];
  async publishReports(reports: readonly Report[]): Promise<void> {
    this.calls.push([...reports]);
    // Resolves only when the test says the broker confirmed.
    await new Promise<void>((resolve) => this.release.push(resolve));
    if (this.fail) throw this.fail;
  }
  confirmAll(): void {
    for (const r of this.release.splice(0)) r();
  }
}

test('requests of one event-loop turn go out as one publish, each answered only after the confirm', async () => {
  const bus = new RecordingBus();
  const publisher = new CoalescingPublisher(bus);
  const a = [report(1)];
  const b = [report(2), report(3)];
  const c = [report(4)];
  let settled = 0;
  const all = [a, b, c].map((r) => publisher.publishReports(r).then(() => settled++));
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(bus.calls, [[...a, ...b, ...c]], 'one publish, reports in request order');
  assert.equal(settled, 0, 'nobody is answered before the broker confirmed');
  bus.confirmAll();
  await Promise.all(all);
  assert.equal(settled, 3);
});

test('a failed publish fails every request of its group', async () => {
  const bus = new RecordingBus();
  bus.fail = new Error('broker away');
  const publisher = new CoalescingPublisher(bus);
  const results = [publisher.publishReports([report(1)]), publisher.publishReports([report(2)])].map((p) =>
    p.then(
      () => 'ok',
      (err: Error) => err.message,
    ),
  );
  await new Promise((r) => setImmediate(r));
  bus.confirmAll();
  assert.deepEqual(await Promise.all(results), ['broker away', 'broker away']);
});

test('groups stay under the size bound without splitting a request', async () => {
  const bus = new RecordingBus();
  const publisher = new CoalescingPublisher(bus, { maxReports: 3 });
  const requests = [
    [report(1), report(2)],
    [report(3), report(4)],
    [report(5)],
    [report(6), report(7), report(8), report(9)],
  ];
  const all = requests.map((r) => publisher.publishReports(r));
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(
    bus.calls.map((c) => c.map((r) => r.target.split('.')[3])),
    [
      ['1', '2'],
      ['3', '4', '5'],
      ['6', '7', '8', '9'],
    ],
  );
  bus.confirmAll();
  await Promise.all(all);
});

test('a later turn starts a new group', async () => {
  const bus = new RecordingBus();
  const publisher = new CoalescingPublisher(bus);
  const first = publisher.publishReports([report(1)]);
  await new Promise((r) => setImmediate(r));
  const second = publisher.publishReports([report(2)]);
  await new Promise((r) => setImmediate(r));
  assert.equal(bus.calls.length, 2);
  bus.confirmAll();
  await Promise.all([first, second]);
});

test('while groups wait for their confirm, new requests gather into the next group', async () => {
  const bus = new RecordingBus();
  const publisher = new CoalescingPublisher(bus, { maxInFlight: 1 });
  const first = publisher.publishReports([report(1)]);
  await new Promise((r) => setImmediate(r));
  const later = [2, 3, 4].map(async (n) => {
    await new Promise((r) => setImmediate(r));
    return publisher.publishReports([report(n)]);
  });
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
  assert.equal(bus.calls.length, 1, 'nothing more goes out while the first group waits');
  bus.confirmAll();
  await first;
  await new Promise((r) => setImmediate(r));
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(
    bus.calls.map((c) => c.map((r) => r.target.split('.')[3])),
    [['1'], ['2', '3', '4']],
  );
  bus.confirmAll();
  await Promise.all(later);
});

test('a group without a confirm in time fails its requests, and frees its slot for the next group', async () => {
  const bus = new RecordingBus();
  const publisher = new CoalescingPublisher(bus, { maxInFlight: 1, timeoutMs: 50 });
  const hung = publisher.publishReports([report(1)]).catch((err: unknown) => err);
  await new Promise((r) => setImmediate(r));
  const next = publisher.publishReports([report(2)]);
  const err = await hung;
  assert.ok(err instanceof ConfirmTimeoutError, 'the hung group is answered with the timeout');
  // The next group goes out once the hung one gave up its slot, and is answered by its own confirm.
  await waitFor(() => bus.calls.length === 2, { what: 'the next group published' });
  bus.confirmAll();
  await next;
});
