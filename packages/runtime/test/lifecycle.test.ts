import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { startWithResources } from '../src/index.js';

describe('startWithResources', () => {
  test('stop stops the service, then closes what it opened, last opened first', async () => {
    const events: string[] = [];
    const running = await startWithResources(async (resources) => {
      resources.hold('pool', async (r) => void events.push(`close ${r}`));
      resources.hold('bus', async (r) => void events.push(`close ${r}`));
      return { port: 8080, stop: async () => void events.push('stop service') };
    });
    assert.equal(running.port, 8080);
    assert.deepEqual(events, []);
    await running.stop();
    assert.deepEqual(events, ['stop service', 'close bus', 'close pool']);
  });

  test('a start that fails closes what was opened and throws its own error', async () => {
    const closed: string[] = [];
    await assert.rejects(
      startWithResources(async (resources) => {
        resources.hold('pool', async (r) => void closed.push(r));
        resources.hold('bus', async () => {
          throw new Error('close failed too');
        });
        throw new Error('broker refused');
      }),
      /broker refused/,
    );
    assert.deepEqual(closed, ['pool']);
  });
});
