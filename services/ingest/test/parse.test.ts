import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { HttpError } from '@banbus/runtime';
import { parseCompatQuery, parseReportBody } from '../src/parse.js';

const now = () => new Date('2024-11-20T10:00:00.000Z');
const opts = { maxBatch: 5, now };
const UUID = '2f1c7a52-6c1e-4a7e-9d7e-0c6f2b5a9e11';

function rejects(fn: () => unknown, status: number, field: string): HttpError {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof HttpError, `expected HttpError, got ${String(err)}`);
    assert.equal(err.status, status, err.message);
    assert.equal(err.field, field, err.message);
    return err;
  }
  assert.fail(`expected ${status} on ${field}`);
}

describe('parseReportBody: JSON object', () => {
  test('minimal report gets defaults: ban, a fresh uuid, now', () => {
    const [r] = parseReportBody({ ip: '192.0.2.1' }, 'json', opts);
    assert.equal(r!.action, 'ban');
    assert.equal(r!.target.text, '192.0.2.1');
    assert.match(r!.id, /^[0-9a-f-]{36}$/);
    assert.equal(r!.time, '2024-11-20T10:00:00.000Z');
    assert.equal(r!.origin, 'fail2ban');
    assert.equal(r!.jail, null);
    assert.equal(r!.bantime, null);
  });

  test('all fields', () => {
    const [r] = parseReportBody(
      {
        ip: '2001:DB8::1',
        action: 'unban',
        jail: 'sshd',
        bantime: 600,
        failures: '5',
        matches: 'line one\nline two',
        time: 1732000000.5,
        id: UUID,
        reason: 'brute force',
      },
      'json',
      opts,
    );
    assert.equal(r!.action, 'unban');
    assert.equal(r!.target.text, '2001:db8::1');
    assert.equal(r!.jail, 'sshd');
    assert.equal(r!.bantime, 600);
    assert.equal(r!.failures, 5);
    assert.equal(r!.matches, 'line one\nline two');
    assert.equal(r!.time, '2024-11-19T07:06:40.500Z');
    assert.equal(r!.id, UUID);
    assert.equal(r!.reason, 'brute force');
  });

  test('IPv4-mapped IPv6 becomes IPv4, networks keep their prefix', () => {
    assert.equal(parseReportBody({ ip: '::ffff:192.0.2.9' }, 'json', opts)[0]!.target.text, '192.0.2.9');
    const [net] = parseReportBody({ ip: '198.51.100.0/24' }, 'json', opts);
    assert.equal(net!.target.text, '198.51.100.0/24');
    assert.equal(net!.target.isHost, false);
  });

  test('time as ISO 8601 and as a decimal string (fail2ban <time>)', () => {
    assert.equal(
      parseReportBody({ ip: '192.0.2.1', time: '2024-01-02T03:04:05+02:00' }, 'json', opts)[0]!.time,
      '2024-01-02T01:04:05.000Z',
    );
    assert.equal(
      parseReportBody({ ip: '192.0.2.1', time: '1732000000.25' }, 'json', opts)[0]!.time,
      '2024-11-19T07:06:40.250Z',
    );
  });

  test('bantime -1 is permanent; fractions are floored; numeric strings accepted', () => {
    assert.equal(parseReportBody({ ip: '192.0.2.1', bantime: -1 }, 'json', opts)[0]!.bantime, -1);
    assert.equal(parseReportBody({ ip: '192.0.2.1', bantime: '-1' }, 'json', opts)[0]!.bantime, -1);
    assert.equal(parseReportBody({ ip: '192.0.2.1', bantime: 600.7 }, 'json', opts)[0]!.bantime, 600);
    assert.equal(parseReportBody({ ip: '192.0.2.1', bantime: ' 3600 ' }, 'json', opts)[0]!.bantime, 3600);
  });

  test('empty strings and nulls mean "not given"', () => {
    const [r] = parseReportBody({ ip: '192.0.2.1', jail: '', bantime: null, matches: '' }, 'json', opts);
    assert.equal(r!.jail, null);
    assert.equal(r!.bantime, null);
    assert.equal(r!.matches, null);
  });

  test('host and token in the body are ignored', () => {
    const [r] = parseReportBody({ ip: '192.0.2.1', host: 'evil', token: 'x' }, 'json', opts);
    assert.equal((r as unknown as Record<string, unknown>).host, undefined);
  });

  const bad: Array<[string, unknown, string]> = [
    ['missing ip', { jail: 'sshd' }, 'ip'],
    ['empty ip', { ip: '' }, 'ip'],
    ['garbage ip', { ip: 'not-an-ip' }, 'ip'],
    ['ip as number', { ip: 3232235777 }, 'ip'],
    ['host bits set', { ip: '10.0.0.1/8' }, 'ip'],
    ['unknown action', { ip: '192.0.2.1', action: 'add' }, 'action'],
    ['jail with control chars', { ip: '192.0.2.1', jail: 'ssh\u0007d' }, 'jail'],
    ['jail too long', { ip: '192.0.2.1', jail: 'j'.repeat(65) }, 'jail'],
    ['SQL in jail', { ip: '192.0.2.1', jail: "x'; DROP TABLE reports;--" }, 'jail'],
    ['HTML in jail', { ip: '192.0.2.1', jail: '<script>alert(1)</script>' }, 'jail'],
    ['bantime abc', { ip: '192.0.2.1', bantime: 'abc' }, 'bantime'],
    ['bantime -2', { ip: '192.0.2.1', bantime: -2 }, 'bantime'],
    ['bantime huge', { ip: '192.0.2.1', bantime: 1e12 }, 'bantime'],
    ['failures -1', { ip: '192.0.2.1', failures: -1 }, 'failures'],
    ['failures fraction', { ip: '192.0.2.1', failures: 1.5 }, 'failures'],
    ['matches too long', { ip: '192.0.2.1', matches: 'm'.repeat(1001) }, 'matches'],
    ['matches with NUL', { ip: '192.0.2.1', matches: 'a\u0000b' }, 'matches'],
    ['time garbage', { ip: '192.0.2.1', time: 'yesterday' }, 'time'],
    ['time without offset', { ip: '192.0.2.1', time: '2024-01-02T03:04:05' }, 'time'],
    ['time negative', { ip: '192.0.2.1', time: -5 }, 'time'],
    ['id not a uuid', { ip: '192.0.2.1', id: 'abc' }, 'id'],
    ['origin unknown', { ip: '192.0.2.1', origin: 'martians' }, 'origin'],
    ['reason with newline', { ip: '192.0.2.1', reason: 'a\nb' }, 'reason'],
  ];
  for (const [name, body, field] of bad) {
    test(`400: ${name}`, () => {
      rejects(() => parseReportBody(body, 'json', opts), 400, field);
    });
  }

  test('400 on bodies that are not objects', () => {
    rejects(() => parseReportBody('192.0.2.1', 'json', opts), 400, 'body');
    rejects(() => parseReportBody(undefined, 'json', opts), 400, 'body');
    rejects(() => parseReportBody(null, 'json', opts), 400, 'body');
  });
});

describe('parseReportBody: JSON array', () => {
  test('several reports, in order', () => {
    const out = parseReportBody(
      [{ ip: '192.0.2.1' }, { ip: '192.0.2.2', action: 'unban' }, { ip: '2001:db8::5' }],
      'json',
      opts,
    );
    assert.deepEqual(
      out.map((r) => [r.target.text, r.action]),
      [
        ['192.0.2.1', 'ban'],
        ['192.0.2.2', 'unban'],
        ['2001:db8::5', 'ban'],
      ],
    );
    assert.equal(new Set(out.map((r) => r.id)).size, 3);
  });

  test('one bad item fails the whole array, named by position', () => {
    const err = rejects(
      () =>
        parseReportBody(
          [{ ip: '192.0.2.1' }, { ip: '192.0.2.2' }, { ip: '192.0.2.3' }, { ip: 'x' }],
          'json',
          opts,
        ),
      400,
      '[3].ip',
    );
    assert.match(err.message, /^\[3\]: /);
    rejects(() => parseReportBody([{ ip: '192.0.2.1' }, 'nope'], 'json', opts), 400, '[1]');
  });

  test('empty and oversized arrays', () => {
    rejects(() => parseReportBody([], 'json', opts), 400, 'body');
    rejects(
      () =>
        parseReportBody(
          Array.from({ length: 6 }, () => ({ ip: '192.0.2.1' })),
          'json',
          opts,
        ),
      400,
      'body',
    );
    assert.equal(
      parseReportBody(
        Array.from({ length: 5 }, () => ({ ip: '192.0.2.1' })),
        'json',
        opts,
      ).length,
      5,
    );
  });

  test('the same id twice in one request is refused', () => {
    rejects(
      () =>
        parseReportBody(
          [
            { ip: '192.0.2.1', id: UUID },
            { ip: '192.0.2.2', id: UUID.toUpperCase() },
          ],
          'json',
          opts,
        ),
      400,
      '[1].id',
    );
  });
});

describe('parseReportBody: form fields', () => {
  test('strings are converted', () => {
    const [r] = parseReportBody(
      { ip: '192.0.2.1', jail: 'sshd', bantime: '600', failures: '3', time: '1732000000' },
      'form',
      opts,
    );
    assert.equal(r!.bantime, 600);
    assert.equal(r!.failures, 3);
    assert.equal(r!.time, '2024-11-19T07:06:40.000Z');
  });

  test('a repeated field is refused', () => {
    rejects(() => parseReportBody({ ip: ['192.0.2.1', '192.0.2.2'] }, 'form', opts), 400, 'ip');
  });
});

describe('parseCompatQuery (fail2ban.php)', () => {
  test('add → ban, source → jail, reason kept, token ignored', () => {
    const r = parseCompatQuery(
      { token: 'secret', action: 'add', source: 'sshd', reason: 'too many failures', ip: '192.0.2.7' },
      { now },
    );
    assert.equal(r.action, 'ban');
    assert.equal(r.jail, 'sshd');
    assert.equal(r.reason, 'too many failures');
    assert.equal(r.target.text, '192.0.2.7');
    assert.equal(r.origin, 'fail2ban');
  });

  test('delete → unban; missing action is add', () => {
    assert.equal(parseCompatQuery({ action: 'delete', ip: '192.0.2.7' }).action, 'unban');
    assert.equal(parseCompatQuery({ ip: '192.0.2.7' }).action, 'ban');
  });

  test('errors name the query field', () => {
    rejects(() => parseCompatQuery({ action: 'ban', ip: '192.0.2.7' }), 400, 'action');
    rejects(() => parseCompatQuery({ action: 'add' }), 400, 'ip');
    rejects(() => parseCompatQuery({ ip: '192.0.2.7', source: 'a b' }), 400, 'source');
  });
});
