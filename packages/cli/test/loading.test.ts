// What `banbus run route-applier` carries in memory: the CLI and the applier, not the database client,
// the migration tool or the import's progress bar. Every host runs the applier, with a memory target
// (docs/route-applier.md), so the CLI loads those only in the commands that use them.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** The CommonJS packages a fresh process has loaded after importing `modules`. */
async function packagesLoadedBy(modules: string[]): Promise<string[]> {
  const script = `
    import { createRequire } from 'node:module';
    for (const m of ${JSON.stringify(modules)}) await import(m);
    const names = new Set();
    for (const file of Object.keys(createRequire(import.meta.url).cache)) {
      const m = /node_modules\\/((?:@[^/]+\\/)?[^/]+)\\//.exec(file.slice(file.lastIndexOf('node_modules/')));
      if (m) names.add(m[1]);
    }
    process.stdout.write(JSON.stringify([...names]));
  `;
  // The same loader and conditions as this test process: the packages' sources, as the tests run them.
  const { stdout } = await run(process.execPath, [...process.execArgv, '--input-type=module', '-e', script]);
  return JSON.parse(stdout) as string[];
}

test('the CLI with the route-applier loads neither pg nor cli-progress; a database command does', async () => {
  const applier = await packagesLoadedBy(['@banbus/cli', '@banbus/route-applier']);
  // The check itself sees CommonJS packages: commander and amqplib are loaded by these two.
  assert.ok(applier.includes('commander'), `commander not seen in ${applier.join(', ')}`);
  assert.ok(applier.includes('amqplib'), `amqplib not seen in ${applier.join(', ')}`);
  for (const heavy of ['pg', 'pg-pool', 'cli-progress']) {
    assert.ok(!applier.includes(heavy), `${heavy} is loaded with the route-applier`);
  }
  const withDb = await packagesLoadedBy(['@banbus/cli', '@banbus/db']);
  assert.ok(withDb.includes('pg'), 'pg is not seen even where @banbus/db is loaded');
});
