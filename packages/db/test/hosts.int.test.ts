import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import type pg from 'pg';
import { createPool } from '../src/pool.js';
import { HostRepository } from '../src/hosts.js';
import { DuplicateError, ValidationError } from '../src/errors.js';
import { hashToken } from '../src/tokens.js';
import { createTestDatabase, type TestDatabase } from '../../../test/harness/db.js';

let db: TestDatabase;
let pool: pg.Pool;
let hosts: HostRepository;
before(async () => {
  db = await createTestDatabase();
  pool = createPool(db.url, { max: 4 });
  hosts = new HostRepository(pool);
});
after(async () => {
  await pool?.end();
  await db?.drop();
});

test('add returns the token once and stores only its sha256', async () => {
  const { host, token } = await hosts.add('web-1.example', ['report']);
  assert.match(token, /^bb_[A-Za-z0-9_-]{43}$/);
  assert.equal(host.name, 'web-1.example');
  assert.deepEqual(host.scopes, ['report']);
  assert.ok(host.createdAt instanceof Date);
  assert.equal(host.lastSeenAt, null);
  assert.equal(host.revokedAt, null);
  assert.equal(typeof host.id, 'number');

  const { rows } = await pool.query('SELECT * FROM hosts WHERE name = $1', ['web-1.example']);
  assert.deepEqual(rows[0].token_hash, hashToken(token));
  // The token text appears in no column.
  assert.ok(!JSON.stringify(rows[0]).includes(token.slice(3)));
  assert.ok(!('token_hash' in host));
});

test('findByToken finds the host, and nothing for an unknown token', async () => {
  const { host, token } = await hosts.add('mail', ['report', 'read', 'read']);
  assert.deepEqual(host.scopes, ['report', 'read']);
  const found = await hosts.findByToken(token);
  assert.deepEqual(found, host);
  assert.equal(await hosts.findByToken(`${token}x`), null);
  assert.equal(await hosts.findByToken(''), null);
});

test('a taken name is a DuplicateError', async () => {
  await hosts.add('dup', ['admin']);
  await assert.rejects(hosts.add('dup', ['report']), DuplicateError);
});

test('bad names and scopes are rejected before the database', async () => {
  for (const name of ['', '-lead', '.x', 'a b', 'x'.repeat(64), 'ä', 'a/b']) {
    await assert.rejects(hosts.add(name, ['report']), ValidationError, JSON.stringify(name));
  }
  await hosts.add('x'.repeat(63), ['report']);
  await assert.rejects(hosts.add('noscope', []), ValidationError);
  await assert.rejects(hosts.add('badscope', ['root' as 'admin']), ValidationError);
});

test('revoke marks the host; findByToken still finds it (401 vs 403 is the caller’s choice)', async () => {
  const { token } = await hosts.add('gone', ['report']);
  assert.equal(await hosts.revoke('gone'), true);
  const found = await hosts.findByToken(token);
  assert.ok(found?.revokedAt instanceof Date);
  const first = found.revokedAt;
  assert.equal(await hosts.revoke('gone'), true, 'revoking again is harmless');
  assert.deepEqual((await hosts.findByToken(token))?.revokedAt, first);
  assert.equal(await hosts.revoke('no-such-host'), false);
});

test('touch sets last_seen_at for the given hosts and never moves it backwards', async () => {
  const { token: a } = await hosts.add('touch-a', ['report']);
  const { token: b } = await hosts.add('touch-b', ['report']);
  const { token: c } = await hosts.add('touch-c', ['report']);
  const t1 = new Date('2030-01-01T00:00:00Z');
  await hosts.touch(['touch-a', 'touch-b', 'touch-a'], t1);
  assert.deepEqual((await hosts.findByToken(a))?.lastSeenAt, t1);
  assert.deepEqual((await hosts.findByToken(b))?.lastSeenAt, t1);
  assert.equal((await hosts.findByToken(c))?.lastSeenAt, null);
  await hosts.touch(['touch-a'], new Date('2029-01-01T00:00:00Z'));
  assert.deepEqual((await hosts.findByToken(a))?.lastSeenAt, t1);
  await hosts.touch([]);
});

test('list returns every host by name', async () => {
  const names = (await hosts.list()).map((h) => h.name);
  assert.deepEqual(names, [...names].sort());
  for (const name of ['web-1.example', 'mail', 'dup', 'gone', 'touch-a'])
    assert.ok(names.includes(name), name);
});
