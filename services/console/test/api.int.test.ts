import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { waitFor } from '../../../test/harness/index.js';
import type { DecisionDetail, DecisionPage, Overview } from '../src/index.js';
import {
  Client,
  PASSWORD,
  createWorld,
  freshAddress,
  report,
  type TestConsole,
  type World,
} from './setup.js';

describe('console admin API', () => {
  let world: World;
  let con: TestConsole;
  let admin: Client;
  let reader: Client;

  before(async () => {
    world = await createWorld();
    con = await world.startConsole();
    admin = new Client(con.url);
    assert.equal((await admin.login({ user: 'alice', password: PASSWORD })).status, 200);
    reader = new Client(con.url);
    assert.equal((await reader.login({ token: world.tokens.read })).status, 200);
  });
  after(async () => {
    await world?.close();
  });

  const bearer = (token: string) => ({ authorization: `Bearer ${token}` });
  const auditCount = async () =>
    Number((await world.pool.query<{ n: string }>('SELECT count(*) AS n FROM audit_log')).rows[0]!.n);
  /** Everything a change could touch at once (bans arrive later, through the persister: the audit log says). */
  const tables = async () =>
    (
      await world.pool.query<{ state: string }>(
        `SELECT concat_ws(' ',
           (SELECT count(*) FROM audit_log), (SELECT count(*) FROM allowlist),
           (SELECT count(*) FROM hosts), (SELECT count(*) FROM hosts WHERE revoked_at IS NOT NULL),
           (SELECT count(*) FROM applier_status), (SELECT count(*) FROM console_sessions),
           (SELECT count(*) FROM console_users)) AS state`,
      )
    ).rows[0]!.state;

  describe('login and session', () => {
    test('a password login sets an HttpOnly, SameSite=Strict session cookie and returns a CSRF token', async () => {
      const c = new Client(con.url);
      const answer = await c.login({ user: 'alice', password: PASSWORD });
      assert.equal(answer.status, 200, answer.text);
      const cookie = answer.headers.get('set-cookie') ?? '';
      assert.match(cookie, /^banbus_session=[A-Za-z0-9_-]{43};/);
      assert.match(cookie, /; HttpOnly/i);
      assert.match(cookie, /; SameSite=Strict/i);
      assert.match(cookie, /; Path=\//);
      const body = answer.body as { actor: string; scopes: string[]; csrf: string };
      assert.equal(body.actor, 'alice');
      assert.deepEqual(body.scopes, ['read', 'admin']);
      assert.match(body.csrf, /^[A-Za-z0-9_-]{43}$/);
      const me = await c.request('GET', '/v1/admin/session');
      assert.equal(me.status, 200);
      assert.equal((me.body as { actor: string }).actor, 'alice');
      // Only the hash of the cookie value is stored.
      const { rows } = await world.pool.query<{ n: string }>(
        `SELECT count(*) AS n FROM console_sessions WHERE encode(id_hash, 'escape') LIKE $1`,
        [`%${c.cookie!.split('=')[1]}%`],
      );
      assert.equal(rows[0]!.n, '0');
    });

    test('wrong passwords, unknown users and bad tokens are refused; a report-only token may not log in', async () => {
      const c = new Client(con.url);
      const cases: [unknown, number, string?][] = [
        [{ user: 'alice', password: 'wrong password' }, 401, 'password'],
        [{ user: 'nobody', password: PASSWORD }, 401, 'password'],
        [{ token: 'bb_' + 'x'.repeat(43) }, 401],
        [{ token: world.tokens.report }, 403],
        [{ user: 'alice' }, 400],
        [{}, 400],
        [{ user: 'alice', password: PASSWORD, extra: 1 }, 400],
      ];
      for (const [body, status, field] of cases) {
        const answer = await c.request('POST', '/v1/admin/session', body);
        assert.equal(answer.status, status, `${JSON.stringify(body)} → ${answer.text}`);
        if (field) assert.equal((answer.body as { field: string }).field, field);
        assert.equal(answer.headers.get('set-cookie'), null);
      }
      const form = await c.request(
        'POST',
        '/v1/admin/session',
        `user=alice&password=${encodeURIComponent(PASSWORD)}`,
        {
          headers: { 'content-type': 'application/x-www-form-urlencoded' },
        },
      );
      assert.equal(form.status, 415, 'a cross-site HTML form cannot log in');
      const crossSite = await c.request(
        'POST',
        '/v1/admin/session',
        { user: 'alice', password: PASSWORD },
        { headers: { origin: 'https://evil.example' } },
      );
      assert.equal(crossSite.status, 403);
    });

    test('failed logins are limited per client address', async () => {
      const limited = await world.startConsole({ CONSOLE_LOGIN_ATTEMPTS: 3 });
      const c = new Client(limited.url);
      for (let i = 0; i < 3; i++)
        assert.equal((await c.login({ user: 'alice', password: `wrong ${i}` })).status, 401);
      const blocked = await c.login({ user: 'alice', password: PASSWORD });
      assert.equal(blocked.status, 429, 'even the right password waits');
      assert.ok(Number(blocked.headers.get('retry-after')) >= 1);
      await limited.stop();
    });

    test('logout ends the session', async () => {
      const c = new Client(con.url);
      await c.login({ user: 'alice', password: PASSWORD });
      assert.equal((await c.request('DELETE', '/v1/admin/session')).status, 204);
      const after = await c.request('GET', '/v1/admin/session');
      assert.equal(after.status, 401);
    });

    test('logout needs the CSRF token and its own origin, not the admin scope', async () => {
      const c = new Client(con.url);
      assert.equal((await c.login({ token: world.tokens.read })).status, 200);
      const refused: [string, Promise<{ status: number }>, number][] = [
        ['no CSRF token', c.request('DELETE', '/v1/admin/session', undefined, { csrf: null }), 403],
        [
          'a wrong CSRF token',
          c.request('DELETE', '/v1/admin/session', undefined, { csrf: admin.csrf! }),
          403,
        ],
        [
          'another origin',
          c.request('DELETE', '/v1/admin/session', undefined, {
            headers: { origin: 'https://evil.example' },
          }),
          403,
        ],
        ['no session', new Client(con.url).request('DELETE', '/v1/admin/session'), 401],
      ];
      for (const [what, pending, status] of refused) assert.equal((await pending).status, status, what);
      assert.equal((await c.request('GET', '/v1/admin/session')).status, 200, 'the session is still open');
      assert.equal(
        (await c.request('DELETE', '/v1/admin/session')).status,
        204,
        'a read-only session logs out',
      );
      assert.equal((await c.request('GET', '/v1/admin/session')).status, 401);
      const { rows } = await world.pool.query(
        `SELECT actor FROM audit_log WHERE action = 'logout' ORDER BY id DESC LIMIT 1`,
      );
      assert.equal(rows[0].actor, 'reader');
    });
  });

  describe('every change needs an admin session and its CSRF token (or an admin bearer token)', () => {
    interface Route {
      name: string;
      /** Makes what the change needs and returns [method, path, body]. */
      prepare(): Promise<[string, string, unknown?]>;
      ok: number;
    }
    let hostCounter = 0;
    const routes: Route[] = [
      { name: 'ban', ok: 202, prepare: async () => ['POST', '/v1/admin/ban', { target: freshAddress() }] },
      {
        name: 'unban',
        ok: 202,
        prepare: async () => ['POST', '/v1/admin/unban', { target: freshAddress(), force: true }],
      },
      {
        name: 'allowlist add',
        ok: 201,
        prepare: async () => ['POST', '/v1/admin/allowlist', { network: `192.0.2.${++hostCounter * 4}/30` }],
      },
      {
        name: 'allowlist remove',
        ok: 204,
        prepare: async () => {
          const network = `192.0.2.${128 + ++hostCounter * 4}/30`;
          await world.pool.query('INSERT INTO allowlist (network) VALUES ($1)', [network]);
          return ['DELETE', `/v1/admin/allowlist/${network}`];
        },
      },
      {
        name: 'host add',
        ok: 201,
        prepare: async () => ['POST', '/v1/admin/hosts', { name: `new${++hostCounter}`, scopes: ['report'] }],
      },
      {
        name: 'host revoke',
        ok: 204,
        prepare: async () => {
          const name = `victim${++hostCounter}`;
          await world.pool.query(
            `INSERT INTO hosts (name, token_hash) VALUES ($1::text, sha256(convert_to($1::text, 'UTF8')))`,
            [name],
          );
          return ['POST', `/v1/admin/hosts/${name}/revoke`];
        },
      },
      {
        name: 'applier forget',
        ok: 204,
        prepare: async () => {
          const name = `applier${++hostCounter}`;
          await world.pool.query(
            `INSERT INTO applier_status (applier, seq, reported_by) VALUES ($1, 0, 'x')`,
            [name],
          );
          return ['DELETE', `/v1/admin/appliers/${name}`];
        },
      },
    ];

    // Routes that change something but are not walked above, each with its own test: logging in (it
    // opens the session the CSRF token belongs to), logging out (any session, with its CSRF token), and an
    // applier's heartbeat (a bearer token only; a cookie is not looked at).
    const OWN_TESTS = ['POST /session', 'DELETE /session', 'POST /appliers/heartbeat'];
    const WALKED: Record<string, string> = {
      ban: 'POST /ban',
      unban: 'POST /unban',
      'allowlist add': 'POST /allowlist',
      'allowlist remove': 'DELETE /allowlist/*network',
      'host add': 'POST /hosts',
      'host revoke': 'POST /hosts/:name/revoke',
      'applier forget': 'DELETE /appliers/:name',
    };

    test('the walk below covers every changing route of the admin API', () => {
      // Read from the express app itself, so that a route added later without being walked fails here.
      type Layer = {
        route?: { path: string; methods: Record<string, boolean> };
        handle?: { stack?: Layer[] };
      };
      const stack = (con.app as unknown as { router: { stack: Layer[] } }).router.stack;
      const api = stack.find((l) => l.handle?.stack?.some((r) => r.route?.path === '/ban'));
      assert.ok(api, 'the /v1/admin router');
      const changing = api
        .handle!.stack!.flatMap((l) =>
          l.route ? Object.keys(l.route.methods).map((m) => `${m.toUpperCase()} ${l.route!.path}`) : [],
        )
        .filter((r) => !/^(GET|HEAD|OPTIONS) /.test(r))
        .sort();
      assert.deepEqual(changing, [...OWN_TESTS, ...Object.values(WALKED)].sort());
      assert.deepEqual(Object.keys(WALKED).sort(), routes.map((r) => r.name).sort());
    });

    for (const route of routes) {
      test(route.name, async () => {
        const [method, path, body] = await route.prepare();
        const before = await auditCount();
        const state = await tables();
        const anonymous = new Client(con.url);
        const refusals: [string, Promise<{ status: number; text: string }>, number][] = [
          ['no credentials', anonymous.request(method, path, body), 401],
          ['admin session without CSRF token', admin.request(method, path, body, { csrf: null }), 403],
          [
            'admin session with a wrong CSRF token',
            admin.request(method, path, body, { csrf: reader.csrf! }),
            403,
          ],
          [
            'admin session and token from another origin',
            admin.request(method, path, body, { headers: { origin: 'https://evil.example' } }),
            403,
          ],
          [
            'admin session and token from another site (Sec-Fetch-Site)',
            admin.request(method, path, body, { headers: { 'sec-fetch-site': 'cross-site' } }),
            403,
          ],
          ['read-only session with its CSRF token', reader.request(method, path, body), 403],
          [
            'read bearer token',
            anonymous.request(method, path, body, { headers: bearer(world.tokens.read) }),
            403,
          ],
          [
            'report bearer token',
            anonymous.request(method, path, body, { headers: bearer(world.tokens.report) }),
            403,
          ],
          [
            'expired or unknown session',
            Object.assign(new Client(con.url), {
              cookie: 'banbus_session=' + 'A'.repeat(43),
              csrf: 'x',
            }).request(method, path, body),
            401,
          ],
        ];
        for (const [what, pending, status] of refusals) {
          const answer = await pending;
          assert.equal(answer.status, status, `${what}: ${answer.status} ${answer.text}`);
        }
        assert.equal(await auditCount(), before, 'nothing was changed or recorded');
        assert.equal(await tables(), state, 'no row was added, removed or revoked');
        const done = await admin.request(method, path, body);
        assert.equal(done.status, route.ok, done.text);
        assert.equal(await auditCount(), before + 1, 'the change is in the audit log');
      });
    }

    test('an admin bearer token needs no CSRF token (a browser never sends it by itself)', async () => {
      const answer = await new Client(con.url).request(
        'POST',
        '/v1/admin/ban',
        { target: freshAddress(), reason: 'script' },
        { headers: bearer(world.tokens.admin) },
      );
      assert.equal(answer.status, 202, answer.text);
      const { rows } = await world.pool.query(`SELECT actor FROM audit_log ORDER BY id DESC LIMIT 1`);
      assert.equal(rows[0].actor, 'operator');
    });

    test('reading needs a session or a read token', async () => {
      assert.equal((await new Client(con.url).request('GET', '/v1/admin/decisions')).status, 401);
      assert.equal((await reader.request('GET', '/v1/admin/decisions')).status, 200);
      const token = await new Client(con.url).request('GET', '/v1/admin/overview', undefined, {
        headers: bearer(world.tokens.read),
      });
      assert.equal(token.status, 200);
      const reportOnly = await new Client(con.url).request('GET', '/v1/admin/overview', undefined, {
        headers: bearer(world.tokens.report),
      });
      assert.equal(reportOnly.status, 403);
    });
  });

  describe('bans: search, pagination, detail', () => {
    const N = 130;
    before(async () => {
      // 130 decisions straight into the tables (the query layer is under test, not the persister): every
      // fifth pair shares a last_seen, so the keyset's tie-break on target matters.
      await world.pool.query(
        `INSERT INTO decisions (target, origin, first_seen, last_seen, expires_at, reporters, ban_count, reason)
         SELECT ('100.64.' || (g / 200) || '.' || (g % 200))::cidr,
                CASE WHEN g % 10 = 0 THEN 'import' ELSE 'fail2ban' END,
                now() - interval '2 days', now() - interval '1 day' + (g / 2) * interval '1 second',
                NULL, 1, 1, 'page'
           FROM generate_series(1, $1::int) g`,
        [N],
      );
      await world.pool.query(
        `INSERT INTO active_bans (target, host, jail, origin, report_id, banned_at, expires_at)
         SELECT ('100.64.' || (g / 200) || '.' || (g % 200))::cidr, 'pager' || (g % 3), CASE WHEN g % 2 = 0 THEN 'even' ELSE 'odd' END,
                'fail2ban', gen_random_uuid(), now(), NULL
           FROM generate_series(1, $1::int) g`,
        [N],
      );
    });

    async function all(query: string, limit: number): Promise<{ targets: string[]; pages: number }> {
      const targets: string[] = [];
      let cursor: string | null = null;
      let pages = 0;
      do {
        const q: string = `${query}&limit=${limit}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`;
        const answer = await admin.request('GET', `/v1/admin/decisions?${q}`);
        assert.equal(answer.status, 200, answer.text);
        const page = answer.body as DecisionPage;
        assert.ok(page.items.length <= limit);
        targets.push(...page.items.map((i) => i.target));
        cursor = page.next;
        pages++;
      } while (cursor);
      return { targets, pages };
    }

    const expected = async (where: string, order: string) =>
      (
        await world.pool.query<{ t: string }>(
          `SELECT host(target) AS t FROM decisions d WHERE ${where} ORDER BY ${order}`,
        )
      ).rows.map((r) => r.t);

    test('keyset pages cover every decision once, newest first, ties broken by target', async () => {
      const { targets, pages } = await all('target=100.64.0.0/16', 7);
      assert.equal(pages, Math.ceil(N / 7));
      assert.deepEqual(targets, await expected(`target <<= '100.64.0.0/16'`, 'last_seen DESC, target DESC'));
      const asc = await all('target=100.64.0.0/16&order=asc', 9);
      assert.deepEqual(asc.targets, [...targets].reverse());
      const byTarget = await all('target=100.64.0.0/16&sort=target', 11);
      assert.deepEqual(byTarget.targets, await expected(`target <<= '100.64.0.0/16'`, 'target'));
    });

    test('filters: jail, host, origin, time', async () => {
      const jail = await all('target=100.64.0.0/16&jail=even', 50);
      assert.equal(jail.targets.length, N / 2);
      const host = await all('host=pager1&jail=odd', 50);
      assert.deepEqual(
        new Set(host.targets),
        new Set(
          (
            await world.pool.query<{ t: string }>(
              `SELECT host(target) AS t FROM active_bans WHERE host = 'pager1' AND jail = 'odd'`,
            )
          ).rows.map((r) => r.t),
        ),
      );
      const origin = await all('origin=import', 50);
      assert.deepEqual(origin.targets, await expected(`origin = 'import'`, 'last_seen DESC, target DESC'));
      const { rows } = await world.pool.query<{ at: Date }>(
        `SELECT last_seen AS at FROM decisions WHERE target = '100.64.0.100'`,
      );
      const since = await all(`target=100.64.0.0/16&since=${rows[0]!.at.toISOString()}`, 50);
      assert.deepEqual(
        since.targets,
        await expected(
          `target <<= '100.64.0.0/16' AND last_seen >= '${rows[0]!.at.toISOString()}'`,
          'last_seen DESC, target DESC',
        ),
      );
      const until = await all(`target=100.64.0.0/16&until=${rows[0]!.at.toISOString()}`, 50);
      assert.equal(since.targets.length + until.targets.length, N);
      const old = await all('target=100.64.0.0/16&until=36h', 50);
      assert.equal(old.targets.length, 0, 'every test decision was last seen about a day ago');
    });

    test('an address finds the network that covers it; the detail shows every report behind it', async () => {
      await world.publish([
        report({
          target: '203.0.113.0/24',
          host: 'web1',
          jail: 'sshd',
          failures: 5,
          matches: 'sshd[1]: Failed password for root from 203.0.113.77',
        }),
        report({ target: '203.0.113.0/24', host: 'web2', jail: 'postfix', failures: 3 }),
      ]);
      const found = await admin.request('GET', '/v1/admin/decisions?target=203.0.113.77');
      assert.equal(found.status, 200);
      const page = found.body as DecisionPage;
      assert.deepEqual(
        page.items.map((i) => i.target),
        ['203.0.113.0/24'],
      );
      assert.deepEqual(page.items[0]!.jails, ['postfix', 'sshd']);
      assert.deepEqual(page.items[0]!.hosts, ['web1', 'web2']);
      const overlap = await admin.request('GET', '/v1/admin/decisions?target=203.0.113.128/25');
      assert.deepEqual(
        (overlap.body as DecisionPage).items.map((i) => i.target),
        ['203.0.113.0/24'],
      );

      const detail = (await admin.request('GET', '/v1/admin/decisions/203.0.113.0/24'))
        .body as DecisionDetail;
      assert.equal(detail.decision?.target, '203.0.113.0/24');
      assert.equal(detail.reports.length, 2);
      const web1 = detail.reports.find((r) => r.host === 'web1')!;
      assert.equal(web1.jail, 'sshd');
      assert.equal(web1.failures, 5);
      assert.match(web1.matches!, /Failed password/);
      assert.equal(web1.active, true);
      assert.equal(detail.active_bans.length, 2);

      const inner = (await admin.request('GET', '/v1/admin/decisions/203.0.113.77')).body as DecisionDetail;
      assert.equal(inner.decision, null);
      assert.deepEqual(
        inner.covering.map((c) => c.target),
        ['203.0.113.0/24'],
      );
    });

    test('bad search parameters are 400 naming the field', async () => {
      const other = (await admin.request('GET', '/v1/admin/decisions?limit=2')).body as DecisionPage;
      const cases: [string, string][] = [
        ['target=300.1.2.3', 'target'],
        ['target=10.0.0.1/8', 'target'],
        ['limit=0', 'limit'],
        ['limit=501', 'limit'],
        ['sort=expires', 'sort'],
        ['order=up', 'order'],
        ['origin=aliens', 'origin'],
        ['since=yesterday', 'since'],
        ['cursor=garbage', 'cursor'],
        [`sort=target&cursor=${encodeURIComponent(other.next!)}`, 'cursor'],
      ];
      for (const [query, field] of cases) {
        const answer = await admin.request('GET', `/v1/admin/decisions?${query}`);
        assert.equal(answer.status, 400, `${query}: ${answer.text}`);
        assert.equal((answer.body as { field: string }).field, field, query);
      }
      assert.equal((await admin.request('GET', '/v1/admin/decisions/not-an-ip')).status, 400);
    });
  });

  describe('actions', () => {
    test('a manual ban becomes a decision through the persister; the unban ends it everywhere', async () => {
      const target = '198.51.100.0/28';
      const ban = await admin.request('POST', '/v1/admin/ban', { target, duration: '2h', reason: 'scanner' });
      assert.equal(ban.status, 202, ban.text);
      const added = await world.listener.next((c) => c.target === target && c.op === 'add');
      assert.equal(added.reason, 'scanner');
      const expiresIn = Date.parse(added.expires_at!) - Date.now();
      assert.ok(expiresIn > 7000_000 && expiresIn <= 7200_000, String(expiresIn));
      const { rows } = await world.pool.query(`SELECT origin, host, outcome FROM reports WHERE target = $1`, [
        target,
      ]);
      assert.deepEqual(rows, [{ origin: 'manual', host: 'alice', outcome: 'banned' }]);

      // A host's ban of an address inside it, then the operator's unban of the network ends both.
      await world.publish([report({ target: '198.51.100.3', host: 'web1' })]);
      const unban = await admin.request('POST', '/v1/admin/unban', { target, reason: 'false positive' });
      assert.equal(unban.status, 202, unban.text);
      assert.deepEqual((unban.body as { lifts: string[] }).lifts.sort(), ['198.51.100.0/28', '198.51.100.3']);
      await world.listener.next((c) => c.target === target && c.op === 'del');
      await world.listener.next((c) => c.target === '198.51.100.3' && c.op === 'del');
    });

    test('bans the policy or the allowlist refuses are 422; bad input is 400 naming the field', async () => {
      await world.pool.query(`INSERT INTO allowlist (network, comment) VALUES ('192.0.2.200/29', 'office')`);
      const cases: [unknown, number, string][] = [
        [{ target: '10.0.0.0/8' }, 422, 'target'],
        [{ target: '192.0.2.201' }, 422, 'target'],
        [{ target: 'nope' }, 400, 'target'],
        [{ target: freshAddress(), duration: 'forever' }, 400, 'duration'],
        [{ target: freshAddress(), duration: 0 }, 400, 'duration'],
        [{ target: freshAddress(), reason: 'two\nlines' }, 400, 'reason'],
        [{}, 400, 'target'],
      ];
      for (const [body, status, field] of cases) {
        const answer = await admin.request('POST', '/v1/admin/ban', body);
        assert.equal(answer.status, status, `${JSON.stringify(body)}: ${answer.text}`);
        assert.equal((answer.body as { field: string }).field, field);
      }
    });

    test('unbanning an address that is only inside a banned network says which network to unban', async () => {
      await world.publish([report({ target: '198.51.100.64/27', host: 'web1' })]);
      const answer = await admin.request('POST', '/v1/admin/unban', { target: '198.51.100.70' });
      assert.equal(answer.status, 404);
      assert.match((answer.body as { error: string }).error, /inside 198\.51\.100\.64\/27/);
    });

    test('an allowlist entry reports the decisions it lifts, and the persister lifts them', async () => {
      // A range of its own: the entry would also lift (and refuse) every other test's addresses inside it.
      const inside = '100.65.7.9';
      const network = '100.65.7.0/24';
      await world.publish([report({ target: inside })]);
      const preview = await admin.request('GET', `/v1/admin/allowlist/preview?network=${network}`);
      assert.ok((preview.body as { lifts: string[] }).lifts.includes(inside));
      const added = await admin.request('POST', '/v1/admin/allowlist', {
        network,
        comment: 'monitoring',
        expires: '7d',
      });
      assert.equal(added.status, 201, added.text);
      const body = added.body as { entry: { network: string; expires_at: string }; lifts: string[] };
      assert.equal(body.entry.network, network);
      assert.ok(body.lifts.includes(inside));
      assert.ok(Date.parse(body.entry.expires_at) > Date.now() + 6 * 86_400_000);
      await world.listener.next((c) => c.target === inside && c.op === 'del');
      const list = (await admin.request('GET', '/v1/admin/allowlist')).body as {
        items: { network: string }[];
      };
      assert.ok(list.items.some((e) => e.network === network));
      assert.equal((await admin.request('DELETE', `/v1/admin/allowlist/${network}`)).status, 204);
      assert.equal((await admin.request('DELETE', `/v1/admin/allowlist/${network}`)).status, 404);
    });

    test('a new host gets its token once; revoking it ends its token and its console sessions', async () => {
      const added = await admin.request('POST', '/v1/admin/hosts', {
        name: 'ops1',
        scopes: ['read', 'admin'],
      });
      assert.equal(added.status, 201, added.text);
      const { token } = added.body as { token: string };
      assert.match(token, /^bb_[A-Za-z0-9_-]{43}$/);
      const list = await admin.request('GET', '/v1/admin/hosts');
      assert.ok(!list.text.includes(token), 'the list never shows a token');
      assert.equal((await admin.request('POST', '/v1/admin/hosts', { name: 'ops1' })).status, 409);
      assert.equal((await admin.request('POST', '/v1/admin/hosts', { name: 'bad name' })).status, 400);
      assert.equal(
        (await admin.request('POST', '/v1/admin/hosts', { name: 'x1', scopes: ['root'] })).status,
        400,
      );

      const ops = new Client(con.url);
      assert.equal((await ops.login({ token })).status, 200);
      assert.equal((await ops.request('GET', '/v1/admin/overview')).status, 200);
      assert.equal((await admin.request('POST', '/v1/admin/hosts/ops1/revoke')).status, 204);
      assert.equal((await ops.request('GET', '/v1/admin/overview')).status, 401, 'the session ended');
      assert.equal((await new Client(con.url).login({ token })).status, 401);
      assert.equal((await admin.request('POST', '/v1/admin/hosts/nobody/revoke')).status, 404);
    });

    test('the audit log records who changed what', async () => {
      const target = freshAddress();
      await admin.request('POST', '/v1/admin/ban', { target, reason: 'audit me' });
      const answer = await reader.request('GET', '/v1/admin/audit?limit=50');
      assert.equal(answer.status, 200);
      const entries = (
        answer.body as {
          items: { actor: string; action: string; target: string; detail: { reason?: string } }[];
        }
      ).items;
      const entry = entries.find((e) => e.target === target)!;
      assert.equal(entry.actor, 'alice');
      assert.equal(entry.action, 'ban');
      assert.equal(entry.detail.reason, 'audit me');
      assert.ok(entries.some((e) => e.action === 'login' && e.actor === 'reader'));
      assert.ok(entries.some((e) => e.action === 'login-failed'));
    });
  });

  describe('overview, appliers and live updates', () => {
    test('appliers report in with a read token; the overview shows their seq and lag', async () => {
      const heartbeat = {
        host: 'edge1',
        seq: 1,
        backend: 'dry-run',
        entries: 3,
        ready: true,
        lag: { seqs: 0, seconds: 0.5 },
      };
      const url = `${con.url}/v1/admin/appliers/heartbeat`;
      const post = (body: unknown, headers: Record<string, string> = bearer(world.tokens.read)) =>
        fetch(url, {
          method: 'POST',
          headers: { 'content-type': 'application/json', ...headers },
          body: JSON.stringify(body),
        });
      assert.equal((await post(heartbeat, {})).status, 401);
      assert.equal(
        (await post(heartbeat, { cookie: admin.cookie!, 'x-csrf-token': admin.csrf! })).status,
        401,
        'a session cookie does not stand in for the token',
      );
      assert.equal((await post(heartbeat, bearer(world.tokens.report))).status, 403);
      const bad = await post({ host: 'edge1', seq: -1 });
      assert.equal(bad.status, 400);
      assert.equal(((await bad.json()) as { field: string }).field, 'seq');
      assert.equal((await post(heartbeat)).status, 204);

      const seq = await waitFor(async () => {
        const o = (await reader.request('GET', '/v1/admin/overview')).body as Overview;
        return o.appliers.find((a) => a.applier === 'edge1') ? o : undefined;
      });
      const edge = seq.appliers.find((a) => a.applier === 'edge1')!;
      assert.equal(edge.seq, 1);
      assert.equal(edge.lag_seqs, seq.published_seq - 1);
      assert.equal(edge.reported_by, 'reader');
      assert.equal(edge.backend, 'dry-run');
      assert.equal(edge.stale, false);
      assert.ok(seq.active_bans > 0);
      assert.equal(seq.bans_per_hour.length, 24);
      assert.ok(seq.bans_per_hour.reduce((n, h) => n + h.bans, 0) > 0);
      assert.ok(seq.top_hosts.some((h) => h.host === 'web1'));
      assert.ok(seq.top_jails.some((j) => j.jail === 'sshd'));
    });

    test('the console reads the route-appliers in CONSOLE_APPLIERS: seq, lag, and the one that stops answering', async () => {
      const agg = await world.startAggregator();
      const applier = await world.startApplier('edge-poll', agg);
      await waitFor(() => applier.applier.ready, { what: "the applier's first snapshot" });
      const down = 'http://127.0.0.1:9';
      const polling = await world.startConsole({
        CONSOLE_APPLIERS: [applier.url, down],
        CONSOLE_APPLIER_POLL: 3600,
      });
      const c = new Client(polling.url);
      await c.login({ token: world.tokens.read });
      const edge = async () =>
        ((await c.request('GET', '/v1/admin/overview')).body as Overview).appliers.find(
          (a) => a.applier === 'edge-poll',
        );
      // Read once at start, without any heartbeat being posted.
      const first = await waitFor(edge, { what: 'edge-poll in the overview' });
      assert.equal(first.backend, 'dry-run');
      assert.equal(first.reported_by, applier.url);
      assert.equal(first.ready, true);

      const target = freshAddress();
      const change = await world.publish([report({ target })]);
      await waitFor(() => applier.applier.seq >= change.seq, { what: 'the applier to apply the ban' });
      const results = await polling.appliers.poll();
      assert.deepEqual(
        results.map((r) => ('error' in r ? `${r.url} error` : `${r.url} ${r.heartbeat.seq}`)),
        [`${applier.url} ${applier.applier.seq}`, `${down} error`],
      );
      const now = await waitFor(async () => {
        polling.queries.invalidate();
        const e = await edge();
        return e && e.seq >= change.seq ? e : undefined;
      });
      assert.equal(now.entries, applier.applier.kernelView.size);

      // It stops answering: the row stays with its last seq, and its lag grows with the stream.
      await applier.stop();
      const later = await world.publish([report({ target: freshAddress() })]);
      const after = await polling.appliers.poll();
      assert.ok('error' in after[0]!, 'the stopped applier does not answer');
      const behind = await waitFor(async () => {
        polling.queries.invalidate();
        const o = (await c.request('GET', '/v1/admin/overview')).body as Overview;
        return o.published_seq >= later.seq ? o : undefined;
      });
      const stale = behind.appliers.find((a) => a.applier === 'edge-poll')!;
      assert.equal(stale.seq, now.seq);
      assert.ok(stale.lag_seqs >= later.seq - now.seq, JSON.stringify(stale));
      await polling.stop();
      await agg.stop();
    });

    test('the event stream announces new decisions and audit entries as they happen', async () => {
      const controller = new AbortController();
      const res = await fetch(`${con.url}/v1/admin/events`, {
        headers: { cookie: reader.cookie! },
        signal: controller.signal,
      });
      assert.equal(res.status, 200);
      assert.match(res.headers.get('content-type') ?? '', /^text\/event-stream/);
      const reader2 = res.body!.getReader();
      let buffer = '';
      const events: { event: string; data: { seq?: number; action?: string; target?: string } }[] = [];
      const pump = (async () => {
        const decoder = new TextDecoder();
        for (;;) {
          const { value, done } = await reader2.read().catch(() => ({ value: undefined, done: true }));
          if (done) return;
          buffer += decoder.decode(value, { stream: true });
          let end;
          while ((end = buffer.indexOf('\n\n')) >= 0) {
            const block = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            const event = /^event: (.*)$/m.exec(block)?.[1];
            const data = /^data: (.*)$/m.exec(block)?.[1];
            if (event && data) events.push({ event, data: JSON.parse(data) });
          }
        }
      })();
      await waitFor(() => events.some((e) => e.event === 'hello'));
      const target = freshAddress();
      const change = await world.publish([report({ target })]);
      await waitFor(() => events.some((e) => e.event === 'decisions' && (e.data.seq ?? 0) >= change.seq), {
        what: 'a decisions event',
      });
      await admin.request('POST', '/v1/admin/unban', { target });
      await waitFor(() => events.some((e) => e.event === 'audit' && e.data.target === target), {
        what: 'an audit event',
      });
      controller.abort();
      await pump;
    });
  });

  describe('the web UI', () => {
    test('is served with a strict Content-Security-Policy and no data in the page', async () => {
      const res = await fetch(`${con.url}/`);
      assert.equal(res.status, 200);
      const csp = res.headers.get('content-security-policy') ?? '';
      assert.match(csp, /script-src 'self'/);
      assert.doesNotMatch(csp, /unsafe-inline/);
      assert.equal(res.headers.get('x-frame-options'), 'DENY');
      assert.match(await res.text(), /<script type="module" src="app.js"><\/script>/);
      const js = await fetch(`${con.url}/app.js`);
      assert.equal(js.status, 200);
      assert.doesNotMatch(await js.text(), /innerHTML|outerHTML|insertAdjacentHTML|document\.write/);
      const missing = await fetch(`${con.url}/v1/admin/nothing`, { headers: { cookie: admin.cookie! } });
      assert.equal(missing.status, 404);
    });

    test('a jail named <script> comes back as the same text in JSON', async () => {
      const jail = '<script>alert(1)</script>';
      const target = freshAddress();
      await world.publish([report({ target, jail })]);
      const detail = await admin.request('GET', `/v1/admin/decisions/${target}`);
      assert.match(detail.headers.get('content-type') ?? '', /^application\/json/);
      assert.equal(detail.headers.get('x-content-type-options'), 'nosniff');
      assert.equal((detail.body as DecisionDetail).reports[0]!.jail, jail);
    });
  });
});
