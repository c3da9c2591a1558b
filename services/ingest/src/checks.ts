// Checks that need state: the allowlist, the breadth policy and what the token may report. The
// persister applies the same policy again (it is the one place that decides); ingest checks first so
// that a host learns at once, with a reason, that a report will never become a ban.
import { CoalescedTask, HttpError, type Logger } from '@banbus/runtime';
import { Allowlist, tooBroad, widenTarget, type Policy } from '@banbus/core';
import type { AuthHost } from './auth.js';
import type { ReportInput } from './parse.js';

/** A report refused for what it says about the target: 422 {error, field, reason}. */
export class RejectedReportError extends HttpError {
  constructor(
    message: string,
    field: string,
    readonly reason: 'allowlisted' | 'too-broad',
  ) {
    super(422, message, field);
    this.name = 'RejectedReportError';
  }
}

function fieldOf(index: number, count: number, name: string): string {
  return count === 1 ? name : `[${index}].${name}`;
}

/**
 * Throws for the first report the host may not make: 403 for a network from a `report`-only token or
 * an origin reserved to operators, 422 for a ban broader than policy allows or touching the allowlist.
 * `allowlist` is null while it could not be loaded yet: the persister still enforces it.
 */
export function checkReports(
  inputs: readonly ReportInput[],
  host: AuthHost,
  policy: Policy,
  allowlist: Allowlist | null,
): void {
  const admin = host.scopes.includes('admin');
  for (let i = 0; i < inputs.length; i++) {
    const input = inputs[i]!;
    if (!admin && !input.target.isHost) {
      throw new HttpError(
        403,
        `${input.target.text} is a network: this token may report single addresses only (networks need the admin scope)`,
        fieldOf(i, inputs.length, 'ip'),
      );
    }
    // A manual unban ends every host's ban of the target, so only operators may speak as "manual".
    if (!admin && (input.origin === 'manual' || input.origin === 'import')) {
      throw new HttpError(
        403,
        `origin ${input.origin} needs the admin scope`,
        fieldOf(i, inputs.length, 'origin'),
      );
    }
    // An unban of an allowlisted or too broad target changes nothing downstream; refusing it would
    // only make fail2ban's actionunban fail after an operator added an allowlist entry.
    if (input.action !== 'ban') continue;
    const target = widenTarget(input.target, policy);
    const broad = tooBroad(target, policy);
    if (broad !== null) throw new RejectedReportError(broad, fieldOf(i, inputs.length, 'ip'), 'too-broad');
    const covering = allowlist?.covering(target) ?? null;
    if (covering !== null) {
      throw new RejectedReportError(
        `${input.target.text} is allowlisted (${covering})`,
        fieldOf(i, inputs.length, 'ip'),
        'allowlisted',
      );
    }
  }
}

export interface AllowlistSource {
  /** Canonical network texts currently active (AllowlistRepository.active). */
  load(): Promise<string[]>;
  /** Calls onChange on every change notification and onReconnect after the listener reconnected. */
  subscribe?(onChange: () => void, onReconnect: () => void): Promise<{ close(): Promise<void> }>;
}

/**
 * The allowlist held in memory: loaded at start, reloaded on every `banbus_allowlist` notification and
 * every `refreshMs` anyway (a notification can be missed while the listener reconnects).
 */
export class AllowlistCache {
  private current: Allowlist | null = null;
  private subscription: { close(): Promise<void> } | null = null;
  private timer: NodeJS.Timeout | null = null;
  private stopped = false;
  private readonly refreshMs: number;
  private readonly retryMs: number;

  constructor(
    private readonly source: AllowlistSource,
    private readonly logger: Logger,
    options: { refreshMs?: number; retryMs?: number } = {},
  ) {
    this.refreshMs = options.refreshMs ?? 60_000;
    this.retryMs = options.retryMs ?? 5_000;
  }

  /** Null until the first load succeeded. */
  get allowlist(): Allowlist | null {
    return this.current;
  }

  get loaded(): boolean {
    return this.current !== null;
  }

  /** First load and subscription; failures are logged and retried, never thrown (readiness tells). */
  async start(): Promise<void> {
    await this.subscribe();
    await this.refresh();
    this.schedule();
  }

  private async subscribe(): Promise<void> {
    if (!this.source.subscribe || this.subscription || this.stopped) return;
    try {
      this.subscription = await this.source.subscribe(
        () => void this.refresh(),
        () => void this.refresh(),
      );
    } catch (err) {
      this.logger.warn(
        { err: (err as Error).message },
        'cannot listen for allowlist changes yet, will retry',
      );
    }
  }

  private schedule(): void {
    if (this.stopped) return;
    // Faster retries while nothing is loaded or the listener is missing, the regular pace otherwise.
    const healthy = this.current !== null && (this.subscription !== null || !this.source.subscribe);
    this.timer = setTimeout(
      () => {
        void (async () => {
          await this.subscribe();
          await this.refresh();
          this.schedule();
        })();
      },
      healthy ? this.refreshMs : this.retryMs,
    );
    this.timer.unref();
  }

  /** Reloads; concurrent calls coalesce, and a call during a load causes one more load after it. */
  refresh(): Promise<void> {
    return this.reload.trigger();
  }

  private readonly reload = new CoalescedTask(
    async () => {
      const networks = await this.source.load();
      this.current = new Allowlist(networks);
      this.logger.debug({ networks: networks.length }, 'allowlist loaded');
    },
    (err) =>
      this.logger.warn({ err: (err as Error).message }, 'allowlist reload failed, keeping the previous one'),
  );

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    await this.reload.stop();
    await this.subscription?.close().catch(() => undefined);
    this.subscription = null;
  }
}
