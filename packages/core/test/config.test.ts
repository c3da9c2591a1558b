import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  AggregatorEnvSchema,
  ConfigError,
  IngestEnvSchema,
  PersisterEnvSchema,
  parseEnv,
} from '../src/index.js';

test('defaults apply when the environment is empty; empty strings count as unset', () => {
  const ingest = parseEnv(IngestEnvSchema, { INGEST_PORT: '', LOG_LEVEL: '' });
  assert.equal(ingest.INGEST_PORT, 8080);
  assert.equal(ingest.BANBUS_NAMESPACE, 'banbus');
  assert.equal(ingest.BANBUS_DEFAULT_BANTIME, -1);
  assert.equal(parseEnv(AggregatorEnvSchema, {}).AGGREGATOR_PORT, 8081);
  assert.equal(parseEnv(AggregatorEnvSchema, {}).AGGREGATOR_QUEUE_MAX_LENGTH, 100_000);
});

test('durations take units', () => {
  const env = parseEnv(PersisterEnvSchema, { PERSISTER_SWEEP_INTERVAL: '2m', BANBUS_BANTIME_MAX: '2w' });
  assert.equal(env.PERSISTER_SWEEP_INTERVAL, 120);
  assert.equal(env.BANBUS_BANTIME_MAX, 14 * 86400);
});

test('a bad value is a ConfigError naming the variable', () => {
  const cases: [Record<string, string>, string][] = [
    [{ INGEST_PORT: '70000' }, 'INGEST_PORT'],
    [{ INGEST_PORT: 'http' }, 'INGEST_PORT'],
    [{ BANBUS_NAMESPACE: 'Has Spaces' }, 'BANBUS_NAMESPACE'],
    [{ LOG_LEVEL: 'loud' }, 'LOG_LEVEL'],
    [{ BANBUS_MIN_PREFIX_V4: '33' }, 'BANBUS_MIN_PREFIX_V4'],
    [{ BANBUS_BANTIME_INCREMENT: 'maybe' }, 'BANBUS_BANTIME_INCREMENT'],
    [{ BANBUS_DEFAULT_BANTIME: '10 years' }, 'BANBUS_DEFAULT_BANTIME'],
  ];
  for (const [env, variable] of cases) {
    assert.throws(
      () => parseEnv(IngestEnvSchema, env),
      (err: unknown) => err instanceof ConfigError && err.variable === variable,
      JSON.stringify(env),
    );
  }
  assert.throws(
    () => parseEnv(AggregatorEnvSchema, { AGGREGATOR_ANONYMOUS: '10.0.0.0/8, 192.0.2.1/24' }),
    (err: unknown) =>
      err instanceof ConfigError && err.variable === 'AGGREGATOR_ANONYMOUS' && /host bits/.test(err.message),
  );
  assert.throws(
    () => parseEnv(AggregatorEnvSchema, { AGGREGATOR_QUEUE_MAX_LENGTH: '10' }),
    (err: unknown) => err instanceof ConfigError && err.variable === 'AGGREGATOR_QUEUE_MAX_LENGTH',
  );
});

test('anonymous networks are normalized at the edge', () => {
  assert.deepEqual(
    parseEnv(AggregatorEnvSchema, { AGGREGATOR_ANONYMOUS: '10.0.0.0/8, ::ffff:127.0.0.1' })
      .AGGREGATOR_ANONYMOUS,
    ['10.0.0.0/8', '127.0.0.1'],
  );
});
