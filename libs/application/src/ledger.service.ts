import { authorize, DomainError, ledgerFreeExtents, ledgerUsage, type FreeExtent, type LedgerState } from '#domain';
import { LedgerRepository } from '#persistence';
import type { CallContext } from './context';
import type { Mutations } from './mutations';

export interface PoolLedgerView {
  pool: string;
  capacityBytes: number;
  granuleBytes: number;
  allocatedBytes: number;
  freeBytes: number;
  largestFreeBytes: number;
  freeExtentCount: number;
  /** 1 − largest free / free, in basis points. */
  fragmentationBasisPoints: number;
  extents: { vm: string; memoryGroup: string; offsetBytes: number; sizeBytes: number }[];
  freeExtents: FreeExtent[];
}

/** Read side of the pool ledger: who holds which extent, the largest free extent, fragmentation. */
export class LedgerService {
  private readonly ledger = new LedgerRepository();

  constructor(private readonly mutations: Mutations) {}

  async poolLedger(ctx: CallContext, poolName: string): Promise<PoolLedgerView> {
    authorize(ctx.principal, 'read');
    // One snapshot for the pool row and its extents.
    return this.mutations.db.sqlTransaction(async (sql) => {
      await sql.query('set transaction isolation level repeatable read');
      const pool = await this.ledger.poolFacts(sql, poolName);
      if (!pool) throw DomainError.notFound('pool', poolName);
      const rows = await this.ledger.extentsWithOwners(sql, pool.id);
      const state: LedgerState = { capacityBytes: pool.capacityBytes, granuleBytes: pool.granuleBytes, extents: rows };
      const usage = ledgerUsage(state);
      return {
        pool: pool.name,
        capacityBytes: pool.capacityBytes,
        granuleBytes: pool.granuleBytes,
        allocatedBytes: usage.allocatedBytes,
        freeBytes: usage.freeBytes,
        largestFreeBytes: usage.largestFreeBytes,
        freeExtentCount: usage.freeExtentCount,
        fragmentationBasisPoints: usage.fragmentationBasisPoints,
        extents: rows.map((r) => ({ vm: r.vm, memoryGroup: r.memoryGroup, offsetBytes: r.offsetBytes, sizeBytes: r.sizeBytes })),
        freeExtents: ledgerFreeExtents(state),
      };
    });
  }
}
