import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { extractAddresses } from '../src/extract.js';
import { eventToReports, reasonOf, reportId } from '../src/events.js';

describe('extractAddresses', () => {
  test('IPv4 and IPv6 in free text, canonical, each once, in order', () => {
    assert.deepEqual(
      extractAddresses(
        'IP 203.0.113.7 blacklisted (5 failed REGISTER from [2001:DB8:0:0::42]:5060); again 203.0.113.7.',
      ),
      ['203.0.113.7', '2001:db8::42'],
    );
  });

  test('host:port, a label glued on, IPv4-mapped IPv6 folded to IPv4', () => {
    assert.deepEqual(extractAddresses('src=198.51.100.9:5060 IP:198.51.100.10 ::ffff:198.51.100.11'), [
      '198.51.100.9',
      '198.51.100.10',
      '198.51.100.11',
    ]);
    assert.deepEqual(extractAddresses('from 2001:db8::, end'), ['2001:db8::']);
  });

  test('look-alikes are not addresses: versions, octets > 255, leading zeros, MACs, clock times', () => {
    assert.deepEqual(
      extractAddresses(
        '3CX 16.0.8.9.1 999.1.2.3 010.1.2.3 00:1a:2b:3c:4d:5e 10:00:00 1.2.3 fe80::1%eth0x deadbeef',
      ),
      ['fe80::1'],
    );
  });

  test('loopback and unspecified addresses are never reported', () => {
    assert.deepEqual(extractAddresses('127.0.0.1 0.0.0.0 ::1 :: 192.0.2.1'), ['192.0.2.1']);
  });

  test('no text, no address', () => {
    assert.deepEqual(extractAddresses(''), []);
    assert.deepEqual(extractAddresses('Anti-hacking: too many failed logins'), []);
  });
});

describe('eventToReports', () => {
  const row = {
    key: 'k1',
    epoch: 1_700_000_000.25,
    at: new Date('2023-11-14T22:13:20.250Z'),
    eventId: 12290,
    text: 'IP 192.0.2.5 and 2001:db8::5\nblacklisted',
  };

  test('one report per address, jail and origin 3cx, reason from the event, event time', () => {
    const outcome = eventToReports(row, { source: 's', bantime: 3600 });
    assert.equal(outcome.kind, 'reports');
    if (outcome.kind !== 'reports') return;
    assert.deepEqual(
      outcome.reports.map((r) => [r.ip, r.jail, r.origin, r.action, r.time, r.bantime]),
      [
        ['192.0.2.5', '3cx', '3cx', 'ban', '2023-11-14T22:13:20.250Z', 3600],
        ['2001:db8::5', '3cx', '3cx', 'ban', '2023-11-14T22:13:20.250Z', 3600],
      ],
    );
    assert.equal(outcome.reports[0]!.reason, '3CX event 12290: IP 192.0.2.5 and 2001:db8::5 blacklisted');
  });

  test('report ids are UUIDs fixed by source, event and address', () => {
    const a = eventToReports(row, { source: 's' });
    const b = eventToReports({ ...row }, { source: 's' });
    const other = eventToReports({ ...row, key: 'k2' }, { source: 's' });
    assert.ok(a.kind === 'reports' && b.kind === 'reports' && other.kind === 'reports');
    assert.deepEqual(
      a.reports.map((r) => r.id),
      b.reports.map((r) => r.id),
    );
    assert.notEqual(a.reports[0]!.id, a.reports[1]!.id);
    assert.notEqual(a.reports[0]!.id, other.reports[0]!.id);
    assert.notEqual(reportId('s', 'k1', '192.0.2.5'), reportId('t', 'k1', '192.0.2.5'));
    assert.match(a.reports[0]!.id, /^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  });

  test('rows without text or without an address are outcomes, not exceptions', () => {
    assert.deepEqual(eventToReports({ ...row, text: null }, { source: 's' }), {
      kind: 'unreadable',
      error: 'the event has no text',
    });
    assert.deepEqual(eventToReports({ ...row, text: 'nothing here' }, { source: 's' }), {
      kind: 'no-address',
    });
  });

  test('the reason is one line without control characters, at most 200 characters', () => {
    const reason = reasonOf(12290, `a\u0000b\tc\r\n${'x'.repeat(500)}`);
    assert.equal(reason.length, 200);
    assert.match(reason, /^3CX event 12290: a b c x+…$/);
    assert.equal(reasonOf(null, '  '), '3CX event ?');
  });
});
