// `banbus run all` in the test's process, on a free loopback port, as the end-to-end tests start it.
import { runService, type RunningService } from '@banbus/cli';
import { freePort } from '../bench/lib.js';

/** Starts the central services with `env` (plus `extra`); `base` is where ingest answers. */
export async function runAll(
  env: Record<string, string>,
  extra: Record<string, string> = {},
): Promise<{ running: RunningService; base: string }> {
  const port = await freePort();
  const running = await runService('all', {
    ...env,
    INGEST_PORT: String(port),
    AGGREGATOR_PORT: '0',
    CONSOLE_PORT: '0',
    BANBUS_LISTEN: '127.0.0.1',
    ...extra,
  });
  return { running, base: `http://127.0.0.1:${port}` };
}
