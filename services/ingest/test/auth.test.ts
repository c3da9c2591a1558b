import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { HttpError, createLogger } from '@banbus/runtime';
import type { Scope } from '@banbus/core';
import { TokenAuthenticator, bearerToken, requireReportScope, type AuthHost } from '../src/auth.js';
import { ReportRateLimiter } from '../src/rate.js';

const logger = createLogger({ level: 'silent' });
const TOKEN = 'bb_' + 'a'.repeat(43);
const OTHER = 'bb_' + 'b'.repeat(43);

function host(name: string, scopes: Scope[] = ['report'], revokedAt: Date | null = null): AuthHost {
  return { name, scopes, revokedAt };
}

class FakeHosts {
  calls = 0;
  down = false;
  touched: string[][] = [];
  constructor(public tokens: Map<string, AuthHost>) {}
  async findByToken(token: string) {
    this.calls++;
    if (this.down) throw new Error('connect ECONNREFUSED 127.0.0.1:5432');
    return this.tokens.get(token) ?? null;
  }
  async touch(names: readonly string[]) {
    if (this.down) throw new Error('connect ECONNREFUSED');
    this.touched.push([...names]);
  }
}

async function status(p: Promise<unknown>): Promise<number> {
  try {
    await p;
    return 200;
  } catch (err) {
    assert.ok(err instanceof HttpError, String(err));
    return err.status;
  }
}

describe('bearerToken', () => {
  test('reads Bearer, refuses others with a challenge', () => {
    assert.equal(bearerToken(`Bearer ${TOKEN}`), TOKEN);
    assert.equal(bearerToken(`bearer   ${TOKEN}`), TOKEN);
    for (const header of [undefined, '', 'Basic dXNlcjpwYXNz', 'Bearer', `Token ${TOKEN}`]) {
      try {
        bearerToken(header);
        assert.fail(`accepted ${header}`);
      } catch (err) {
        assert.ok(err instanceof HttpError);
        assert.equal(err.status, 401);
        assert.match(err.headers['WWW-Authenticate']!, /^Bearer realm="banbus"/);
      }
    }
  });
});

describe('TokenAuthenticator', () => {
  test('caches lookups for the TTL, then asks again', async () => {
    let now = 1_000_000;
    const hosts = new FakeHosts(new Map([[TOKEN, host('web1')]]));
    const auth = new TokenAuthenticator({ hosts, ttlSeconds: 30, logger, now: () => now });
    assert.equal((await auth.authenticate(TOKEN)).name, 'web1');
    await auth.authenticate(TOKEN);
    assert.equal(hosts.calls, 1);
    now += 31_000;
    await auth.authenticate(TOKEN);
    assert.equal(hosts.calls, 2);
    await auth.stop();
  });

  test('concurrent lookups of one token share one query', async () => {
    const hosts = new FakeHosts(new Map([[TOKEN, host('web1')]]));
    const auth = new TokenAuthenticator({ hosts, ttlSeconds: 30, logger });
    await Promise.all([auth.authenticate(TOKEN), auth.authenticate(TOKEN), auth.authenticate(TOKEN)]);
    assert.equal(hosts.calls, 1);
    await auth.stop();
  });

  test('unknown, malformed and revoked tokens are 401', async () => {
    const hosts = new FakeHosts(new Map([[OTHER, host('gone', ['report'], new Date())]]));
    const auth = new TokenAuthenticator({ hosts, ttlSeconds: 30, logger });
    assert.equal(await status(auth.authenticate(TOKEN)), 401);
    assert.equal(await status(auth.authenticate(OTHER)), 401);
    assert.equal(await status(auth.authenticate('short')), 401);
    assert.equal(await status(auth.authenticate("x' OR 1=1 --aaaaaaaaaaaa")), 401);
    assert.equal(await status(auth.authenticate(undefined)), 401);
    assert.equal(hosts.calls, 2, 'malformed tokens never reach the database');
    await auth.stop();
  });

  test('stale-if-error: PostgreSQL away → the expired entry is served; nothing cached → 503', async () => {
    let now = 1_000_000;
    const hosts = new FakeHosts(new Map([[TOKEN, host('web1')]]));
    const auth = new TokenAuthenticator({ hosts, ttlSeconds: 30, logger, now: () => now });
    await auth.authenticate(TOKEN);
    hosts.down = true;
    now += 3_600_000;
    assert.equal((await auth.authenticate(TOKEN)).name, 'web1');
    const err = await auth.authenticate(OTHER).catch((e: unknown) => e);
    assert.ok(err instanceof HttpError);
    assert.equal(err.status, 503);
    assert.equal(err.headers['Retry-After'], '5');
    await auth.stop();
  });

  test('last_seen is written in batches; failures are ignored', async () => {
    const hosts = new FakeHosts(
      new Map([
        [TOKEN, host('web1')],
        [OTHER, host('web2')],
      ]),
    );
    const auth = new TokenAuthenticator({ hosts, ttlSeconds: 30, logger, touchIntervalMs: 3_600_000 });
    await auth.authenticate(TOKEN);
    await auth.authenticate(TOKEN);
    await auth.authenticate(OTHER);
    await auth.flushSeen();
    assert.deepEqual(hosts.touched, [['web1', 'web2']]);
    await auth.authenticate(TOKEN);
    hosts.down = true;
    await auth.flushSeen();
    await auth.stop();
    assert.equal(hosts.touched.length, 1);
  });

  test('report scope: report or admin; read alone is 403', () => {
    requireReportScope(host('a', ['report']));
    requireReportScope(host('b', ['admin']));
    assert.throws(
      () => requireReportScope(host('c', ['read'])),
      (e: unknown) => e instanceof HttpError && e.status === 403,
    );
  });
});

describe('ReportRateLimiter', () => {
  test('burst passes, then 429 with Retry-After; hosts are separate', async () => {
    const limiter = new ReportRateLimiter(1, 5);
    await limiter.consume('web1', 3);
    await limiter.consume('web1', 2);
    const err = await limiter.consume('web1', 1).catch((e: unknown) => e);
    assert.ok(err instanceof HttpError);
    assert.equal(err.status, 429);
    assert.ok(Number(err.headers['Retry-After']) >= 1);
    await limiter.consume('web2', 5);
  });

  test('a batch larger than the window passes once on a fresh window', async () => {
    const limiter = new ReportRateLimiter(10, 20);
    await limiter.consume('web1', 1000);
    assert.equal(await status(limiter.consume('web1', 1)), 429);
  });
});
