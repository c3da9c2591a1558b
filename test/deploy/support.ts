// Shared by the permission tests: the host's RabbitMQ user that docs/rabbitmq.md describes, and a
// route-applier running as it.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import { mainRouteApplier } from '@banbus/route-applier';
import { createLogger, createRegistry } from '@banbus/runtime';

const run = promisify(execFile);

export async function rabbitmqctl(...args: string[]): Promise<void> {
  await run('rabbitmqctl', ['-q', ...args], { timeout: 60_000 });
}

/** The permissions docs/rabbitmq.md tells the operator to set for host HOST in namespace NS. */
export function applierPermissions(
  ns: string,
  host: string,
): { configure: string; write: string; read: string } {
  const q = (s: string) => s.replace(/[.\\^$|?*+()[\]{}-]/g, '\\$&');
  return {
    configure: `^${q(ns)}\\.applier\\.${q(host)}$`,
    write: `^${q(ns)}\\.(applier\\.${q(host)}|dead-letter)$`,
    read: `^${q(ns)}\\.(applier\\.${q(host)}|decisions)$`,
  };
}

/** A RabbitMQ user of this test run with exactly the permissions of `applierPermissions`. */
export class HostUser {
  readonly name: string;
  private readonly password = randomBytes(12).toString('hex');

  constructor(
    readonly ns: string,
    readonly host: string,
  ) {
    this.name = `bbt-${randomBytes(4).toString('hex')}-${host}`;
  }

  async create(): Promise<void> {
    const p = applierPermissions(this.ns, this.host);
    await rabbitmqctl('add_user', this.name, this.password);
    await rabbitmqctl('set_permissions', '-p', '/', this.name, p.configure, p.write, p.read);
  }

  async drop(): Promise<void> {
    await rabbitmqctl('delete_user', this.name).catch(() => undefined);
  }

  /** `amqpUrl` with this user's credentials. */
  url(amqpUrl: string): string {
    const url = new URL(amqpUrl);
    url.username = this.name;
    url.password = this.password;
    return url.toString();
  }
}

export interface ApplierStatus {
  ready: boolean;
  seq: number;
  entries: number;
  snapshots: number;
  deltas: number;
}

/** `banbus run route-applier` (dry-run) in this process as `user`, following the aggregator at `aggregatorUrl`. */
export async function startHostApplier(
  user: HostUser,
  amqpUrl: string,
  aggregatorUrl: string,
  extra: Record<string, string> = {},
): Promise<{ stop(): Promise<void>; status(): Promise<ApplierStatus> }> {
  const applier = await mainRouteApplier(
    {
      AMQP_URL: user.url(amqpUrl),
      BANBUS_NAMESPACE: user.ns,
      BANBUS_URL: aggregatorUrl,
      APPLIER_HOST: user.host,
      APPLIER_BACKEND: 'dry-run',
      APPLIER_PORT: '0',
      BANBUS_LISTEN: '127.0.0.1',
      ...extra,
    },
    { logger: createLogger({ level: 'silent' }), registry: createRegistry(false) },
  );
  return {
    stop: () => applier.stop(),
    status: async () =>
      (await fetch(`http://127.0.0.1:${applier.port}/v1/status`).then((r) => r.json())) as ApplierStatus,
  };
}
