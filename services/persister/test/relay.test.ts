import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { DecisionChange } from '@banbus/core';
import type { RelayResult } from '@banbus/db';
import { createLogger } from '@banbus/runtime';
import { DecisionRelay } from '../src/relay.js';
import { waitFor } from '../../../test/harness/index.js';

// The relay's two paths against an in-memory log and broker: what reaches the broker, in which order,
// and where the cursor ends up.

const change = (seq: number): DecisionChange => ({
  seq,
  op: 'add',
  target: `192.0.2.${seq}`,
  expires_at: null,
  reason: null,
});
const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => change(from + i));

class World {
  /** decision_log: every committed change. */
  log: DecisionChange[] = [];
  cursor = 0;
  /** What the broker received, in order. */
  sent: number[] = [];
  /** Publishes that wait for a confirm the test gives (confirmAll) or refuses (failNext). */
  pending: { resolve(): void; reject(err: Error): void }[] = [];
  holdConfirms = false;
  failNext = false;
  rounds = 0;
  connected = true;
  readonly relay: DecisionRelay;

  constructor() {
    this.relay = new DecisionRelay(
      {
        publish: (changes) => {
          if (this.failNext) {
            this.failNext = false;
            return Promise.reject(new Error('channel closed'));
          }
          this.sent.push(...changes.map((c) => c.seq));
          if (!this.holdConfirms) return Promise.resolve();
          return new Promise<void>((resolve, reject) => this.pending.push({ resolve, reject }));
        },
        round: async (publish, after): Promise<RelayResult> => {
          this.rounds += 1;
          const from = Math.max(this.cursor, after);
          const rows = this.log.filter((c) => c.seq > from);
          if (rows.length === 0) return { published: 0, position: from, cursor: this.cursor };
          await publish(rows);
          this.cursor = rows[rows.length - 1]!.seq;
          return { published: rows.length, position: this.cursor, cursor: this.cursor };
        },
        saveCursor: async (seq) => {
          if (seq > this.cursor) this.cursor = seq;
        },
        connected: () => this.connected,
        logger: createLogger({ level: 'silent' }),
      },
      { cursorSaveMs: 1 },
    );
  }

  commit(from: number, to: number): void {
    const changes = range(from, to);
    this.log.push(...changes);
    this.relay.committed(changes);
  }

  confirmAll(): void {
    for (const p of this.pending.splice(0)) p.resolve();
  }
}

test('the leader publishes its own commits at once, without a round, and saves the cursor after the confirm', async () => {
  const w = new World();
  w.relay.setLeader(true);
  await w.relay.round();
  const rounds = w.rounds;
  w.holdConfirms = true;
  w.commit(1, 2);
  w.commit(3, 3);
  // Handed over before any confirm: the next commit does not wait for the one before.
  assert.deepEqual(w.sent, [1, 2, 3]);
  assert.equal(w.rounds, rounds);
  assert.equal(w.cursor, 0);
  w.confirmAll();
  await waitFor(() => w.cursor === 3, { timeoutMs: 2_000, what: 'cursor saved' });
  assert.equal(w.relay.confirmedSeq, 3);
});

test('a commit that does not follow what was sent goes out through a round, in order, once', async () => {
  const w = new World();
  w.relay.setLeader(true);
  await w.relay.round();
  w.commit(1, 1);
  // Seqs 2..3 were committed by another process (the leader hears of them by NOTIFY, maybe late).
  w.log.push(...range(2, 3));
  w.commit(4, 5);
  await w.relay.round();
  assert.deepEqual(w.sent, [1, 2, 3, 4, 5]);
  // The line continues after the round.
  w.commit(6, 6);
  assert.deepEqual(w.sent, [1, 2, 3, 4, 5, 6]);
});

test('a failed publish is sent again by a round from the last confirmed seq; nothing is skipped', async () => {
  const w = new World();
  w.relay.setLeader(true);
  await w.relay.round();
  w.commit(1, 1);
  await waitFor(() => w.relay.confirmedSeq === 1, { timeoutMs: 2_000, what: 'seq 1 confirmed' });
  w.failNext = true;
  w.commit(2, 2);
  await waitFor(() => w.sent.includes(2), { timeoutMs: 2_000, what: 'seq 2 sent again' });
  w.commit(3, 3);
  await w.relay.round();
  assert.deepEqual(w.sent, [1, 2, 3]);
  await waitFor(() => w.cursor === 3, { timeoutMs: 2_000, what: 'cursor saved' });
});

test('without the lease nothing is published; getting it publishes what was committed meanwhile', async () => {
  const w = new World();
  w.commit(1, 2);
  w.relay.notified(2);
  await w.relay.round();
  assert.deepEqual(w.sent, []);
  w.relay.setLeader(true);
  await w.relay.round();
  assert.deepEqual(w.sent, [1, 2]);
  // Losing it stops the direct path at once.
  w.relay.setLeader(false);
  w.commit(3, 3);
  assert.deepEqual(w.sent, [1, 2]);
});

test("the leader's own NOTIFY starts no round; another process's does", async () => {
  const w = new World();
  w.relay.setLeader(true);
  await w.relay.round();
  const rounds = w.rounds;
  w.relay.logged(1);
  w.relay.notified(1); // arrived before the COMMIT's answer
  w.commit(1, 1);
  w.relay.notified(1);
  assert.equal(w.rounds, rounds);
  w.log.push(change(2));
  w.relay.notified(2);
  await w.relay.round();
  assert.deepEqual(w.sent, [1, 2]);
});

test('stop() waits for confirms in flight and saves the cursor', async () => {
  const w = new World();
  w.relay.setLeader(true);
  await w.relay.round();
  w.holdConfirms = true;
  w.commit(1, 3);
  const stopped = w.relay.stop();
  w.confirmAll();
  await stopped;
  assert.equal(w.cursor, 3);
});

test('changes committed while a round runs go out with the round, once, not directly as well', async () => {
  const w = new World();
  w.relay.setLeader(true);
  await w.relay.round();
  w.commit(1, 1);
  await waitFor(() => w.relay.confirmedSeq === 1, { timeoutMs: 2_000, what: 'seq 1 confirmed' });
  // Seq 2 is the leader's own and committed, but the batch has not told the relay yet when a round
  // (the periodic one) reads the log: the round publishes it.
  w.log.push(change(2));
  w.holdConfirms = true;
  const round = w.relay.round();
  await waitFor(() => w.sent.includes(2), { timeoutMs: 2_000, what: 'the round publishing seq 2' });
  // Now the batch tells the relay: seq 2 follows seq 1 exactly, but the round has it.
  w.relay.committed([change(2)]);
  w.confirmAll();
  await round;
  assert.deepEqual(w.sent, [1, 2]);
  // The line continues directly after the round.
  w.holdConfirms = false;
  w.commit(3, 3);
  assert.deepEqual(w.sent, [1, 2, 3]);
});
