import { Client, type Pool } from 'pg';

type Listener = (payload: string) => void;

/** An operation changed state; payload: its id. */
export const OPERATION_CHANNEL = 'memplane_operation';
/** An outbox message was recorded; payload: outboxHint's, or just the outbox id for a row that is not an operation's. */
export const OUTBOX_CHANNEL = 'memplane_outbox';

/** An operation's outbox row, as an OUTBOX_CHANNEL payload ("<outbox id> <operation id> <vm id>"). */
export function outboxHint(r: { outboxId: string | number; operationId: string; vmId: string }): string {
  return `${r.outboxId} ${r.operationId} ${r.vmId}`;
}

/** The row an OUTBOX_CHANNEL payload names, or undefined when it names no operation. */
export function parseOutboxHint(payload: string): { id: string; operationId: string; vmId: string } | undefined {
  const [id, operationId, vmId] = payload.split(' ');
  return id && operationId && vmId ? { id, operationId, vmId } : undefined;
}

/**
 * Postgres LISTEN on one dedicated connection, shared by everything in the process that
 * wants to hear about a channel. The connection opens with the first subscription and comes
 * back after a failure (retried every second); `onListening` hears every (re)start, because
 * notifications sent while nobody listened are lost: whoever depends on them reads what it
 * may have missed then.
 */
export class PgNotifications {
  private client: Client | undefined;
  private connecting: Promise<void> | undefined;
  private retry: NodeJS.Timeout | undefined;
  private closed = false;
  private readonly channels = new Map<string, { listeners: Set<Listener>; listening: Set<() => void> }>();

  constructor(private readonly databaseUrl: string) {}

  /**
   * Calls `listener` with each notification's payload on `channel`, and `onListening` each
   * time the channel is (re)listened to. Returns the unsubscribe function.
   */
  subscribe(channel: string, listener: Listener, onListening?: () => void): () => void {
    if (!/^[a-z_][a-z0-9_]*$/.test(channel)) throw new Error(`not a channel name: ${channel}`);
    let c = this.channels.get(channel);
    if (!c) {
      c = { listeners: new Set(), listening: new Set() };
      this.channels.set(channel, c);
      if (this.client) void this.client.query(`listen ${channel}`).then(() => this.announce(channel), () => this.reconnectSoon());
    }
    c.listeners.add(listener);
    if (onListening) c.listening.add(onListening);
    this.ensure();
    return () => {
      c.listeners.delete(listener);
      if (onListening) c.listening.delete(onListening);
    };
  }

  private announce(channel: string): void {
    for (const f of this.channels.get(channel)?.listening ?? []) f();
  }

  private ensure(): void {
    if (this.closed || this.client || this.connecting) return;
    const client = new Client({ connectionString: this.databaseUrl });
    const lost = () => {
      if (this.client === client) this.client = undefined;
      client.removeAllListeners('notification');
      void client.end().catch(() => undefined);
      this.reconnectSoon();
    };
    client.on('error', lost);
    client.on('end', lost);
    client.on('notification', (n) => {
      for (const f of this.channels.get(n.channel)?.listeners ?? []) f(n.payload ?? '');
    });
    this.connecting = (async () => {
      try {
        await client.connect();
        for (const channel of this.channels.keys()) await client.query(`listen ${channel}`);
        if (this.closed) {
          await client.end().catch(() => undefined);
          return;
        }
        this.client = client;
        for (const channel of this.channels.keys()) this.announce(channel);
      } catch {
        lost();
      } finally {
        this.connecting = undefined;
      }
    })();
  }

  private reconnectSoon(): void {
    if (this.closed || this.retry) return;
    this.retry = setTimeout(() => {
      this.retry = undefined;
      this.ensure();
    }, 1_000);
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.retry) clearTimeout(this.retry);
    await this.connecting?.catch(() => undefined);
    const c = this.client;
    this.client = undefined;
    if (c) {
      c.removeAllListeners('end');
      c.removeAllListeners('error');
      c.on('error', () => undefined);
      await c.end().catch(() => undefined);
    }
  }
}

/**
 * NOTIFY from outside the transactions whose changes it announces. A transaction that
 * sends NOTIFY takes one lock for the whole database from its COMMIT until it is durable,
 * so notifying transactions commit one at a time, each waiting for its own WAL flush:
 * with a trigger notifying on every operation state change, worker backends spent about
 * 40 % of their time waiting for that lock (bench:ops, pg_stat_activity Lock/object).
 * Instead a transaction's hints are handed here after it commits, and sent together in
 * one statement whose own commit does not wait for the disk (synchronous_commit off: a
 * hint has nothing to keep; what it points at was committed durably before). A hint
 * goes out at once when none went out in the last 10 ms; otherwise it waits for the
 * rest of those 10 ms with the others that come meanwhile, so a busy worker sends one
 * statement per 10 ms, not one per operation. A hint that fails is dropped: listeners
 * re-read on a timer anyway.
 *
 * In-process observers (`observe`) hear the hints of each statement as it goes out, with
 * the same coalescing: the hints a listener will receive together.
 */
export class PgHints {
  private static readonly GAP_MS = 10;
  private queued = new Map<string, Set<string>>();
  private readonly observers = new Map<string, Set<(payloads: string[]) => void>>();
  private running: Promise<void> | undefined;
  private lastSent = 0;

  constructor(private readonly pool: Pick<Pool, 'query'>) {}

  /** Calls `observer` with the payloads on `channel` of each statement that goes out from now on; returns the function that stops it. */
  observe(channel: string, observer: (payloads: string[]) => void): () => void {
    let set = this.observers.get(channel);
    if (!set) this.observers.set(channel, (set = new Set()));
    set.add(observer);
    return () => set.delete(observer);
  }

  send(channel: string, payload: string): void {
    let payloads = this.queued.get(channel);
    if (!payloads) this.queued.set(channel, (payloads = new Set()));
    payloads.add(payload);
    this.running ??= this.run();
  }

  /** Resolves once every hint sent so far was sent (or dropped). */
  async flushed(): Promise<void> {
    while (this.running) await this.running;
  }

  private async run(): Promise<void> {
    // Hints of the same tick share the statement, and so do those of the rest of GAP_MS
    // after the last statement: a hint waits only if another went out less than GAP_MS ago.
    await new Promise((r) => setImmediate(r));
    while (this.queued.size > 0) {
      const wait = this.lastSent + PgHints.GAP_MS - Date.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      const channels: string[] = [];
      const payloads: string[] = [];
      for (const [channel, set] of this.queued) {
        for (const p of set) {
          channels.push(channel);
          payloads.push(p);
        }
      }
      for (const [channel, set] of this.queued) {
        for (const observer of this.observers.get(channel) ?? []) {
          try {
            observer([...set]);
          } catch {
            // An observer's failure is its own; the hints still go out.
          }
        }
      }
      this.queued = new Map();
      this.lastSent = Date.now();
      await this.pool
        .query({
          name: 'memplane_hints',
          text: `select count(pg_notify(x.c, x.p)) from (select set_config('synchronous_commit', 'off', true)) s, unnest($1::text[], $2::text[]) as x(c, p)`,
          values: [channels, payloads],
        })
        .catch(() => undefined);
    }
    this.running = undefined;
  }
}
