/**
 * Runs `task` one at a time; a trigger while it runs schedules exactly one more run afterwards, so bursts
 * of triggers (one per committed batch, one per NOTIFY) collapse into few runs and none is lost.
 */
export class CoalescedTask {
  private running: Promise<void> | null = null;
  private again = false;
  private stopped = false;

  constructor(
    private readonly task: () => Promise<void>,
    private readonly onError: (err: unknown) => void,
  ) {}

  trigger(): Promise<void> {
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      do {
        this.again = false;
        try {
          await this.task();
        } catch (err) {
          this.onError(err);
        }
      } while (this.again && !this.stopped);
      this.running = null;
    })();
    return this.running;
  }

  /** Resolves once no run is in progress. */
  async idle(): Promise<void> {
    while (this.running) await this.running;
  }

  /** No further runs after the current one; resolves when it finished. */
  async stop(): Promise<void> {
    this.stopped = true;
    await this.idle();
  }
}
