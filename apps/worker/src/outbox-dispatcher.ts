import { Client } from 'pg';
import type { EngineStore } from '#application';

export interface OutboxDispatcherOptions {
  databaseUrl: string;
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
  private listener: Client | undefined;
  private timer: NodeJS.Timeout | undefined;
  private reconnect: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private again = false;
  private stopped = false;

  constructor(private readonly opts: OutboxDispatcherOptions) {}

  start(): void {
    void this.listen();
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

  private async listen(): Promise<void> {
    if (this.stopped) return;
    const client = new Client({ connectionString: this.opts.databaseUrl });
    const retry = () => {
      if (this.listener === client) this.listener = undefined;
      client.removeAllListeners('notification');
      void client.end().catch(() => undefined);
      if (!this.stopped && !this.reconnect) {
        this.reconnect = setTimeout(() => {
          this.reconnect = undefined;
          void this.listen();
        }, 1_000);
      }
    };
    client.on('error', retry);
    client.on('end', retry);
    client.on('notification', () => this.kick());
    try {
      await client.connect();
      await client.query('listen memplane_outbox');
      if (this.stopped) {
        await client.end().catch(() => undefined);
        return;
      }
      this.listener = client;
      // Rows recorded while nobody listened.
      this.kick();
    } catch (e) {
      this.opts.log(`outbox dispatcher: cannot listen (${(e as Error).message}); reading the outbox every ${this.opts.intervalMs} ms`);
      retry();
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    if (this.reconnect) clearTimeout(this.reconnect);
    const l = this.listener;
    this.listener = undefined;
    if (l) {
      l.removeAllListeners('end');
      l.removeAllListeners('error');
      l.on('error', () => undefined);
      await l.end().catch(() => undefined);
    }
    await this.running?.catch(() => undefined);
  }
}
