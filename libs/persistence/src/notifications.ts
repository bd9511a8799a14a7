import { Client } from 'pg';

type Listener = (payload: string) => void;

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
