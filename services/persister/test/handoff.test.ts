import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { Report } from '@banbus/core';
import { createLogger } from '@banbus/runtime';
import { LocalHandoff, type HandoffOutcome } from '../src/handoff.js';
import { waitFor } from '../../../test/harness/index.js';

// The local handoff against an in-memory store and queue: which reports it applies itself, in what
// transactions and order, which copies the queue path must still apply, and when it opens and closes.

let n = 0;
const report = (target: string, action: 'ban' | 'unban' = 'ban'): Report => ({
  id: `00000000-0000-4000-8000-${String(++n).padStart(12, '0')}`,
  action,
  target,
  host: 'web1',
  origin: 'fail2ban',
  jail: 'sshd',
  time: new Date().toISOString(),
});

class World {
  /** Transactions the handoff ran, each the targets it applied (in order). */
  transactions: string[][] = [];
  /** Transactions waiting for the test to commit (hold) or fail them. */
  held: { reports: Report[]; resolve(): void; reject(err: Error): void }[] = [];
  hold = false;
  caughtUp = true;
  counts: Record<HandoffOutcome, number> = { applied: 0, failed: 0, queued: 0 };
  clock = 0;
  /** Each look at the clock is one check of whether it may open (or a report handed over). */
  clockReads = 0;
  readonly handoff: LocalHandoff;

  constructor(options: { maxTracked?: number; expiryMs?: number } = {}) {
    this.handoff = new LocalHandoff({
      apply: (reports) => {
        if (!this.hold) {
          this.transactions.push(reports.map((r) => r.target));
          return Promise.resolve();
        }
        return new Promise<void>((resolve, reject) =>
          this.held.push({
            reports,
            resolve: () => {
              this.transactions.push(reports.map((r) => r.target));
              resolve();
            },
            reject,
          }),
        );
      },
      caughtUp: () => Promise.resolve(this.caughtUp),
      logger: createLogger({ level: 'silent' }),
      batchSize: 3,
      retryMs: 5,
      now: () => {
        this.clockReads += 1;
        return this.clock;
      },
      counted: (outcome, count) => (this.counts[outcome] += count),
      ...options,
    });
  }

  async opened(): Promise<void> {
    this.handoff.start();
    await waitFor(() => this.handoff.open, { timeoutMs: 2000, what: 'the handoff to open' });
  }

  /** Lets the closed handoff check a few more times whether it may open. */
  async checks(count: number): Promise<void> {
    const target = this.clockReads + count;
    await waitFor(() => this.clockReads >= target, { timeoutMs: 2000, what: `${count} checks` });
  }

  async commitNext(): Promise<void> {
    await waitFor(() => this.held.length > 0, { timeoutMs: 2000, what: 'a transaction' });
    this.held.shift()!.resolve();
  }

  async failNext(): Promise<void> {
    await waitFor(() => this.held.length > 0, { timeoutMs: 2000, what: 'a transaction' });
    this.held.shift()!.reject(new Error('connection terminated'));
  }
}

test('stays closed until the queue is caught up: a backlog goes first', async () => {
  const w = new World();
  w.caughtUp = false;
  w.handoff.start();
  const early = report('192.0.2.1');
  w.handoff.submit([early]);
  assert.equal(w.handoff.open, false);
  assert.deepEqual(w.transactions, []);
  assert.equal(w.counts.queued, 1);
  // The queue path applies the copy itself.
  const sorted = w.handoff.sort([early]);
  assert.deepEqual(sorted.apply, [early]);
  assert.equal(sorted.later, null);
  w.caughtUp = true;
  await waitFor(() => w.handoff.open, { timeoutMs: 2000, what: 'the handoff to open' });
  await w.handoff.stop();
});

test('applies what it is handed in order, one transaction at a time; what arrives meanwhile joins the next', async () => {
  const w = new World();
  await w.opened();
  w.hold = true;
  w.handoff.submit([report('192.0.2.1')]);
  w.handoff.submit([report('192.0.2.2'), report('192.0.2.3')]);
  w.handoff.submit([report('192.0.2.4')]);
  w.handoff.submit([report('192.0.2.5')]);
  await w.commitNext();
  await w.commitNext(); // batchSize 3
  await w.commitNext();
  assert.deepEqual(w.transactions, [['192.0.2.1'], ['192.0.2.2', '192.0.2.3', '192.0.2.4'], ['192.0.2.5']]);
  assert.equal(w.counts.applied, 5);
  await w.handoff.stop();
});

test("copies of committed reports need no transaction; a copy that arrives early waits for the handoff's answer", async () => {
  const w = new World();
  await w.opened();
  const done = report('192.0.2.1');
  w.handoff.submit([done]);
  await waitFor(() => w.transactions.length === 1, { timeoutMs: 2000, what: 'the first transaction' });
  w.hold = true;
  const running = report('192.0.2.2');
  w.handoff.submit([running]);
  const foreign = report('198.51.100.7'); // published by another ingest
  const sorted = w.handoff.sort([done, foreign, running]);
  assert.deepEqual(sorted.apply, [foreign]);
  assert.ok(sorted.later);
  await w.commitNext();
  assert.deepEqual(await sorted.later, { apply: [], failed: 0 });
  sorted.done();
  await w.handoff.stop();
});

test('a failed transaction leaves its reports to their copies and closes until the copies were applied', async () => {
  const w = new World();
  await w.opened();
  w.hold = true;
  const ban = report('192.0.2.9', 'ban');
  w.handoff.submit([ban]);
  const copyBeforeAnswer = w.handoff.sort([ban]);
  const waiting = report('192.0.2.10');
  w.handoff.submit([waiting]); // waits behind the failing transaction
  await w.failNext();
  assert.equal(w.handoff.open, false);
  // The early copy learns that it must be applied after all.
  assert.deepEqual(await copyBeforeAnswer.later, { apply: [ban], failed: 1 });
  // Handed over while closed (an unban of the same address): left to the queue, behind the ban.
  const unban = report('192.0.2.9', 'unban');
  w.handoff.submit([unban]);
  assert.deepEqual(w.transactions, []);
  assert.equal(w.counts.failed, 1);
  assert.equal(w.counts.queued, 2);
  // While the ban's copy is not back in the pipeline and the later copies not seen, it stays closed.
  await w.checks(3);
  assert.equal(w.handoff.open, false);
  copyBeforeAnswer.done();
  assert.deepEqual(w.handoff.sort([waiting, unban]).apply, [waiting, unban]);
  await waitFor(() => w.handoff.open, { timeoutMs: 2000, what: 'the handoff to open again' });
  await w.handoff.stop();
});

test('queue order is kept: what follows a copy whose transaction is running waits for its answer', async () => {
  // Closed while a transaction runs (too many tracked): the unban after the running ban is left to the
  // queue. If the ban's transaction fails, its copy must still apply before the unban.
  const w = new World({ maxTracked: 2 });
  await w.opened();
  w.hold = true;
  const ban = report('192.0.2.15', 'ban');
  w.handoff.submit([ban]);
  await waitFor(() => w.held.length === 1, { timeoutMs: 2000, what: 'a transaction' });
  const unban = report('192.0.2.15', 'unban');
  const other = report('192.0.2.16');
  w.handoff.submit([unban, other]);
  assert.equal(w.handoff.open, false);
  const sorted = w.handoff.sort([ban, unban, other]);
  assert.deepEqual(sorted.apply, []);
  assert.ok(sorted.later);
  await w.failNext();
  assert.deepEqual(await sorted.later, { apply: [ban, unban, other], failed: 1 });
  sorted.done();
  await w.handoff.stop();
});

test('reports whose copy never comes (another persister took it, or the publish failed) do not keep it closed', async () => {
  const w = new World({ expiryMs: 1000 });
  w.caughtUp = false;
  w.handoff.start();
  const a = report('192.0.2.20');
  const b = report('192.0.2.21');
  w.handoff.submit([a]);
  w.handoff.submit([b]);
  w.caughtUp = true;
  w.handoff.unpublished([b.id]);
  // a is still waiting for its copy.
  await w.checks(3);
  assert.equal(w.handoff.open, false);
  w.clock += 1001;
  await waitFor(() => w.handoff.open, { timeoutMs: 2000, what: 'the handoff to open after the expiry' });
  // Its late copy is then a report like any other (the store knows its id if it was applied).
  assert.deepEqual(w.handoff.sort([a]).apply, [a]);
  await w.handoff.stop();
});

test('too many reports waiting for their copies: closes rather than grows', async () => {
  const w = new World({ maxTracked: 4 });
  await w.opened();
  const first = [report('192.0.2.30'), report('192.0.2.31'), report('192.0.2.32')];
  w.handoff.submit(first);
  await waitFor(() => w.transactions.length === 1, { timeoutMs: 2000, what: 'a transaction' });
  const over = [report('192.0.2.33'), report('192.0.2.34')];
  w.handoff.submit(over);
  assert.equal(w.handoff.open, false);
  assert.deepEqual(w.transactions, [first.map((r) => r.target)]);
  const sorted = w.handoff.sort([...first, ...over]);
  assert.deepEqual(sorted.apply, over);
  await waitFor(() => w.handoff.open, { timeoutMs: 2000, what: 'the handoff to open again' });
  await w.handoff.stop();
});

test('stop waits for the running transaction and leaves the rest to the queue', async () => {
  const w = new World();
  await w.opened();
  w.hold = true;
  const running = report('192.0.2.40');
  const waiting = report('192.0.2.41');
  w.handoff.submit([running]);
  w.handoff.submit([waiting]);
  await waitFor(() => w.held.length === 1, { timeoutMs: 2000, what: 'a transaction' });
  const stopped = w.handoff.stop();
  w.held.shift()!.resolve();
  await stopped;
  assert.deepEqual(w.transactions, [[running.target]]);
  const sorted = w.handoff.sort([running, waiting]);
  assert.deepEqual(sorted.apply, [waiting]);
  // Closed for good: nothing handed over after stop is applied.
  w.handoff.submit([report('192.0.2.42')]);
  assert.equal(w.held.length, 0);
});
