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
import { LedgerRepository, MemoryGroupRepository, type LockedLedger, type MemoryGroupRecord, type PoolFacts, type Sql } from '#persistence';

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

/** A group as the ledger knows it: its uid, `vm/name` for messages, and what it holds. */
export function ledgerGroupOf(vmName: string, g: Pick<MemoryGroupRecord, 'uid' | 'name' | 'heldBytes'>): LedgerGroup {
  return { uid: g.uid, label: `${vmName}/${g.name}`, heldBytes: g.heldBytes };
}

/**
 * One ledger step inside the caller's transaction (which holds the VM lock):
 * lock the pool and read its extents (one round trip), run the pure
 * allocator, write the diff (one more). The pool row stays locked until the
 * transaction ends, so callers move the ledger last.
 */
export class PoolLedger {
  readonly repo = new LedgerRepository();
  private readonly groups = new MemoryGroupRepository();

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

  /**
   * Moves the group's holding to `bytes` and writes the change in one statement (none when
   * nothing moves); with `deleteGroup` (after a release) the group row goes in it too.
   * Returns what the group holds now.
   */
  async set(
    sql: Sql,
    pool: Omit<PoolFacts, 'host'>,
    group: LedgerGroup,
    bytes: number,
    mode: 'reserve' | 'resize' | 'release',
    opts: { deleteGroup?: boolean } = {},
  ): Promise<number> {
    const change = this.compute(await this.repo.lockAndRead(sql, pool.id), pool, group, bytes, mode);
    if (opts.deleteGroup || change.added.length > 0 || change.removed.length > 0) {
      await this.repo.apply(sql, pool.id, change, { deleteGroup: opts.deleteGroup === true });
    }
    return change.heldBytes;
  }

  /** Deletes a group with its extents, in one statement (a group that holds nothing leaves its pool unlocked). */
  async deleteGroup(sql: Sql, vmName: string, g: MemoryGroupRecord): Promise<void> {
    if (g.heldBytes === 0) await this.groups.delete(sql, g.uid);
    else await this.set(sql, g.poolFacts, ledgerGroupOf(vmName, g), 0, 'release', { deleteGroup: true });
  }
}
