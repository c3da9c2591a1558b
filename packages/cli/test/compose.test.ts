// docker-compose.yml, checked without a Docker engine: Debian's docker-compose validates it against the
// compose schema (`config -q`), and every banbus container's command must be one this build can run.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { parse } from 'yaml';
import { SERVICES, createProgram } from '@banbus/cli';

const run = promisify(execFile);
const root = fileURLToPath(new URL('../../../', import.meta.url));

interface Service {
  image?: string;
  command?: string[];
  user?: string;
  profiles?: string[];
  network_mode?: string;
  cap_add?: string[];
  healthcheck?: { test: string[] };
  depends_on?: Record<string, { condition: string }>;
  volumes?: (string | { source: string })[];
}

// Values from the caller's shell would take precedence over the env file under test.
const cleanEnv = Object.fromEntries(
  Object.entries(process.env).filter(
    ([k]) => !/(_PASSWORD|_PUBLISH|_TOKEN)$|^(BANBUS|APPLIER|THREECX|IMPORTER)_|^LOG_LEVEL$/.test(k),
  ),
);

/** `docker-compose config` with .env.example as the .env: the compose file as Docker would run it. */
async function compose(envFile = '.env.example', ...args: string[]) {
  return run(
    'docker-compose',
    [
      '--env-file',
      envFile,
      '-f',
      'docker-compose.yml',
      '--profile',
      '3cx',
      '--profile',
      'applier',
      'config',
      ...args,
    ],
    { cwd: root, env: { ...cleanEnv, BANBUS_ENV_FILE: envFile } },
  ).catch((err: NodeJS.ErrnoException & { stderr?: string }) => {
    if (err.code === 'ENOENT')
      throw new Error('docker-compose is not installed (apt-get install docker-compose; .ci/run does)');
    throw err;
  });
}

describe('docker-compose.yml', async () => {
  test('is valid for docker-compose (schema, interpolation, profiles)', async () => {
    await compose('.env.example', '-q');
  });

  test('refuses to start without the passwords', async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'banbus-compose-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const empty = join(dir, '.env');
    await writeFile(empty, '# nothing set\n');
    await assert.rejects(compose(empty, '-q'), (err: { stderr: string }) => {
      assert.match(err.stderr, /set (POSTGRES|RABBITMQ)_PASSWORD in \.env/);
      return true;
    });
  });

  const config = parse((await compose()).stdout) as { services: Record<string, Service>; volumes: object };
  const banbus = Object.entries(config.services).filter(([, s]) => s.image?.startsWith('banbus'));
  const program = createProgram({ env: {}, out: () => {}, err: () => {} });

  test('has the services the deployment needs', () => {
    assert.deepEqual(Object.keys(config.services).sort(), [
      'aggregator',
      'console',
      'importer-3cx',
      'ingest',
      'migrate',
      'persister',
      'postgres',
      'rabbitmq',
      'route-applier',
    ]);
    for (const name of ['postgres', 'rabbitmq']) {
      assert.ok(config.services[name]!.healthcheck, `${name} has a health check`);
      assert.ok(config.services[name]!.volumes?.length, `${name} keeps its data in a volume`);
    }
    assert.deepEqual(Object.keys(config.volumes).sort(), [
      'importer-3cx-state',
      'postgres-data',
      'rabbitmq-data',
    ]);
  });

  for (const [name, service] of banbus) {
    const command = service.command ?? [];
    if (command[0] === 'run') {
      const target = command[1]!;
      test(`${name}: \`banbus run ${target}\` is a service of this build`, () => {
        assert.ok(
          (SERVICES as readonly string[]).includes(target),
          `${target} is not in SERVICES (${SERVICES.join(', ')})`,
        );
      });
    } else {
      test(`${name}: \`banbus ${command.join(' ')}\` is a command of this build`, () => {
        assert.ok(
          program.commands.some((c) => c.name() === command[0]),
          `no banbus command ${command[0]}`,
        );
      });
    }
  }

  test('long-running banbus services have health checks and wait for healthy dependencies', () => {
    for (const [name, service] of banbus) {
      if (name === 'migrate') continue;
      assert.ok(
        service.healthcheck?.test.join(' ').includes('/readyz') ||
          service.healthcheck?.test.join(' ').includes('/healthz'),
        name,
      );
      for (const [dep, { condition }] of Object.entries(service.depends_on ?? {})) {
        assert.equal(
          condition,
          dep === 'migrate' ? 'service_completed_successfully' : 'service_healthy',
          `${name} → ${dep}`,
        );
      }
    }
    assert.equal(config.services.migrate!.depends_on?.postgres?.condition, 'service_healthy');
  });

  test('only the route-applier runs as root, in the host network, with NET_ADMIN; it and the importer are opt-in', async () => {
    const applier = config.services['route-applier']!;
    assert.equal(applier.user, 'root');
    assert.equal(applier.network_mode, 'host');
    assert.deepEqual(applier.cap_add, ['NET_ADMIN']);
    assert.deepEqual(applier.profiles, ['applier']);
    assert.deepEqual(config.services['importer-3cx']!.profiles, ['3cx']);
    for (const [name, service] of banbus) {
      if (name === 'route-applier') continue;
      assert.equal(service.user, undefined, `${name} runs as the image's user`);
      assert.equal(service.cap_add, undefined, name);
    }
    const dockerfile = await readFile(`${root}/Dockerfile`, 'utf8');
    assert.match(dockerfile, /^USER node$/m);
    assert.match(dockerfile, /^ENTRYPOINT \["node", "packages\/cli\/bin\/banbus\.js"\]$/m);
  });
});
