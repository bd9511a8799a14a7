import { PrismaPg } from '@prisma/adapter-pg';
import { DomainError } from '#domain';
import { Prisma, PrismaClient } from './generated/prisma/client';

export type Tx = Prisma.TransactionClient;

export interface DatabaseOptions {
  url: string;
  /** Connections in this process's pool. */
  poolSize?: number;
}

/**
 * The only owner of a PrismaClient. Transactions retry on serialization
 * failures and deadlocks, which Postgres reports under contention and which
 * are safe to retry because the whole transaction is re-run.
 */
export class Database {
  readonly prisma: PrismaClient;

  constructor(opts: DatabaseOptions) {
    const adapter = new PrismaPg({ connectionString: opts.url, max: opts.poolSize ?? 20 });
    this.prisma = new PrismaClient({ adapter });
  }

  async transaction<T>(fn: (tx: Tx) => Promise<T>, opts: { isolation?: 'ReadCommitted' | 'Serializable'; attempts?: number } = {}): Promise<T> {
    const attempts = opts.attempts ?? 8;
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.prisma.$transaction(fn, {
          isolationLevel: opts.isolation === 'Serializable' ? Prisma.TransactionIsolationLevel.Serializable : Prisma.TransactionIsolationLevel.ReadCommitted,
          maxWait: 10_000,
          timeout: 30_000,
        });
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
    await this.prisma.$disconnect();
  }
}

function pgCode(e: unknown): string | undefined {
  const anyE = e as { code?: string; meta?: { code?: string; driverAdapterError?: { cause?: { originalCode?: string; kind?: string } } }; cause?: { code?: string; originalCode?: string } };
  return anyE?.meta?.driverAdapterError?.cause?.originalCode ?? anyE?.cause?.originalCode ?? anyE?.meta?.code ?? anyE?.cause?.code;
}

export function isRetryable(e: unknown): boolean {
  const code = (e as { code?: string })?.code;
  if (code === 'P2034') return true;
  const pg = pgCode(e);
  return pg === '40001' || pg === '40P01';
}

export function isUniqueViolation(e: unknown): boolean {
  return (e as { code?: string })?.code === 'P2002' || pgCode(e) === '23505';
}

/** Database failures that are not the caller's fault surface as UNAVAILABLE, never as a user error. */
function translate(e: unknown): unknown {
  if (e instanceof DomainError) return e;
  const code = (e as { code?: string })?.code;
  if (code === 'P1001' || code === 'P1017' || code === 'P2024') {
    return new DomainError('UNAVAILABLE', 'DATABASE_UNAVAILABLE', 'the database is not reachable; retry later');
  }
  return e;
}
