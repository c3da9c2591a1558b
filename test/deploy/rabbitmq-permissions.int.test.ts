// docs/rabbitmq.md gives each host's route-applier a RabbitMQ user of its own, limited by permission
// regexes to its own queue. This checks those exact regexes on the local broker: what an applier does
// is allowed, what could harm the fleet (reading reports, touching another host's or the persister's
// queue, publishing reports, redeclaring shared exchanges) is refused.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import { connect, type Channel, type ChannelModel } from 'amqplib';
import { Bus, topology, type Topology } from '@banbus/bus';
import { createLogger } from '@banbus/runtime';
import { amqpTestUrl, deleteNamespace, testNamespace } from '../harness/index.js';

const run = promisify(execFile);

/** The permissions docs/rabbitmq.md tells the operator to set for host HOST in namespace NS. */
function applierPermissions(ns: string, host: string): { configure: string; write: string; read: string } {
  const q = (s: string) => s.replace(/[.\\^$|?*+()[\]{}-]/g, '\\$&');
  return {
    configure: `^${q(ns)}\\.applier\\.${q(host)}$`,
    write: `^${q(ns)}\\.(applier\\.${q(host)}|dead-letter)$`,
    read: `^${q(ns)}\\.(applier\\.${q(host)}|decisions)$`,
  };
}

const user = `bbt-${randomBytes(4).toString('hex')}-web1`;
const password = randomBytes(12).toString('hex');
const host = 'web1';
let ns: string;
let t: Topology;
let amqpUrl: string;
let restricted: ChannelModel;

async function rabbitmqctl(...args: string[]): Promise<void> {
  await run('rabbitmqctl', ['-q', ...args], { timeout: 60_000 });
}

/** Runs `fn` on a fresh channel of the restricted user; resolves with the broker's refusal, if any. */
async function attempt(fn: (ch: Channel) => Promise<unknown>): Promise<string | null> {
  const channel = await restricted.createConfirmChannel();
  let closedWith: string | null = null;
  channel.on('error', (err: Error) => (closedWith = err.message));
  try {
    await fn(channel);
    await channel.waitForConfirms();
    await channel.close();
    return null;
  } catch (err) {
    return closedWith ?? (err as Error).message;
  }
}

before(async () => {
  amqpUrl = await amqpTestUrl();
  ns = testNamespace();
  t = topology(ns);
  // The central services declare the shared topology (as ingest, persister and aggregator do).
  const bus = await Bus.connect({ url: amqpUrl, namespace: ns, logger: createLogger({ level: 'silent' }) });
  await bus.close();
  const p = applierPermissions(ns, host);
  await rabbitmqctl('add_user', user, password);
  await rabbitmqctl('set_permissions', '-p', '/', user, p.configure, p.write, p.read);
  const url = new URL(amqpUrl);
  url.username = user;
  url.password = password;
  restricted = await connect(url.toString());
  restricted.on('error', () => undefined);
});

after(async () => {
  await restricted?.close().catch(() => undefined);
  await rabbitmqctl('delete_user', user).catch(() => undefined);
  if (amqpUrl) await deleteNamespace(amqpUrl, ns, [t.applierQueue(host), t.applierQueue('web2')]);
});

describe('per-host RabbitMQ user of a route-applier (docs/rabbitmq.md)', () => {
  test('may declare, bind and consume its own queue, check the decision exchange, and dead-letter', async () => {
    const queue = t.applierQueue(host);
    assert.equal(
      await attempt(async (ch) => {
        await ch.assertQueue(queue, {
          durable: true,
          arguments: {
            'x-queue-type': 'quorum',
            'x-expires': 604_800_000,
            'x-max-length': 100_000,
            'x-overflow': 'drop-head',
          },
        });
        await ch.checkExchange(t.decisionsExchange);
        await ch.bindQueue(queue, t.decisionsExchange, '');
        await ch.consume(queue, () => undefined);
        ch.publish(t.deadLetterExchange, 'dead', Buffer.from('{}'), { persistent: true });
      }),
      null,
    );
  });

  const refused: [string, (ch: Channel) => Promise<unknown>][] = [
    [
      'read the reports (bind its queue to <ns>.reports)',
      (ch) => ch.bindQueue(t.applierQueue(host), t.reportsExchange, '#'),
    ],
    ['consume the persister queue', (ch) => ch.consume(t.persisterQueue, () => undefined)],
    ['delete the persister queue', (ch) => ch.deleteQueue(t.persisterQueue)],
    [
      "declare another host's queue",
      (ch) =>
        ch.assertQueue(t.applierQueue('web2'), { durable: true, arguments: { 'x-queue-type': 'quorum' } }),
    ],
    [
      'redeclare a shared exchange',
      (ch) => ch.assertExchange(t.decisionsExchange, 'fanout', { durable: true }),
    ],
    ['publish reports', async (ch) => ch.publish(t.reportsExchange, 'report.ban', Buffer.from('{}'))],
    ['publish decisions', async (ch) => ch.publish(t.decisionsExchange, '', Buffer.from('{}'))],
  ];
  // @banbus/bus declares the whole shared topology (reports, persister, dead-letter queues) on every
  // connect, which needs configure permission on all of it. Until the route-applier connects without
  // that (checking only <ns>.decisions), a per-host user cannot run it: this marks the gap until then.
  test(
    "banbus's Bus connects as this user",
    { todo: 'Bus.connect redeclares the shared topology; the route-applier needs a connect that does not' },
    async () => {
      const url = new URL(amqpUrl);
      url.username = user;
      url.password = password;
      const bus = await Bus.connect({
        url: url.toString(),
        namespace: ns,
        logger: createLogger({ level: 'silent' }),
        initialConnectRetries: 0,
      });
      await bus.close();
    },
  );

  for (const [what, fn] of refused) {
    test(`may not ${what}`, async () => {
      const error = await attempt(fn);
      assert.match(error ?? 'allowed', /ACCESS_REFUSED|403/, `${what} was allowed`);
    });
  }
});
