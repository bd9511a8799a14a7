import type { EngineStore } from '#application';
import { OUTBOX_CHANNEL, parseOutboxHint, type PgNotifications } from '#persistence';
import { lastOperationPerVm } from '#queue';

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
 * Outbox → queue. Every outbox row is announced on channel `memplane_outbox` once its
 * transaction commits, with the row's operation and VM (OperationRepository.create, through
 * PgHints): the dispatcher LISTENs, queues what the notifications name at once and marks those rows
 * dispatched. It also reads the outbox: after every (re)start of listening and on a slow
 * timer, so a notification lost with a connection only costs latency; one pass at a time, a
 * wake-up during a pass causes one more. A row queued twice is harmless (deterministic job
 * ids).
 */
export class OutboxDispatcher {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private again = false;
  private stopped = false;
  private unsubscribe: (() => void) | undefined;
  /** Rows named by notifications, queued together once the notifications of one read are in. */
  private notified: { id: string; operationId: string; vmId: string }[] = [];
  private sending: Promise<void> | undefined;

  constructor(private readonly opts: OutboxDispatcherOptions) {}

  start(): void {
    // Each (re)start of listening is followed by a pass: rows recorded while nobody listened.
    this.unsubscribe = this.opts.notifications.subscribe(OUTBOX_CHANNEL, (payload) => this.notify(payload), () => this.kick());
    this.kick();
  }

  /** An operation's outbox row is queued with the next batch; any other row makes the dispatcher read the outbox. */
  private notify(payload: string): void {
    if (this.stopped) return;
    const row = parseOutboxHint(payload);
    if (!row) return this.kick();
    this.notified.push(row);
    if (!this.sending) this.sending = new Promise<void>((resolve) => setImmediate(resolve)).then(() => this.sendNotified());
  }

  private async sendNotified(): Promise<void> {
    const rows = this.notified.splice(0);
    try {
      if (rows.length) await this.send(rows);
    } catch (e) {
      this.opts.log(`outbox dispatcher: ${(e as Error).message}; the outbox is read instead`);
      this.kick();
    } finally {
      this.sending = undefined;
      if (this.notified.length && !this.stopped) this.sending = this.sendNotified();
    }
  }

  /** One job per VM (its last operation in `rows`), then the rows are marked dispatched. */
  private async send(rows: readonly { id: string; operationId: string; vmId: string | null }[]): Promise<void> {
    const jobs = lastOperationPerVm(rows);
    if (jobs.length) await this.opts.wake(jobs);
    await this.opts.store.markDispatched(rows.map((r) => r.id));
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
    if (rows.length) await this.send(rows);
    return rows.length;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.unsubscribe?.();
    if (this.timer) clearTimeout(this.timer);
    await this.running?.catch(() => undefined);
    await this.sending?.catch(() => undefined);
  }
}
