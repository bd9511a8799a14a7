import { DomainError, type LedgerChange, type LedgerExtent, type LedgerState, type PoolMemoryType, type PoolState } from '#domain';
import type { Tx } from './database';
import type { Sql } from './sql';

/** What a group's rules need from its pool; all of it immutable except `state`. */
export interface PoolFacts {
  id: string;
  name: string;
  host: string;
  hostNodeId: number;
  state: PoolState;
  memoryType: PoolMemoryType;
  cpuAddressable: boolean;
  daxDevicePath?: string;
  capacityBytes: number;
  granuleBytes: number;
}

export interface LockedPool {
  state: PoolState;
  capacityBytes: number;
  granuleBytes: number;
}

export interface LedgerRow extends LedgerExtent {
  vm: string;
  memoryGroup: string;
}

export interface FactsRow {
  id: string;
  name: string;
  host: string;
  host_node_id: number;
  state: string;
  memory_type: string;
  cpu_addressable: boolean;
  dax_device_path: string | null;
  capacity_bytes: string;
  granule_bytes: string;
}

export function poolFactsFromRow(r: FactsRow): PoolFacts {
  return {
    id: r.id,
    name: r.name,
    host: r.host,
    hostNodeId: r.host_node_id,
    state: r.state as PoolState,
    memoryType: r.memory_type as PoolMemoryType,
    cpuAddressable: r.cpu_addressable,
    ...(r.dax_device_path ? { daxDevicePath: r.dax_device_path } : {}),
    capacityBytes: Number(r.capacity_bytes),
    granuleBytes: Number(r.granule_bytes),
  };
}

/** A pool's ledger as memplane_lock_pool_ledger returns it. */
export interface LedgerJson {
  state: string;
  capacityBytes: number | string;
  granuleBytes: number | string;
  extents: [string, number | string, number | string][];
}

export interface LockedLedger {
  pool: LockedPool;
  state: LedgerState;
}

export function lockedLedgerFromJson(l: LedgerJson): LockedLedger {
  const pool = { state: l.state as PoolState, capacityBytes: Number(l.capacityBytes), granuleBytes: Number(l.granuleBytes) };
  return {
    pool,
    state: {
      capacityBytes: pool.capacityBytes,
      granuleBytes: pool.granuleBytes,
      extents: l.extents.map(([groupId, offsetBytes, sizeBytes]) => ({ groupId, offsetBytes: Number(offsetBytes), sizeBytes: Number(sizeBytes) })),
    },
  };
}

const sum = (extents: readonly { sizeBytes: number }[]) => extents.reduce((s, e) => s + e.sizeBytes, 0);

/**
 * The pool ledger in Postgres. A change runs as: lock the pool row, read its
 * extents (in a statement of its own, so it sees everything committed before
 * the lock was granted), run the pure allocator, write the diff. Postgres also
 * refuses overlapping extents (a deferred exclusion constraint) and
 * allocated_bytes above capacity (a check constraint).
 */
export class LedgerRepository {
  async poolFacts(sql: Sql, name: string): Promise<PoolFacts | undefined> {
    const rows = await sql.query<FactsRow>(
      `select p.id, p.name, h.name as host, p.host_node_id, p.state::text as state, p.memory_type::text as memory_type, p.cpu_addressable,
         p.dax_device_path, p.capacity_bytes, p.granule_bytes
       from pools p join hosts h on h.id = p.host_id where p.name = $1`,
      [name],
    );
    return rows[0] ? poolFactsFromRow(rows[0]) : undefined;
  }

  /**
   * Locks the pool row until the transaction ends (every ledger change of the
   * pool serialises here) and reads its ledger after the lock is granted, in
   * one round trip (memplane_lock_pool_ledger). NO KEY UPDATE: rows
   * referencing the pool (new groups) can still be inserted meanwhile.
   */
  async lockAndRead(sql: Sql, poolId: string): Promise<LockedLedger> {
    const rows = await sql.query<{ l: LedgerJson | null }>(`select memplane_lock_pool_ledger($1::uuid) as l`, [poolId]);
    const l = rows[0]?.l;
    if (!l) throw DomainError.notFound('pool', poolId);
    return lockedLedgerFromJson(l);
  }

  /**
   * Writes one allocator change in one statement: the removed and added
   * extents, the pool's allocated_bytes and the group's held_bytes. With
   * deleteGroup (a release) the group row goes too.
   */
  async apply(sql: Sql, poolId: string, change: LedgerChange, opts: { deleteGroup?: boolean } = {}): Promise<void> {
    const { added, removed } = change;
    const delta = sum(added) - sum(removed);
    const rows = await sql.query<{ deleted: string }>(
      `with del as (
         delete from pool_extents e using unnest($3::bigint[], $4::bigint[]) as r(o, s)
         where e.pool_id = $1::uuid and e.group_id = $2::uuid and e.offset_bytes = r.o and e.size_bytes = r.s
         returning 1),
       ins as (
         insert into pool_extents (pool_id, group_id, offset_bytes, size_bytes)
         select $1::uuid, $2::uuid, a.o, a.s from unnest($5::bigint[], $6::bigint[]) as a(o, s)
         returning 1),
       grp as (update memory_groups set held_bytes = $7 where id = $2::uuid and not $9::boolean returning 1),
       gone as (delete from memory_groups where id = $2::uuid and $9::boolean returning 1),
       pool as (update pools set allocated_bytes = allocated_bytes + $8 where id = $1::uuid returning 1)
       select (select count(*) from del) as deleted, (select count(*) from ins) as inserted, (select count(*) from grp) as groups,
         (select count(*) from pool) as pools, (select count(*) from gone) as gone`,
      [
        poolId,
        change.groupId,
        removed.map((e) => e.offsetBytes),
        removed.map((e) => e.sizeBytes),
        added.map((e) => e.offsetBytes),
        added.map((e) => e.sizeBytes),
        change.heldBytes,
        delta,
        opts.deleteGroup === true,
      ],
    );
    const deleted = Number(rows[0]?.deleted ?? -1);
    if (deleted !== removed.length) {
      // The extents read under the pool lock are not the ones in the table: never write on a ledger we misread.
      throw new DomainError('INTERNAL', 'POOL_LEDGER_CORRUPT', `pool ${poolId}: expected to remove ${removed.length} extents of group ${change.groupId}, found ${deleted}`);
    }
  }

  /** The pool's extents with the VM and group holding each, by offset. */
  async extentsWithOwners(sql: Sql, poolId: string): Promise<LedgerRow[]> {
    const rows = await sql.query<{ group_id: string; offset_bytes: string; size_bytes: string; vm: string; memory_group: string }>(
      `select e.group_id, e.offset_bytes, e.size_bytes, v.name as vm, g.name as memory_group
       from pool_extents e join memory_groups g on g.id = e.group_id join vms v on v.id = g.vm_id
       where e.pool_id = $1::uuid order by e.offset_bytes`,
      [poolId],
    );
    return rows.map((r) => ({ groupId: r.group_id, offsetBytes: Number(r.offset_bytes), sizeBytes: Number(r.size_bytes), vm: r.vm, memoryGroup: r.memory_group }));
  }

  /** End of the highest extent of the pool (0 when empty): capacity may not shrink below it. For PoolService (Prisma). */
  async highestExtentEnd(tx: Tx, poolId: string): Promise<number> {
    const rows = await tx.$queryRaw<{ end: bigint | null }[]>`select max(offset_bytes + size_bytes) as end from pool_extents where pool_id = ${poolId}::uuid`;
    return Number(rows[0]?.end ?? 0);
  }
}
