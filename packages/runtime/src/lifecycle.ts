import type { Logger } from './logger.js';

/** Something that was started and can be stopped; every service's `start` returns one. */
export interface Running {
  stop(): Promise<void>;
}

/**
 * Stops `running` on SIGTERM or SIGINT, then exits. A second signal, or a stop that takes longer
 * than `timeoutMs`, exits at once: an operator's second Ctrl-C means now.
 */
export function stopOnSignals(running: Running, logger: Logger, timeoutMs = 15_000): void {
  let stopping = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) {
      logger.warn({ signal }, 'second signal, exiting now');
      process.exit(1);
    }
    stopping = true;
    logger.info({ signal }, 'shutting down');
    const timer = setTimeout(() => {
      logger.error({ timeoutMs }, 'shutdown timed out, exiting');
      process.exit(1);
    }, timeoutMs);
    timer.unref();
    running.stop().then(
      () => {
        logger.info('stopped');
        process.exit(0);
      },
      (err: unknown) => {
        logger.error({ err }, 'error while stopping');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
}

/** What a service opened for itself (a pool, a bus connection), closed last-opened first. */
export class Resources {
  private readonly closers: (() => Promise<unknown>)[] = [];

  /** Keeps `resource` to be closed with `close`; returns it. */
  hold<R>(resource: R, close: (resource: R) => Promise<unknown>): R {
    this.closers.push(() => close(resource));
    return resource;
  }

  /** Closes everything held. After a failed start the first error is not the one to report: `quiet`. */
  async close(quiet = false): Promise<void> {
    for (const close of this.closers.splice(0).reverse()) {
      if (quiet) await close().catch(() => undefined);
      else await close();
    }
  }
}

/**
 * A service's entry point in one piece: `start` opens what the service needs through `resources` and
 * starts it. The returned stop stops the service first, then closes the resources (so in-flight work can
 * still use them); a start that throws closes what it had opened before the error goes on.
 */
export async function startWithResources<S extends Running>(
  start: (resources: Resources) => Promise<S>,
): Promise<S> {
  const resources = new Resources();
  let service: S;
  try {
    service = await start(resources);
  } catch (err) {
    await resources.close(true);
    throw err;
  }
  return {
    ...service,
    async stop() {
      await service.stop();
      await resources.close();
    },
  };
}
