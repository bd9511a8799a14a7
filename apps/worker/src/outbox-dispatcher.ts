import type { EngineStore } from '#application';
import type { PgNotifications } from '#persistence';

export interface OutboxDispatcherOptions {
  notifications: PgNotifications;
  store: EngineStore;
  /**
   * Hands a VM's newly recorded operations to the queue: one wake-up per VM per batch, with
   * the id of the VM's last operation in the batch (deterministic, so a re-send is harmless).
   */
  wake(vms: { vmId: string; operationId: string }[]): Promise<void>;
  /** The outbox is also read this often, whatever the notifications say. */
  intervalMs: number;
  log: (line: string) => void;
}

const BATCH = 500;

/**
 * Outbox → queue. A trigger notifies channel `memplane_outbox` when an operation's
 * transaction commits (migration outbox_notify); the dispatcher LISTENs and moves the rows
 * at once, and reads the outbox on a slow timer besides, so a notification lost with a
 * connection only costs latency. Runs one pass at a time; a wake-up during a pass causes
 * one more pass.
 */
export class OutboxDispatcher {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private again = false;
  private stopped = false;
  private unsubscribe: (() => void) | undefined;

  constructor(private readonly opts: OutboxDispatcherOptions) {}

  start(): void {
    // Each (re)start of listening is followed by a pass: rows recorded while nobody listened.
    this.unsubscribe = this.opts.notifications.subscribe('memplane_outbox', () => this.kick(), () => this.kick());
    this.kick();
  }

  /** A pass now, or right after the one under way. */
  kick(): void {
    if (this.stopped) return;
    if (this.running) {
      this.again = true;
      return;
    }
    if (this.timer) clearTimeout(this.timer);
    this.running = this.passes().finally(() => {
      this.running = undefined;
      if (!this.stopped) this.timer = setTimeout(() => this.kick(), this.opts.intervalMs);
    });
  }

  private async passes(): Promise<void> {
    do {
      this.again = false;
      try {
        while ((await this.pass()) === BATCH && !this.stopped);
      } catch (e) {
        this.opts.log(`outbox dispatcher: ${(e as Error).message}`);
        return;
      }
    } while (this.again && !this.stopped);
  }

  /** Moves up to BATCH rows; returns how many it read. */
  private async pass(): Promise<number> {
    const rows = await this.opts.store.pendingOutbox(BATCH);
    if (rows.length === 0) return 0;
    const last = new Map<string, string>();
    for (const r of rows) if (r.vmId) last.set(r.vmId, r.operationId);
    if (last.size) await this.opts.wake([...last].map(([vmId, operationId]) => ({ vmId, operationId })));
    await this.opts.store.markDispatched(rows.map((r) => r.id));
    return rows.length;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.unsubscribe?.();
    if (this.timer) clearTimeout(this.timer);
    await this.running?.catch(() => undefined);
  }
}
