import { createHash } from 'node:crypto';
import type { Pool, PoolClient, QueryResult } from 'pg';

/**
 * Raw SQL on `pg`, for the paths where Prisma's per-query overhead dominates
 * (the ledger: every memory-group change runs ~10 statements, several of them
 * while holding a pool's row lock). Same pool of connections as Prisma.
 *
 * Values: numbers, strings, booleans, null, arrays, and objects (sent as JSON).
 * Results: int8 and numeric arrive as strings, so callers convert with Number();
 * timestamps as Date, json/jsonb parsed.
 */
export interface Sql {
  query<R = Record<string, unknown>>(text: string, values?: readonly unknown[]): Promise<R[]>;
  /**
   * Tells whoever LISTENs on `channel` of a change this work made, once it is committed:
   * at once outside a transaction, after COMMIT inside one (never when it rolls back).
   * A hint, sent on its own (see PgHints): listeners re-read what they watch on a timer
   * as well, so a hint that is lost only costs latency.
   */
  notify(channel: string, payload: string): void;
}

/** Where a PgSql's hints go: straight to PgHints, or held until its transaction commits. */
export type HintSink = (channel: string, payload: string) => void;

/**
 * Prepared statements per connection: Postgres parses and plans a text once
 * per connection and reuses it (planning these queries cost more than running
 * them). Names come from the text, so one text always has one name.
 */
const names = new Map<string, string>();
export function statementName(text: string): string {
  let name = names.get(text);
  if (!name) {
    name = `mp_${createHash('sha1').update(text).digest('hex').slice(0, 24)}`;
    if (names.size < 10_000) names.set(text, name);
  }
  return name;
}

type Queryable = Pick<PoolClient, 'query'> | Pick<Pool, 'query'>;

export class PgSql implements Sql {
  constructor(
    private readonly client: Queryable,
    private readonly hint: HintSink,
  ) {}

  notify(channel: string, payload: string): void {
    this.hint(channel, payload);
  }

  async query<R>(text: string, values: readonly unknown[] = []): Promise<R[]> {
    const r = (await this.client.query({ name: statementName(text), text, values: values as unknown[] })) as QueryResult;
    return r.rows as R[];
  }
}

/** Postgres SQLSTATE of a failure, from pg or from Prisma's driver adapter. */
export function sqlState(e: unknown): string | undefined {
  const anyE = e as { code?: unknown; severity?: unknown; meta?: { code?: string; driverAdapterError?: { cause?: { originalCode?: string } } }; cause?: { code?: string; originalCode?: string } };
  // pg's DatabaseError carries the server's severity and SQLSTATE; Prisma's errors carry P-codes.
  if (typeof anyE?.severity === 'string' && typeof anyE.code === 'string') return anyE.code;
  return anyE?.meta?.driverAdapterError?.cause?.originalCode ?? anyE?.cause?.originalCode ?? anyE?.meta?.code ?? anyE?.cause?.code;
}
