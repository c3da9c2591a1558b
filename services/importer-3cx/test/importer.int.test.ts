// The 3CX importer against a real pipeline: a stand-in 3CX event log (see EVENTLOG_DDL: modelled on the
// old cron job's query), real ingest, RabbitMQ and persister. The tests run in order and share the log,
// the cursor file and the pipeline, as one PBX's life would: first start, restart, bad rows, outages.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { AllowlistRepository } from '@banbus/db';
import { waitFor } from '../../../test/harness/index.js';
import { CursorStateSchema } from '../src/index.js';
import { createWorld, sample, type World } from './support.js';

let world: World;

before(async () => {
  world = await createWorld();
});

after(async () => {
  await world?.close();
});

/** Waits until every address has its report stored, then checks it was stored and sent exactly once. */
async function expectStored(ips: string[], what: string): Promise<Map<string, number>> {
  const stored = await waitFor(
    async () => {
      const s = await world.stored();
      return ips.every((ip) => s.has(ip)) ? s : null;
    },
    { what, timeoutMs: 20_000 },
  );
  for (const ip of ips) assert.equal(stored.get(ip), 1, `${ip} stored once`);
  return stored;
}

async function metrics(url: string): Promise<string> {
  return (await fetch(`${url}/metrics`)).text();
}

describe('importer-3cx', () => {
  test('first start: THREECX_LOOKBACK before the newest event; older events and other event ids are skipped', async () => {
    await world.insert([
      { at: '2024-05-01 10:00:00', params: 'IP 192.0.2.1 blacklisted (too old)' },
      { at: '2024-05-01 11:50:00', params: 'IP 192.0.2.2 blacklisted' },
      { at: '2024-05-01 11:55:00', params: 'IP 192.0.2.99 registered', eventid: 4096 },
      { at: '2024-05-01 12:00:00', params: 'IP 192.0.2.3 blacklisted' },
    ]);
    const importer = await world.startImporter();
    await expectStored(['192.0.2.2', '192.0.2.3'], 'the two recent events');
    const stored = await world.stored();
    assert.equal(stored.has('192.0.2.1'), false);
    assert.equal(stored.has('192.0.2.99'), false);
    assert.deepEqual(importer.sender.ips.sort(), ['192.0.2.2', '192.0.2.3']);
    await waitFor(async () => (await fetch(`${importer.url}/readyz`)).status === 200, { what: 'ready' });
    await importer.stop();
  });

  test('events of one instant across a restart: each reported exactly once, none lost', async () => {
    // The cursor's boundary is 12:00:00 exactly; more events arrive at that very instant.
    const first = await world.startImporter();
    await world.insert([
      { at: '2024-05-01 12:00:00', params: 'IP 192.0.2.10 blacklisted' },
      { at: '2024-05-01 12:00:00', params: 'IP 192.0.2.11 blacklisted' },
      { at: '2024-05-01 12:00:00.5', params: 'IP 192.0.2.12 blacklisted' },
    ]);
    await expectStored(['192.0.2.10', '192.0.2.11', '192.0.2.12'], 'the same-instant events');
    await first.stop();
    const cursor = CursorStateSchema.parse(JSON.parse(await readFile(world.cursorFile, 'utf8')));
    assert.equal(cursor.watermark, Date.parse('2024-05-01T12:00:00.5Z') / 1000);

    // While stopped: more at both instants already passed, and later ones.
    await world.insert([
      { at: '2024-05-01 12:00:00', params: 'IP 192.0.2.13 blacklisted' },
      { at: '2024-05-01 12:00:00.5', params: 'IP 192.0.2.14 blacklisted' },
      { at: '2024-05-01 12:00:01', params: 'IP 192.0.2.15 blacklisted' },
    ]);
    const second = await world.startImporter();
    await expectStored(['192.0.2.13', '192.0.2.14', '192.0.2.15'], 'events written while stopped');
    // Nothing the first run reported was sent again.
    assert.deepEqual(second.sender.ips.sort(), ['192.0.2.13', '192.0.2.14', '192.0.2.15']);
    assert.deepEqual(
      [...first.sender.accepted.values(), ...second.sender.accepted.values()].filter((n) => n !== 1),
      [],
    );
    const stored = await world.stored();
    for (const ip of ['192.0.2.2', '192.0.2.3', '192.0.2.10', '192.0.2.11', '192.0.2.12'])
      assert.equal(stored.get(ip), 1, ip);
    await second.stop();
  });

  test('IPv6, rows without text or address, and a refused address: counted, logged, the rest goes on', async () => {
    await new AllowlistRepository(world.pipeline.pool).add({ network: '203.0.113.0/24', comment: 'office' });
    const importer = await world.startImporter();
    await world.insert([
      { at: '2024-05-01 12:01:00', params: null },
      { at: '2024-05-01 12:01:01', params: 'Anti-hacking: too many failed logins' },
      { at: '2024-05-01 12:01:02', params: 'IP 999.1.2.3 and 16.0.8.9.1' },
      { at: '2024-05-01 12:01:03', params: 'IP 203.0.113.9 blacklisted (allowlisted office)' },
      { at: '2024-05-01 12:01:04', params: 'IP [2001:DB8::66]:5060 and ::ffff:192.0.2.66 blacklisted' },
    ]);
    await expectStored(['2001:db8::66', '192.0.2.66'], 'the IPv6 and mapped addresses');
    const text = await waitFor(
      async () => {
        const m = await metrics(importer.url);
        return sample(m, 'banbus_importer3cx_reports_total', 'outcome="rejected"') === 1 ? m : null;
      },
      { what: 'the refused report counted' },
    );
    // The null row still has text from its other columns ("3CX PhoneSystem"), so no row here is unreadable
    // by shape; all three are rows without an address.
    assert.equal(sample(text, 'banbus_importer3cx_events_total', 'outcome="no-address"'), 3);
    assert.equal(sample(text, 'banbus_importer3cx_events_total', 'outcome="reported"'), 2);
    assert.equal((await world.stored()).has('203.0.113.9'), false);
    await importer.stop();
  });

  test('a row with no text at all is unreadable: counted, skipped, the importer keeps going', async () => {
    // From here on rows are told apart by their id column: the cursor goes on after its watermark.
    const importer = await world.startImporter({ THREECX_TEXT_COLUMN: 'params', THREECX_ID_COLUMN: 'id' });
    await world.insert([
      { at: '2024-05-01 12:02:00', params: null },
      { at: '2024-05-01 12:02:01', params: 'IP 192.0.2.70 blacklisted' },
    ]);
    await expectStored(['192.0.2.70'], 'the event after the unreadable one');
    const text = await metrics(importer.url);
    assert.equal(sample(text, 'banbus_importer3cx_events_total', 'outcome="unreadable"'), 1);
    // Nothing reported under the old keys was sent again.
    assert.deepEqual(importer.sender.ips, ['192.0.2.70']);
    await importer.stop();
  });

  test('3CX database down: retried with backoff, not ready meanwhile, nothing lost when it is back', async () => {
    const importer = await world.startImporter({ THREECX_TEXT_COLUMN: 'params', THREECX_ID_COLUMN: 'id' });
    await waitFor(async () => (await fetch(`${importer.url}/readyz`)).status === 200, { what: 'ready' });
    await world.relay.close();
    await world.insert([{ at: '2024-05-01 12:03:00', params: 'IP 192.0.2.80 blacklisted' }]);
    const down = await waitFor(
      async () => {
        const m = await metrics(importer.url);
        return sample(m, 'banbus_importer3cx_retries_total', 'dependency="database"') >= 3 ? m : null;
      },
      { what: 'database retries' },
    );
    assert.ok(down);
    const ready = await fetch(`${importer.url}/readyz`);
    assert.equal(ready.status, 503);
    assert.equal(((await ready.json()) as { checks: { database: boolean } }).checks.database, false);
    await world.relay.open();
    await expectStored(['192.0.2.80'], 'the event written during the outage');
    await waitFor(async () => (await fetch(`${importer.url}/readyz`)).status === 200, {
      what: 'ready again',
    });
    await importer.stop();
  });

  test('ingest answers 503: the batch is retried until accepted, not lost and not doubled', async () => {
    const importer = await world.startImporter({ THREECX_TEXT_COLUMN: 'params', THREECX_ID_COLUMN: 'id' });
    await world.ingestDown();
    const status = await fetch(`http://127.0.0.1:${world.ingestPort}/v1/reports`, {
      method: 'POST',
      headers: { authorization: `Bearer ${world.token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ ip: '192.0.2.250' }),
    });
    assert.equal(status.status, 503);
    await world.insert([
      { at: '2024-05-01 12:04:00', params: 'IP 192.0.2.90 blacklisted' },
      { at: '2024-05-01 12:04:01', params: 'IP 192.0.2.91 blacklisted' },
    ]);
    await waitFor(
      async () =>
        sample(await metrics(importer.url), 'banbus_importer3cx_retries_total', 'dependency="ingest"') >= 2,
      { what: 'ingest retries' },
    );
    assert.equal((await world.stored()).has('192.0.2.90'), false);
    await world.ingestUp();
    await expectStored(['192.0.2.90', '192.0.2.91'], 'the events held back while ingest answered 503');
    assert.deepEqual(importer.sender.duplicates(), []);
    await importer.stop();
  });
});
