import {
  assertPoolCanBackGuestRam,
  checkDaxPoolFree,
  DomainError,
  holdingBytes,
  isDomainError,
  ledgerRelease,
  ledgerReserve,
  ledgerResize,
  type LedgerChange,
} from '#domain';
import { LedgerRepository, type LockedLedger, type PoolFacts, type Sql } from '#persistence';

export interface LedgerGroup {
  uid: string;
  /** `vm/group`, for messages. */
  label: string;
  heldBytes: number;
}

const LEDGER_REFUSALS = new Set(['POOL_CAPACITY_EXHAUSTED', 'POOL_FRAGMENTED', 'POOL_EXTENT_NOT_EXTENDABLE']);

/** The allocator names groups by uid; callers know them as vm/name, in a named pool. */
function relabel(e: unknown, pool: string, group: LedgerGroup): unknown {
  if (!isDomainError(e) || !LEDGER_REFUSALS.has(e.reason)) return e;
  const { groupId: _uid, ...metadata } = e.metadata;
  return new DomainError(e.code, e.reason, `pool ${pool}: ${e.message.split(group.uid).join(group.label)}`, e.violations, {
    ...metadata,
    pool,
    memoryGroup: group.label,
  });
}

/** A computed ledger change, not yet written. */
export interface LedgerStep {
  /** What the group holds once the step is written. */
  heldBytes: number;
  /** Writes the change in one statement; `deleteGroup` also deletes the group row (after a release). */
  write(opts?: { deleteGroup?: boolean }): Promise<void>;
}

/**
 * One ledger step inside the caller's transaction (which holds the VM lock):
 * lock the pool and read its extents (one round trip), run the pure
 * allocator, write the diff (one more). The pool row stays locked until the
 * transaction ends, so callers plan the step last.
 */
export class PoolLedger {
  readonly repo = new LedgerRepository();

  async plan(sql: Sql, pool: Omit<PoolFacts, 'host'>, group: LedgerGroup, bytes: number, mode: 'reserve' | 'resize' | 'release'): Promise<LedgerStep> {
    const change = this.compute(await this.repo.lockAndRead(sql, pool.id), pool, group, bytes, mode);
    return {
      heldBytes: change.heldBytes,
      write: async (opts = {}) => {
        if (opts.deleteGroup || change.added.length > 0 || change.removed.length > 0) {
          await this.repo.apply(sql, pool.id, change, { deleteGroup: opts.deleteGroup === true });
        }
      },
    };
  }

  /**
   * The allocator's change for a ledger read under the pool's lock (pure):
   * growth needs an ACTIVE pool, as read under the lock (a pool can be
   * drained at any time); a device-DAX backend maps one range of the device,
   * so its holding stays one extent.
   */
  compute(locked: LockedLedger, pool: Omit<PoolFacts, 'host'>, group: LedgerGroup, bytes: number, mode: 'reserve' | 'resize' | 'release'): LedgerChange {
    const { pool: current, state } = locked;
    if (mode !== 'release' && holdingBytes(bytes, current.granuleBytes) > group.heldBytes) {
      assertPoolCanBackGuestRam({ name: pool.name, state: current.state, memoryType: pool.memoryType, cpuAddressable: pool.cpuAddressable });
    }
    if (mode === 'reserve') checkDaxPoolFree(pool, state.extents.length);
    const opts = { contiguous: pool.daxDevicePath !== undefined };
    try {
      return mode === 'reserve'
        ? ledgerReserve(state, group.uid, bytes, opts)
        : mode === 'resize'
          ? ledgerResize(state, group.uid, bytes, opts)
          : ledgerRelease(state, group.uid);
    } catch (e) {
      throw relabel(e, pool.name, group);
    }
  }

  /** plan + write, for callers that do not hand the answer record over. */
  async set(sql: Sql, pool: Omit<PoolFacts, 'host'>, group: LedgerGroup, bytes: number, mode: 'reserve' | 'resize' | 'release'): Promise<number> {
    const step = await this.plan(sql, pool, group, bytes, mode);
    await step.write();
    return step.heldBytes;
  }
}
