// The changes an operator makes. Bans and unbans are reports like any host's (origin `manual`, host = the
// operator), published to `<ns>.reports` the way ingest publishes them: the persister turns them into
// decisions, so policy, the seq and the decision stream stay in one place and every applier sees the
// change. A manual unban ends every host's ban of the target (and of every target inside it). Allowlist
// and host changes are rows in PostgreSQL (the persister lifts what a new allowlist entry covers). Every
// change is written to the audit log.
import type pg from 'pg';
import {
  Allowlist,
  ReportSchema,
  newReportId,
  parseTarget,
  tooBroad,
  widenTarget,
  type Policy,
  type Report,
  type Scope,
} from '@banbus/core';
import { BusUnavailableError } from '@banbus/bus';
import {
  AllowlistRepository,
  DuplicateError,
  HostRepository,
  type AllowlistEntry,
  type HostRecord,
} from '@banbus/db';
import { HttpError } from '@banbus/runtime';
import type { Actor, AuditLog } from './audit.js';
import type { ConsoleQueries } from './queries.js';

export interface ReportPublisher {
  /** Resolves once the broker confirmed the persistent messages (Bus.publishReports). */
  publishReports(reports: readonly Report[]): Promise<void>;
}

export interface BanResult {
  /** The report's id (reports.id once the persister stored it). */
  report: string;
  target: string;
  /** Seconds asked for; null = the policy's default bantime. */
  duration: number | null;
}

export interface UnbanResult {
  report: string;
  target: string;
  /** The decisions this unban ends (the target's own and those inside it), as far as they are known now. */
  lifts: string[];
}

export interface AllowResult {
  entry: AllowlistEntryJson;
  /** Decisions overlapping the network: the persister lifts them. */
  lifts: string[];
  lifts_total: number;
}

export interface AllowlistEntryJson {
  network: string;
  comment: string | null;
  created_by: string | null;
  created_at: string;
  expires_at: string | null;
}

export interface HostJson {
  name: string;
  scopes: Scope[];
  created_at: string;
  last_seen_at: string | null;
  revoked_at: string | null;
}

export const allowlistJson = (e: AllowlistEntry): AllowlistEntryJson => ({
  network: e.network,
  comment: e.comment,
  created_by: e.createdBy,
  created_at: e.createdAt.toISOString(),
  expires_at: e.expiresAt?.toISOString() ?? null,
});

export const hostJson = (h: HostRecord): HostJson => ({
  name: h.name,
  scopes: h.scopes,
  created_at: h.createdAt.toISOString(),
  last_seen_at: h.lastSeenAt?.toISOString() ?? null,
  revoked_at: h.revokedAt?.toISOString() ?? null,
});

/** A report's host is at most 63 characters; the actor's name is what it records. */
const reportHost = (actor: Actor) => actor.name.slice(0, 63);

export class AdminActions {
  private readonly allowlist: AllowlistRepository;
  private readonly hosts: HostRepository;

  constructor(
    private readonly options: {
      pool: pg.Pool;
      publisher: ReportPublisher;
      policy: Policy;
      audit: AuditLog;
      queries: ConsoleQueries;
    },
  ) {
    this.allowlist = new AllowlistRepository(options.pool);
    this.hosts = new HostRepository(options.pool);
  }

  private async publish(report: Report): Promise<void> {
    try {
      await this.options.publisher.publishReports([ReportSchema.parse(report)]);
    } catch (err) {
      if (err instanceof BusUnavailableError)
        throw new HttpError(
          503,
          'the message broker is not available; nothing was changed, retry shortly',
          undefined,
          {
            'Retry-After': '5',
          },
        );
      throw err;
    }
    this.options.queries.invalidate();
  }

  /** Bans a target fleet-wide; refused (422) when policy would refuse it anyway. */
  async ban(actor: Actor, input: { target: string; duration?: number; reason?: string }): Promise<BanResult> {
    const target = widenTarget(parseTarget(input.target), this.options.policy);
    const broad = tooBroad(target, this.options.policy);
    if (broad !== null) throw new HttpError(422, broad, 'target');
    const covering = new Allowlist(await this.allowlist.active()).covering(target);
    if (covering !== null)
      throw new HttpError(
        422,
        `${target.text} is allowlisted (${covering}); remove the allowlist entry first`,
        'target',
      );
    const report: Report = {
      id: newReportId(),
      action: 'ban',
      target: target.text,
      host: reportHost(actor),
      origin: 'manual',
      jail: null,
      reason: input.reason ?? null,
      bantime: input.duration ?? null,
      time: new Date().toISOString(),
    };
    await this.publish(report);
    await this.options.audit.record(actor, 'ban', target.text, {
      report: report.id,
      duration: input.duration ?? null,
      reason: input.reason ?? null,
    });
    return { report: report.id, target: target.text, duration: input.duration ?? null };
  }

  /**
   * Ends every ban of the target, and of every target inside it, on every host. 404 when nothing is banned
   * there (unless `force`): an address inside a banned network is not banned by itself, and the answer
   * names the network to unban instead.
   */
  async unban(
    actor: Actor,
    input: { target: string; reason?: string; force?: boolean },
  ): Promise<UnbanResult> {
    const target = parseTarget(input.target);
    const lifts = await this.options.queries.within(target.text);
    if (lifts.length === 0 && !input.force) {
      const detail = await this.options.queries.detail(target.text);
      const covering = detail.covering.map((d) => d.target);
      throw new HttpError(
        404,
        covering.length
          ? `${target.text} is not banned by itself; it is inside ${covering.join(', ')} — unban that instead`
          : `${target.text} is not banned`,
        'target',
      );
    }
    const report: Report = {
      id: newReportId(),
      action: 'unban',
      target: target.text,
      host: reportHost(actor),
      origin: 'manual',
      jail: null,
      reason: input.reason ?? null,
      time: new Date().toISOString(),
    };
    await this.publish(report);
    await this.options.audit.record(actor, 'unban', target.text, {
      report: report.id,
      lifts,
      reason: input.reason ?? null,
    });
    return { report: report.id, target: target.text, lifts };
  }

  /** Decisions an allowlist entry for `network` would lift. */
  async allowPreview(network: string): Promise<{ lifts: string[]; lifts_total: number }> {
    const { targets, total } = await this.options.queries.overlapping(parseTarget(network).text);
    return { lifts: targets, lifts_total: total };
  }

  async allowAdd(
    actor: Actor,
    input: { network: string; comment?: string; expires?: number },
  ): Promise<AllowResult> {
    const network = parseTarget(input.network).text;
    const preview = await this.allowPreview(network);
    const entry = await this.allowlist.add({
      network,
      comment: input.comment ?? null,
      createdBy: actor.name,
      expiresAt: input.expires === undefined ? null : new Date(Date.now() + input.expires * 1000),
    });
    await this.options.audit.record(actor, 'allowlist-add', network, {
      comment: entry.comment,
      expires_at: entry.expiresAt?.toISOString() ?? null,
      lifts: preview.lifts,
      lifts_total: preview.lifts_total,
    });
    this.options.queries.invalidate();
    return { entry: allowlistJson(entry), ...preview };
  }

  async allowRemove(actor: Actor, input: string): Promise<void> {
    const network = parseTarget(input).text;
    if (!(await this.allowlist.remove(network)))
      throw new HttpError(404, `${network} is not allowlisted`, 'network');
    await this.options.audit.record(actor, 'allowlist-remove', network);
    this.options.queries.invalidate();
  }

  async allowList(): Promise<AllowlistEntryJson[]> {
    return (await this.allowlist.list()).map(allowlistJson);
  }

  /** Adds a host; its token is in this answer only (only its hash is stored). */
  async hostAdd(
    actor: Actor,
    input: { name: string; scopes: Scope[] },
  ): Promise<{ host: HostJson; token: string }> {
    try {
      const { host, token } = await this.hosts.add(input.name, input.scopes);
      await this.options.audit.record(actor, 'host-add', host.name, { scopes: host.scopes });
      return { host: hostJson(host), token };
    } catch (err) {
      if (err instanceof DuplicateError)
        throw new HttpError(409, `a host named ${input.name} already exists`, 'name');
      throw err;
    }
  }

  async hostRevoke(actor: Actor, name: string): Promise<void> {
    if (!(await this.hosts.revoke(name))) throw new HttpError(404, `no host named ${name}`, 'name');
    await this.options.audit.record(actor, 'host-revoke', name);
  }

  async hostList(): Promise<HostJson[]> {
    return (await this.hosts.list()).map(hostJson);
  }
}
