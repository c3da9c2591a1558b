import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { policyFromEnv } from '@banbus/core';
import { DecisionStore } from '@banbus/db';
import { engineRules } from '../src/engine.js';
import { createWorld, report, type World } from '../../../test/harness/world.js';

let world: World;
before(async () => {
  world = await createWorld();
});
after(async () => {
  await world?.close();
});

test('decision log rows left unpublished by a crash are published in order at start', async () => {
  // What a persister that died between commit and relay leaves behind.
  const store = new DecisionStore(world.pool, engineRules(policyFromEnv(world.config())));
  await store.applyReports(['192.0.2.10', '192.0.2.11', '192.0.2.12'].map((target) => report({ target })));
  await store.applyReports([
    report({ target: '192.0.2.11', action: 'unban' }),
    report({ target: '192.0.2.12', bantime: 86_400 * 30 }),
  ]);
  const logged = await store.logSince(0);
  assert.equal(logged.length, 5);
  assert.equal(await store.unpublishedCount(), 5);
  assert.equal(world.listener.changes.length, 0);

  const persister = await world.start();
  // start() relays before it resolves.
  await world.listener.next((c) => c.seq === 5);
  assert.deepEqual(world.listener.changes, logged);
  assert.equal(await persister.store.unpublishedCount(), 0);
});
