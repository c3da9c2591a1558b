import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Counter, createLogger, createProbeHandler, createRegistry, listen } from '../src/index.js';

// The route-applier's HTTP side without express: the same answers the services' express apps give.

test('probe server: /healthz, /readyz by its checks, /metrics, JSON routes, 404 for the rest', async () => {
  const registry = createRegistry(false);
  new Counter({ name: 'probe_test_total', help: 'a counter', registers: [registry] }).inc(3);
  let ready = false;
  const server = await listen(
    createProbeHandler({
      logger: createLogger({ level: 'silent' }),
      registry,
      readiness: { thing: () => ready, broken: () => Promise.resolve(true) },
      routes: { '/v1/status': () => ({ seq: 7 }) },
    }),
    0,
    '127.0.0.1',
  );
  const get = async (path: string, method = 'GET') => {
    const res = await fetch(`http://127.0.0.1:${server.port}${path}`, { method });
    return { status: res.status, type: res.headers.get('content-type'), text: await res.text() };
  };
  try {
    assert.deepEqual(JSON.parse((await get('/healthz')).text), { status: 'ok' });
    const notReady = await get('/readyz');
    assert.equal(notReady.status, 503);
    assert.deepEqual(JSON.parse(notReady.text), {
      status: 'not ready',
      checks: { thing: false, broken: true },
    });
    ready = true;
    assert.equal((await get('/readyz?verbose=1')).status, 200);
    const metrics = await get('/metrics');
    assert.equal(metrics.status, 200);
    assert.match(metrics.type ?? '', /^text\/plain/);
    assert.match(metrics.text, /^probe_test_total 3$/m);
    const status = await get('/v1/status');
    assert.match(status.type ?? '', /^application\/json/);
    assert.deepEqual(JSON.parse(status.text), { seq: 7 });
    for (const [path, method] of [
      ['/nothing', 'GET'],
      ['/v1/status', 'POST'],
    ] as const) {
      const answer = await get(path, method);
      assert.equal(answer.status, 404, `${method} ${path}`);
      assert.deepEqual(JSON.parse(answer.text), { error: 'not found' });
    }
  } finally {
    await server.close();
  }
});

test('probe server: a route that throws answers 500 and is logged', async () => {
  const logged: unknown[] = [];
  const logger = createLogger({ level: 'silent' });
  logger.error = ((obj: unknown) => void logged.push(obj)) as typeof logger.error;
  const server = await listen(
    createProbeHandler({
      logger,
      registry: createRegistry(false),
      routes: {
        '/v1/status': () => {
          throw new Error('boom');
        },
      },
    }),
    0,
    '127.0.0.1',
  );
  try {
    const res = await fetch(`http://127.0.0.1:${server.port}/v1/status`);
    assert.equal(res.status, 500);
    assert.deepEqual(await res.json(), { error: 'internal error' });
    assert.equal(logged.length, 1);
  } finally {
    await server.close();
  }
});
