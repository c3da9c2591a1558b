// BlocklistBuilder with its real worker thread, fed from a DecisionSet without PostgreSQL or RabbitMQ:
// what it serves must be what core's text functions give for the same targets.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { mergeTargets, renderBlocklist, type MergedBlocklist } from '@banbus/core';
import { createLogger } from '@banbus/runtime';
import { waitFor } from '../../../test/harness/wait.js';
import { BlocklistBuilder, StaleBuildError } from '../src/builder.js';
import { DecisionSet } from '../src/state.js';

const decode = (bytes: Uint8Array) => new TextDecoder().decode(bytes);

describe('BlocklistBuilder', () => {
  const set = new DecisionSet();
  let failNext = false;
  const builder = new BlocklistBuilder({
    // Into the builder's shared buffers, as the service does: every build reuses them.
    source: (buffers) => {
      if (failNext) {
        failNext = false;
        throw new Error('source broke');
      }
      return set.columns(buffers);
    },
    debounceMs: 5,
    logger: createLogger({ level: 'silent' }),
  });
  after(() => builder.stop());

  const targets = ['10.0.0.0/25', '10.0.0.128/25', '192.0.2.7', '198.51.100.0/24', '2001:db8::1', '::1'];
  const change = (seq: number, apply: () => void) => {
    apply();
    set.seq = seq;
    builder.schedule();
    return builder.waitForSeq(seq);
  };

  test('a build serves the merged list of the set, in every format', async () => {
    const build = await change(1, () => targets.forEach((t) => set.put(t, null, 'sshd')));
    assert.deepEqual(build.counts, { v4: 3, v6: 2 });
    const whole = mergeTargets(targets);
    for (const format of ['plain', 'nftables', 'ipset', 'json'] as const) {
      for (const family of [4, 6, 'all'] as const) {
        const served = decode(await builder.render(build, { family, format }));
        const options = { family, format, generatedAt: build.generatedAt, seq: 1 };
        assert.equal(served, renderBlocklist(whole, options), `${format} ${family}`);
      }
    }
  });

  test('a part is the slice of the list: IPv4 first, then IPv6', async () => {
    const build = builder.current!;
    const whole = mergeTargets(targets);
    const part = decode(await builder.render(build, { family: 'all', format: 'plain', from: 2, to: 4 }));
    assert.equal(part, expected({ v4: whole.v4.slice(2), v6: whole.v6.slice(0, 1) }, 1, build.generatedAt));
  });

  test('a render of a build two builds old is refused as stale', async () => {
    const first = builder.current!;
    await change(2, () => set.delete('192.0.2.7'));
    const second = await change(3, () => set.put('203.0.113.9', null, null));
    await assert.rejects(builder.render(first, { family: 'all', format: 'plain' }), StaleBuildError);
    const served = decode(await builder.render(second, { family: 4, format: 'plain' }));
    assert.ok(served.includes('\n203.0.113.9\n') && !served.includes('192.0.2.7'));
  });

  test('a failed build keeps the last good one served; the next change builds again', async () => {
    const good = builder.current!;
    failNext = true;
    builder.schedule();
    // The failure is retried on its own after a while; a change in the meantime builds at once.
    const next = await change(4, () => set.put('203.0.113.10', null, null));
    assert.ok(next.id > good.id && next.seq === 4);
  });
});

describe('BlocklistBuilder with BLOCKLIST_DIR', () => {
  test('writes the three files atomically after each build', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'banbus-builder-'));
    const set = new DecisionSet();
    const builder = new BlocklistBuilder({
      // Fresh arrays per build (transferred to the worker), the other way a source may answer.
      source: () => set.columns(),
      debounceMs: 5,
      dir,
      logger: createLogger({ level: 'silent' }),
    });
    try {
      set.put('192.0.2.1', null, null);
      set.put('2001:db8::/48', null, null);
      set.seq = 5;
      builder.schedule(true);
      const build = await builder.waitForSeq(5);
      const text = await waitFor(async () => {
        const t = await readFile(join(dir, 'blocklist.txt'), 'utf8').catch(() => '');
        return t.includes('# seq: 5\n') ? t : undefined;
      });
      const list = { v4: ['192.0.2.1'], v6: ['2001:db8::/48'] };
      assert.equal(text, expected(list, 5, build.generatedAt));
      assert.equal(
        await readFile(join(dir, 'blocklist4.txt'), 'utf8'),
        renderBlocklist(list, { family: 4, format: 'plain', generatedAt: build.generatedAt, seq: 5 }),
      );
      assert.equal(
        await readFile(join(dir, 'blocklist6.txt'), 'utf8'),
        renderBlocklist(list, { family: 6, format: 'plain', generatedAt: build.generatedAt, seq: 5 }),
      );
    } finally {
      await builder.stop();
      await rm(dir, { recursive: true, force: true });
    }
  });
});

function expected(list: MergedBlocklist, seq: number, generatedAt: Date): string {
  return renderBlocklist(list, { family: 'all', format: 'plain', generatedAt, seq });
}
