import { Pool, type PoolClient } from 'pg';

/**
 * Operations on one VM never overlap, across worker processes: whoever runs a VM's
 * operations holds a Postgres session advisory lock on it meanwhile. A worker that dies
 * drops its connection and with it the lock, so another worker can take the VM over at
 * once. The sessions come from a small pool of their own (opening a connection per job
 * cost more than the rest of a queue-only operation); a lock is always released before its
 * connection goes back, and a connection that cannot say so is closed instead.
 */
export class VmLocks {
  private readonly pool: Pool;

  constructor(databaseUrl: string, size: number) {
    this.pool = new Pool({ connectionString: databaseUrl, max: size, connectionTimeoutMillis: 10_000, idleTimeoutMillis: 30_000 });
    this.pool.on('error', () => undefined);
  }

  /** The VM's lock, or undefined when another session holds it. */
  async tryLock(vmId: string): Promise<(() => Promise<void>) | undefined> {
    const client: PoolClient = await this.pool.connect();
    let ok = false;
    try {
      const r = await client.query<{ ok: boolean }>({ name: 'memplane_vm_try_lock', text: `select pg_try_advisory_lock(hashtextextended($1, 727276)) as ok`, values: [vmId] });
      ok = r.rows[0]?.ok === true;
    } catch (e) {
      client.release(true);
      throw e;
    }
    if (!ok) {
      client.release();
      return undefined;
    }
    let released = false;
    return async () => {
      if (released) return;
      released = true;
      try {
        const r = await client.query<{ ok: boolean }>({ name: 'memplane_vm_unlock', text: `select pg_advisory_unlock(hashtextextended($1, 727276)) as ok`, values: [vmId] });
        client.release(r.rows[0]?.ok !== true);
      } catch {
        client.release(true); // closing the session drops the lock
      }
    };
  }

  async close(): Promise<void> {
    await this.pool.end().catch(() => undefined);
  }
}
