import { PrismaPg } from '@prisma/adapter-pg';
import { Pool, type PoolClient, type QueryResult } from 'pg';
import { DomainError } from '#domain';
import { Prisma, PrismaClient } from './generated/prisma/client';
import { PgHints } from './notifications';
import { PgSql, sqlState, statementName, type Sql } from './sql';

export type Tx = Prisma.TransactionClient;

/** The session settings of `Database.dedicatedSql`'s connections (see there). */
export const DEDICATED_SQL_OPTIONS = '-c plan_cache_mode=force_generic_plan -c random_page_cost=1.1 -c enable_seqscan=off';

export interface DatabaseOptions {
  url: string;
  /** Connections in this process's pool (shared by Prisma and raw SQL). */
  poolSize?: number;
}

/**
 * The only owner of a PrismaClient and of the connection pool under it.
 * Transactions retry on serialization failures and deadlocks, which Postgres
 * reports under contention and which are safe to retry because the whole
 * transaction is re-run.
 */
export class Database {
  readonly prisma: PrismaClient;
  private readonly pool: Pool;
  /** Pools of their own for hot statements (see `dedicatedSql`). */
  private readonly lanes: Pool[] = [];
  /** Raw SQL outside a transaction (each statement on any pooled connection). */
  readonly sql: Sql;
  /** NOTIFY, after commit and coalesced (Sql.notify). */
  readonly hints: PgHints;

  private readonly url: string;

  constructor(opts: DatabaseOptions) {
    this.url = opts.url;
    this.pool = this.newPool(opts.poolSize ?? 20);
    // Named statements: each connection plans a query text once (see sql.ts). Bare
    // utility statements (BEGIN, COMMIT) stay unnamed.
    const adapter = new PrismaPg(this.pool, {
      statementNameGenerator: (q) => (q.args.length === 0 && q.sql.length < 32 ? (undefined as unknown as string) : statementName(q.sql)),
    });
    this.prisma = new PrismaClient({ adapter });
    this.hints = new PgHints(this.pool);
    this.sql = new PgSql(this.pool, (channel, payload) => this.hints.send(channel, payload));
  }

  /**
   * Raw SQL on `size` connections of its own, for one hot statement run back to back (the
   * engine's end-and-claim): Postgres plans a prepared statement on each connection that runs
   * it, so a statement that costs milliseconds to plan is planned `size` times, not once per
   * connection of the shared pool, and it never waits behind other work for a connection.
   * The generic plan is forced (`auto` went on re-planning on some connections). It is made
   * once per connection, from whatever the tables held then, so it must not depend on that:
   * a statement that looks a few items up by key is costed with random_page_cost 1.1 (its
   * rows are in shared buffers) and without sequential scans, which a plan made while a table
   * was small would otherwise keep as the table grows (at the default 4, an index probe per
   * item looked dearer than scanning 2,000 memory groups). Only statements of that kind go
   * here (engine-store.int-spec checks the plan). Hints go out like `sql`'s.
   */
  dedicatedSql(size: number): Sql {
    const pool = this.newPool(size, DEDICATED_SQL_OPTIONS);
    this.lanes.push(pool);
    return new PgSql(pool, (channel, payload) => this.hints.send(channel, payload));
  }

  private newPool(max: number, options?: string): Pool {
    const pool = new Pool({ connectionString: this.url, max, connectionTimeoutMillis: 10_000, ...(options ? { options } : {}) });
    // An idle connection that drops (a Postgres restart) must not crash the process; the next query reports it.
    pool.on('error', () => undefined);
    return pool;
  }

  async transaction<T>(fn: (tx: Tx) => Promise<T>, opts: { isolation?: 'ReadCommitted' | 'Serializable'; attempts?: number } = {}): Promise<T> {
    return this.retrying(opts.attempts, () =>
      // READ COMMITTED is Postgres's default: asking for it would cost a SET round trip per transaction.
      this.prisma.$transaction(fn, {
        ...(opts.isolation === 'Serializable' ? { isolationLevel: Prisma.TransactionIsolationLevel.Serializable } : {}),
        maxWait: 10_000,
        timeout: 30_000,
      }),
    );
  }

  /** A READ COMMITTED transaction in raw SQL on one pooled connection; retried like `transaction`. */
  async sqlTransaction<T>(fn: (sql: Sql) => Promise<T>, opts: { attempts?: number } = {}): Promise<T> {
    return this.retrying(opts.attempts, () =>
      this.inTransaction(async (client, sql) => {
        await client.query('begin');
        const out = await fn(sql);
        await client.query('commit');
        return out;
      }),
    );
  }

  /**
   * A READ COMMITTED transaction in two round trips, for the hottest paths:
   * `BEGIN; <open>` goes as one simple-protocol message, statements `fn` runs
   * go as usual, and `<close>; COMMIT` as one more. `open` and `close` are
   * complete statements (values already quoted as literals); a failing
   * `close` aborts the transaction before its COMMIT. Retried like `transaction`.
   */
  async twoTripTransaction<T>(
    open: string,
    fn: (opened: Record<string, unknown>[], sql: Sql) => Promise<{ close: string; result: T; closed?: (rows: Record<string, unknown>[]) => void }>,
    opts: { attempts?: number } = {},
  ): Promise<T> {
    return this.retrying(opts.attempts, () =>
      this.inTransaction(async (client, sql) => {
        const results = (await client.query(`begin; ${open}`)) as unknown as QueryResult[];
        const { close, result, closed } = await fn(results[1]?.rows ?? [], sql);
        const closing = (await client.query(`${close}; commit`)) as unknown as QueryResult[];
        closed?.(closing[0]?.rows ?? []);
        return result;
      }),
    );
  }

  /**
   * A pooled connection for `run`, which begins and commits; rolled back if it throws (a
   * connection that cannot is dropped). The hints given to `sql` (Sql.notify) go out once
   * `run` has committed, and not at all if it throws.
   */
  private async inTransaction<T>(run: (client: PoolClient, sql: Sql) => Promise<T>): Promise<T> {
    const client = await this.pool.connect();
    const hints: [string, string][] = [];
    let broken = false;
    try {
      const out = await run(client, new PgSql(client, (channel, payload) => hints.push([channel, payload])));
      for (const [channel, payload] of hints) this.hints.send(channel, payload);
      return out;
    } catch (e) {
      await client.query('rollback').catch(() => {
        broken = true;
      });
      throw e;
    } finally {
      client.release(broken);
    }
  }

  private async retrying<T>(attempts = 8, run: () => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await run();
      } catch (e) {
        if (attempt < attempts && isRetryable(e)) {
          await new Promise((r) => setTimeout(r, Math.min(200, 5 * 2 ** attempt) * Math.random()));
          continue;
        }
        throw translate(e);
      }
    }
  }

  async ping(): Promise<void> {
    await this.prisma.$queryRaw`select 1`;
  }

  async close(): Promise<void> {
    await this.hints.flushed();
    await this.prisma.$disconnect();
    await this.pool.end().catch(() => undefined);
    for (const lane of this.lanes) await lane.end().catch(() => undefined);
  }
}

export function isRetryable(e: unknown): boolean {
  if ((e as { code?: string })?.code === 'P2034') return true;
  const state = sqlState(e);
  return state === '40001' || state === '40P01';
}

export function isUniqueViolation(e: unknown): boolean {
  return (e as { code?: string })?.code === 'P2002' || sqlState(e) === '23505';
}

const UNREACHABLE = new Set(['P1001', 'P1017', 'P2024', 'ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', '57P01', '57P02', '57P03', '08000', '08003', '08006']);

/** Database failures that are not the caller's fault surface as UNAVAILABLE, never as a user error. */
function translate(e: unknown): unknown {
  if (e instanceof DomainError) return e;
  // Raised by memplane_close_group_change when the extents it was told to remove are not the table's.
  if (sqlState(e) === 'MPL01') return new DomainError('INTERNAL', 'POOL_LEDGER_CORRUPT', (e as Error).message);
  const code = (e as { code?: string })?.code;
  if ((code && UNREACHABLE.has(code)) || /Connection terminated|timeout exceeded when trying to connect/.test(String((e as Error)?.message))) {
    return new DomainError('UNAVAILABLE', 'DATABASE_UNAVAILABLE', 'the database is not reachable; retry later');
  }
  return e;
}
