// The console in a real browser (Debian's chromium driven by playwright-core): log in, find why an address
// is blocked, lift it everywhere, allowlist a network, add a host. The pipeline behind it is real too: the
// persister makes the decisions and an aggregator serves the blocklist the unban must leave. A screenshot
// of each main page goes to test/artifacts/.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { hashToken } from '@banbus/db';
import { DryRunBackend } from '@banbus/route-applier';
import { waitFor } from '../../../test/harness/index.js';
import {
  PASSWORD,
  createWorld,
  report,
  type TestAggregator,
  type TestApplier,
  type TestConsole,
  type World,
} from './setup.js';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const ARTIFACTS = fileURLToPath(new URL('../../../test/artifacts/', import.meta.url));
// The page.evaluate callbacks run in the browser, where these exist; the test program has no DOM library.
declare const window: { location: { hash: string } };
declare const document: {
  cookie: string;
  querySelector(s: string): { textContent: string | null } | null;
  querySelectorAll(s: string): { length: number };
};

const XSS_JAIL = '<script>window.__xss=1</script>';
const XSS_MATCHES = '<img src=x onerror="window.__xss=2">';

describe(
  'console in a browser',
  // Skipped only outside CI: .ci/run installs chromium, so there a missing browser fails the run.
  {
    skip:
      existsSync(CHROMIUM) || process.env.CI ? false : `no browser at ${CHROMIUM} (apt-get install chromium)`,
  },
  () => {
    let world: World;
    let con: TestConsole;
    let agg: TestAggregator;
    let applier: TestApplier;
    let context: BrowserContext;
    let page: Page;
    let profile: string;
    const problems: string[] = [];

    before(async () => {
      world = await createWorld();
      agg = await world.startAggregator();
      // A real route-applier (dry-run backend) that the console reads on its /v1/status.
      applier = await world.startApplier('edge-browser', agg);
      await waitFor(() => applier.applier.ready, { what: "the applier's first snapshot" });
      con = await world.startConsole({ CONSOLE_APPLIERS: [applier.url] });
      // Its first read runs in the background at start; this one is awaited, so the overview has it.
      await con.appliers.poll();
      await world.publish([
        report({
          target: '203.0.113.0/24',
          host: 'web1',
          jail: 'sshd',
          failures: 6,
          matches: 'sshd[812]: Failed password for root from 203.0.113.77 port 52114 ssh2',
        }),
        report({ target: '203.0.113.0/24', host: 'web2', jail: 'postfix-sasl', failures: 3 }),
        report({ target: '198.51.100.55', host: 'web2', jail: 'sshd' }),
        report({ target: '198.19.5.5', host: 'web3', jail: XSS_JAIL, matches: XSS_MATCHES }),
      ]);
      await fetch(`${con.url}/v1/admin/appliers/heartbeat`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${world.tokens.read}` },
        body: JSON.stringify({
          host: 'edge1',
          seq: 1,
          backend: 'dry-run',
          entries: 2,
          ready: true,
          lag: { seconds: 0 },
        }),
      });

      mkdirSync(ARTIFACTS, { recursive: true });
      profile = mkdtempSync(join(tmpdir(), 'banbus-chromium-'));
      // launchPersistentContext passes the fresh profile as --user-data-dir; headless adds --headless.
      context = await chromium.launchPersistentContext(profile, {
        executablePath: CHROMIUM,
        headless: true,
        args: [
          '--no-sandbox',
          '--disable-gpu',
          '--disable-quic',
          '--no-first-run',
          '--disable-background-networking',
          '--disable-component-update',
          '--disable-sync',
        ],
        viewport: { width: 1400, height: 900 },
      });
      page = context.pages()[0] ?? (await context.newPage());
      page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
      page.on('console', (msg) => {
        // The session probe before logging in and the wrong password are answered 401, which the browser logs.
        if (msg.type() === 'error' && !/status of 401/.test(msg.text()))
          problems.push(`console error: ${msg.text()}`);
      });
      page.on('dialog', (dialog) => {
        if (dialog.type() === 'confirm') void dialog.accept();
        else {
          problems.push(`unexpected ${dialog.type()}: ${dialog.message()}`);
          void dialog.dismiss();
        }
      });
    });

    after(async () => {
      await context?.close();
      if (profile) rmSync(profile, { recursive: true, force: true });
      await world?.close();
    });

    const shot = (name: string) =>
      page.screenshot({ path: join(ARTIFACTS, `console-${name}.png`), fullPage: true });
    const go = async (hash: string) => {
      await page.evaluate((h) => (window.location.hash = h), hash);
    };
    const blocklist = async () => {
      const res = await fetch(`${agg.url}/v1/blocklist.txt`, {
        headers: { authorization: `Bearer ${world.tokens.read}` },
      });
      return (await res.text()).split('\n').filter((l) => l && !l.startsWith('#'));
    };

    test('log in with a password; the overview updates live', async () => {
      await page.goto(con.url);
      await page.waitForSelector('#login-form');
      await shot('login');
      await page.fill('#login-user', 'alice');
      await page.fill('#login-password', 'not the password');
      await page.click('#login-submit');
      await page.waitForSelector('#login-error:has-text("wrong user name or password")');
      await page.fill('#login-password', PASSWORD);
      await page.click('#login-submit');
      await page.waitForSelector('#active-bans');
      assert.equal(await page.textContent('#who'), 'alice');
      const before = Number(await page.textContent('#active-bans'));
      assert.ok(before >= 3);
      // The chart's last bar is this hour, where the test's bans were made.
      assert.ok(Number(await page.locator('#bans-per-hour rect.bar').last().getAttribute('height')) > 0);
      assert.ok(await page.isVisible('text=edge1'), 'the applier that reported in is listed');
      assert.ok(await page.isVisible('text=edge-browser'), 'the route-applier the console reads is listed');
      // The session cookie is out of reach of scripts.
      assert.equal(await page.evaluate(() => document.cookie), '');

      // A ban from a host arrives over the event stream; the page is not reloaded.
      await page.evaluate(() => ((window as unknown as { marker: number }).marker = 1));
      await world.publish([report({ target: '198.19.9.9', host: 'web4', jail: 'nginx-botsearch' })]);
      await page.waitForFunction(
        (n) => Number(document.querySelector('#active-bans')?.textContent) === n + 1,
        before,
      );
      assert.equal(
        await page.evaluate(() => (window as unknown as { marker?: number }).marker),
        1,
        'no reload',
      );
      await shot('overview');
    });

    test('an address finds the network covering it; its reports show why', async () => {
      await go('#/bans');
      await page.waitForSelector('#search-form');
      await page.fill('#f-target', '203.0.113.77');
      await page.click('#search');
      // The unfiltered list shown before the search holds the row too: wait for the answer to the search.
      await page.waitForFunction(() => document.querySelectorAll('#results tbody tr').length === 1);
      const row = page.locator('tr[data-target="203.0.113.0/24"]');
      await row.waitFor();
      assert.match(await row.innerText(), /postfix-sasl[\s\S]*sshd[\s\S]*web1[\s\S]*web2/);
      await shot('bans');

      await row.locator('a').click();
      await page.waitForSelector('#detail-target:has-text("203.0.113.0/24")');
      const reports = page.locator('tr.report');
      assert.equal(await reports.count(), 2);
      const text = await page.locator('main').innerText();
      assert.match(
        text,
        /web1\s+sshd\s+ban\s+6\s+sshd\[812\]: Failed password for root from 203\.0\.113\.77/,
      );
      assert.match(text, /web2\s+postfix-sasl\s+ban\s+3/);
      await shot('detail');
    });

    test('unban lifts it everywhere: the blocklist and the route-applier lose it', async () => {
      assert.ok((await blocklist()).includes('203.0.113.0/24'));
      const kernel = applier.backend;
      assert.ok(kernel instanceof DryRunBackend);
      await waitFor(() => kernel.entries.has('203.0.113.0/24'), { what: 'the applier to hold the ban' });
      await page.click('button.unban[data-target="203.0.113.0/24"]');
      await waitFor(async () => !(await blocklist()).includes('203.0.113.0/24'), {
        what: 'the blocklist to lose 203.0.113.0/24',
      });
      await waitFor(() => !kernel.entries.has('203.0.113.0/24'), {
        what: "the route-applier's set to lose 203.0.113.0/24",
      });
      // The detail page follows the stream by itself.
      await page.waitForSelector('#status:has-text("not banned")');
      assert.equal(await page.locator('tr.report').count(), 3, 'the unban is one more report behind it');
    });

    test('an allowlist entry shows the decision it covers, and lifts it', async () => {
      assert.ok((await blocklist()).includes('198.51.100.55'));
      await go('#/allowlist');
      await page.waitForSelector('#allow-form');
      await page.fill('#allow-network', '198.51.100.0/24');
      await page.waitForSelector('#allow-preview:has-text("198.51.100.55")');
      await page.fill('#allow-comment', 'partner network');
      await page.fill('#allow-expires', '30d');
      await page.click('#allow-submit');
      await page.waitForSelector('#allow-preview:has-text("lifted 1 decision")');
      await page.waitForSelector('tr[data-network="198.51.100.0/24"]:has-text("partner network")');
      await waitFor(async () => !(await blocklist()).includes('198.51.100.55'), {
        what: 'the persister to lift 198.51.100.55',
      });
      await shot('allowlist');
    });

    test('a new host shows its token once', async () => {
      await go('#/hosts');
      await page.waitForSelector('#host-form');
      await page.fill('#host-name', 'web9');
      await page.check('#host-scope-read');
      await page.click('#host-submit');
      const token = (await page.locator('#token-value').textContent()) ?? '';
      assert.match(token, /^bb_[A-Za-z0-9_-]{43}$/);
      const { rows } = await world.pool.query('SELECT token_hash, scopes FROM hosts WHERE name = $1', [
        'web9',
      ]);
      assert.deepEqual(rows[0].token_hash, hashToken(token));
      assert.deepEqual(rows[0].scopes, ['report', 'read']);
      await shot('hosts');
      await go('#/overview');
      await page.waitForSelector('#active-bans');
      await go('#/hosts');
      await page.waitForSelector('tr[data-host="web9"]');
      assert.equal(await page.locator('#new-token').count(), 0);
      assert.ok(!(await page.content()).includes(token), 'the token is gone once the page is left');
    });

    test('a jail named <script> is shown as text and runs nothing', async () => {
      await go('#/bans?target=198.19.5.5');
      const row = page.locator('tr[data-target="198.19.5.5"]');
      await row.waitFor();
      assert.ok((await row.innerText()).includes(XSS_JAIL));
      await row.locator('a').click();
      await page.waitForSelector('#detail-target:has-text("198.19.5.5")');
      assert.equal(await page.locator('td.jail').first().textContent(), XSS_JAIL);
      assert.ok((await page.locator('main').innerText()).includes(XSS_MATCHES));
      assert.equal(await page.locator('main script, main img').count(), 0);
      assert.equal(await page.evaluate(() => (window as unknown as { __xss?: number }).__xss), undefined);
    });

    test('the audit log shows who changed what', async () => {
      await go('#/audit');
      await page.waitForSelector('#audit tbody tr');
      const text = await page.locator('#audit').innerText();
      assert.match(text, /alice\s+unban\s+203\.0\.113\.0\/24/);
      assert.match(text, /alice\s+allowlist-add\s+198\.51\.100\.0\/24/);
      assert.match(text, /alice\s+host-add\s+web9/);
      assert.match(text, /alice\s+login/);
      await shot('audit');
      assert.deepEqual(problems, [], 'no script errors, CSP violations or unexpected dialogs');
    });
  },
);
