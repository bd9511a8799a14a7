import {
  DomainError,
  etagOf,
  type GroupDesiredState,
  type GroupObservedState,
  type GroupOnlineType,
  type MemoryGroupKind,
  type OperationKind,
  type OperationState,
  type PoolMemoryType,
  type PoolState,
  type StoredMemoryGroup,
} from '#domain';
import type { Tx } from './database';
import type { PoolFacts } from './ledger.repository';
import type { Sql } from './sql';
import { vmRowToRecord, type VmRecord, type VmRow } from './vm.repository';

/** A stored group with what the API shows besides the rules' view. */
export interface MemoryGroupRecord extends StoredMemoryGroup {
  vmId: string;
  poolId: string;
  state: GroupObservedState;
  pluggedBytes: number;
  onlineBlocks: number;
  /** Online blocks per guest zone, as last observed. */
  onlineZones: Record<string, number>;
  version: number;
  etag: string;
  createTime: Date;
  updateTime: Date;
  /** The group's PENDING or RUNNING operation (at most one). */
  activeOperation?: { name: string; kind: OperationKind; state: OperationState };
  /** The pool, as the ledger needs it (same host as the VM). */
  poolFacts: Omit<PoolFacts, 'host'>;
}

export interface GroupRow {
  id: string;
  vm_id: string;
  name: string;
  pool_id: string;
  pool: string;
  pool_host_node_id: number;
  pool_state: string;
  pool_memory_type: string;
  pool_cpu_addressable: boolean;
  pool_dax_device_path: string | null;
  pool_capacity_bytes: string | number;
  pool_granule_bytes: string | number;
  kind: string;
  size_bytes: string | number;
  max_size_bytes: string | number;
  block_size_bytes: string | number;
  requested_bytes: string | number;
  online_type: string;
  guest_node_id: number | null;
  desired_state: string;
  held_bytes: string | number;
  hotplugged: boolean;
  state: string;
  plugged_bytes: string | number;
  online_blocks: number;
  online_zones?: Record<string, number> | null;
  version: number;
  created_at: Date | string;
  updated_at: Date | string;
  op_id: string | null;
  op_kind: string | null;
  op_state: string | null;
}

/** A row as selected by GROUP_SELECT, or the same as JSON (timestamps as strings). */
export function groupRowToRecord(r: GroupRow): MemoryGroupRecord {
  return {
    uid: r.id,
    vmId: r.vm_id,
    name: r.name,
    poolId: r.pool_id,
    pool: r.pool,
    poolHostNodeId: r.pool_host_node_id,
    kind: r.kind as MemoryGroupKind,
    sizeBytes: Number(r.size_bytes),
    maxSizeBytes: Number(r.max_size_bytes),
    blockSizeBytes: Number(r.block_size_bytes),
    requestedBytes: Number(r.requested_bytes),
    onlineType: r.online_type as GroupOnlineType,
    ...(r.guest_node_id === null ? {} : { guestNodeId: r.guest_node_id }),
    desiredState: r.desired_state as GroupDesiredState,
    heldBytes: Number(r.held_bytes),
    hotplugged: r.hotplugged,
    state: r.state as GroupObservedState,
    pluggedBytes: Number(r.plugged_bytes),
    onlineBlocks: r.online_blocks,
    onlineZones: r.online_zones ?? {},
    version: r.version,
    etag: etagOf(r.version),
    createTime: new Date(r.created_at),
    updateTime: new Date(r.updated_at),
    ...(r.op_id ? { activeOperation: { name: r.op_id, kind: r.op_kind as OperationKind, state: r.op_state as OperationState } } : {}),
    poolFacts: {
      id: r.pool_id,
      name: r.pool,
      hostNodeId: r.pool_host_node_id,
      state: r.pool_state as PoolState,
      memoryType: r.pool_memory_type as PoolMemoryType,
      cpuAddressable: r.pool_cpu_addressable,
      ...(r.pool_dax_device_path ? { daxDevicePath: r.pool_dax_device_path } : {}),
      capacityBytes: Number(r.pool_capacity_bytes),
      granuleBytes: Number(r.pool_granule_bytes),
    },
  };
}

export const GROUP_SELECT = `select g.id, g.vm_id, g.name, g.pool_id, p.name as pool, p.host_node_id as pool_host_node_id, p.state::text as pool_state,
  p.memory_type::text as pool_memory_type, p.cpu_addressable as pool_cpu_addressable, p.dax_device_path as pool_dax_device_path,
  p.capacity_bytes as pool_capacity_bytes, p.granule_bytes as pool_granule_bytes, g.kind::text as kind, g.size_bytes, g.max_size_bytes,
  g.block_size_bytes, g.requested_bytes, g.online_type::text as online_type, g.guest_node_id, g.desired_state::text as desired_state, g.held_bytes,
  g.hotplugged, g.state::text as state, g.plugged_bytes, g.online_blocks, g.online_zones, g.version, g.created_at, g.updated_at,
  o.id as op_id, o.kind::text as op_kind, o.state::text as op_state
  from memory_groups g join pools p on p.id = g.pool_id
  left join operations o on o.group_id = g.id and o.state in ('PENDING', 'RUNNING')`;

export interface NewGroupRow {
  vmId: string;
  name: string;
  poolId: string;
  kind: MemoryGroupKind;
  sizeBytes: number;
  maxSizeBytes: number;
  blockSizeBytes: number;
  requestedBytes: number;
  onlineType: GroupOnlineType;
  guestNodeId?: number;
  hotplugged: boolean;
}

/** What memplane_lock_vm returns. */
export interface LockedVmJson {
  vm: VmRow;
  groups: GroupRow[];
}

export function lockedVmFromJson(r: LockedVmJson): { vm: VmRecord; groups: MemoryGroupRecord[] } {
  return { vm: vmRowToRecord(r.vm), groups: r.groups.map(groupRowToRecord) };
}

export class MemoryGroupRepository {
  /**
   * Locks the VM row until the transaction ends and reads the VM and all its
   * groups after the lock is granted, in one round trip (memplane_lock_vm).
   * Every change to a VM, its groups or its operations takes this lock first
   * (then pool locks), so VM limits are checked against a stable set of groups.
   */
  async lockVm(sql: Sql, name: string): Promise<{ vm: VmRecord; groups: MemoryGroupRecord[] }> {
    const rows = await sql.query<{ r: LockedVmJson | null }>(`select memplane_lock_vm($1) as r`, [name]);
    const r = rows[0]?.r;
    if (!r) throw DomainError.notFound('vm', name);
    return lockedVmFromJson(r);
  }

  /** Every group of a VM in creation (plug) order. Call with the VM row locked for a consistent set. */
  async listForVm(sql: Sql, vmId: string): Promise<MemoryGroupRecord[]> {
    const rows = await sql.query<GroupRow>(`${GROUP_SELECT} where g.vm_id = $1::uuid order by g.created_at, g.id`, [vmId]);
    return rows.map(groupRowToRecord);
  }

  /** Desired size and observed state of a DYNAMIC group; the ledger holding is written by the ledger. */
  async setRequested(sql: Sql, id: string, requestedBytes: number, state: GroupObservedState): Promise<void> {
    await sql.query(
      `update memory_groups set requested_bytes = $2, state = $3::"GroupObservedState", version = version + 1, updated_at = now() where id = $1::uuid`,
      [id, requestedBytes, state],
    );
  }

  async setDesired(sql: Sql, id: string, desired: GroupDesiredState, state: GroupObservedState): Promise<void> {
    await sql.query(
      `update memory_groups set desired_state = $2::"GroupDesiredState", state = $3::"GroupObservedState", version = version + 1, updated_at = now() where id = $1::uuid`,
      [id, desired, state],
    );
  }

  /** A new launch cold-plugs every group: none of them takes a spare PCIe port any more. */
  async clearHotplugged(sql: Sql, vmId: string): Promise<void> {
    await sql.query(`update memory_groups set hotplugged = false where vm_id = $1::uuid and hotplugged`, [vmId]);
  }

  /** The group must hold no extents (the foreign key refuses otherwise). */
  async delete(sql: Sql, id: string): Promise<void> {
    await sql.query(`delete from memory_groups where id = $1::uuid`, [id]);
  }

  /** For PoolService (Prisma transactions). */
  async countOnPool(tx: Tx, poolId: string): Promise<number> {
    const rows = await tx.$queryRaw<{ n: bigint }[]>`select count(*) as n from memory_groups where pool_id = ${poolId}::uuid`;
    return Number(rows[0]?.n ?? 0);
  }
}
