import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { generateToken, hashToken } from '../src/tokens.js';
import { isTransientDbError, DuplicateError } from '../src/errors.js';

test('generateToken: bb_ + 43 base64url characters, different every time', () => {
  const tokens = new Set(Array.from({ length: 100 }, () => generateToken()));
  assert.equal(tokens.size, 100);
  for (const token of tokens) assert.match(token, /^bb_[A-Za-z0-9_-]{43}$/);
});

test('hashToken: sha256 of the token text', () => {
  const token = generateToken();
  const hash = hashToken(token);
  assert.equal(hash.length, 32);
  assert.deepEqual(hash, createHash('sha256').update(token).digest());
  assert.deepEqual(hashToken(token), hash);
  assert.notDeepEqual(hashToken(generateToken()), hash);
});

test('isTransientDbError: the database being away is transient, a bad query is not', () => {
  const withCode = (code: string) => Object.assign(new Error('x'), { code });
  for (const code of ['ECONNREFUSED', 'ECONNRESET', '57P01', '57P02', '57P03', '08006', '08001', '53300']) {
    assert.equal(isTransientDbError(withCode(code)), true, code);
  }
  assert.equal(isTransientDbError(new Error('Connection terminated unexpectedly')), true);
  assert.equal(isTransientDbError(new AggregateError([withCode('ECONNREFUSED')])), true);
  for (const code of ['23505', '42P01', '22P02', '40001'])
    assert.equal(isTransientDbError(withCode(code)), false, code);
  assert.equal(isTransientDbError(new Error('syntax error')), false);
  assert.equal(isTransientDbError(undefined), false);
  assert.equal(isTransientDbError('ECONNREFUSED'), false);
});

test('DuplicateError is an Error with its own name', () => {
  const err = new DuplicateError('host a exists', 'hosts_name_key');
  assert.ok(err instanceof Error);
  assert.equal(err.name, 'DuplicateError');
  assert.equal(err.constraint, 'hosts_name_key');
});
