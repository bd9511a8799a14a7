/**
 * The MemoryGroup resource around the kernel rules of memory/: which pool it
 * draws from, its desired state, what it holds in the ledger, and the observed
 * state later issues fill from QEMU and the guest.
 */
import { DomainError, Violations } from '../errors';
import { checkName } from '../inventory/names';
import type { PoolMemoryType, PoolState } from '../inventory/pool';
import {
  assertPoolCanBackGuestRam,
  GROUP_ONLINE_TYPES,
  type GroupOnlineType,
  type GuestUnit,
  type MemmapPlacement,
  type MemoryGroupKind,
  type MemoryGroupSpec,
} from '../memory';
import type { MemoryDrift } from '../hotplug/drift';
import { formatBytes } from '../units';
import { MAX_GUEST_NODES, type VmSpec } from './vm';

/** PRESENT: the group should be plugged (once the VM runs). ABSENT: it is being removed. */
export type GroupDesiredState = 'PRESENT' | 'ABSENT';

/**
 * Observed state, output only:
 * PENDING = not (yet) in QEMU (the VM is not running, or a plug is queued);
 * PLUGGED = in QEMU and the guest; RESIZING / UNPLUGGING = a change is under
 * way; FAILED = the last operation on it failed.
 */
export type GroupObservedState = 'PENDING' | 'PLUGGED' | 'RESIZING' | 'UNPLUGGING' | 'FAILED';
export const GROUP_OBSERVED_STATES: readonly GroupObservedState[] = ['PENDING', 'PLUGGED', 'RESIZING', 'UNPLUGGING', 'FAILED'];

/** What a caller gives to create a group. */
export interface CreateMemoryGroupInput {
  /** DNS label, unique within the VM. */
  name: string;
  vm: string;
  pool: string;
  kind: MemoryGroupKind;
  /** STATIC. */
  sizeBytes?: number;
  /** DYNAMIC. */
  maxSizeBytes?: number;
  blockSizeBytes?: number;
  requestedBytes?: number;
  onlineType: GroupOnlineType;
  /** A CPU-less guest node; absent = the topology compiler's node for the pool's host node. */
  guestNodeId?: number;
}

/** A stored group, as the rules need it. */
export interface StoredMemoryGroup extends GroupShape {
  uid: string;
  name: string;
  pool: string;
  /** Host NUMA node of the pool (its "class"). */
  poolHostNodeId: number;
  desiredState: GroupDesiredState;
  /** Bytes of the pool the group holds (whole granules). */
  heldBytes: number;
  /** Added while the VM ran: a DYNAMIC one takes a spare PCIe root port. */
  hotplugged: boolean;
}

export interface MemoryGroup {
  name: string;
  uid: string;
  vm: string;
  pool: string;
  kind: MemoryGroupKind;
  sizeBytes: number;
  maxSizeBytes: number;
  blockSizeBytes: number;
  requestedBytes: number;
  onlineType: GroupOnlineType;
  /** As given; absent = decided by the topology compiler. */
  guestNodeId?: number;
  /** The given node, or the CPU-less node the topology compiler will use (see VmMemoryReport). */
  effectiveGuestNodeId: number;
  desiredState: GroupDesiredState;
  heldBytes: number;
  hotplugged: boolean;
  guestUnit: GuestUnit;
  usableBytes: number;
  memmapPlacement: MemmapPlacement;
  vmemmapBytes: number;
  state: GroupObservedState;
  pluggedBytes: number;
  onlineBlocks: number;
  /** Output only: online blocks per guest zone (Movable, Normal), as last observed. */
  onlineZones?: Record<string, number>;
  /** The operation bringing the guest to the desired state, while one is pending or running. */
  operation?: string;
  /** Output only: the VM's last drift check, the conditions about this group (see Vm.memoryDrift). */
  memoryDrift?: MemoryDrift;
  etag: string;
  createTime: Date;
  updateTime: Date;
}

/** Facts about the pool a group draws from. */
export interface GroupPoolFacts {
  name: string;
  host: string;
  hostNodeId: number;
  state: PoolState;
  memoryType: PoolMemoryType;
  cpuAddressable: boolean;
  daxDevicePath?: string;
}

const isInt = (n: unknown): n is number => typeof n === 'number' && Number.isSafeInteger(n);

/** The kind-specific sizes of a group, flat (0 where a field does not apply to the kind). */
export interface GroupShape {
  kind: MemoryGroupKind;
  sizeBytes: number;
  maxSizeBytes: number;
  blockSizeBytes: number;
  requestedBytes: number;
  onlineType: GroupOnlineType;
  guestNodeId?: number;
}

/**
 * Shape checks of a new group that do not need the guest settings (those are
 * planMemoryGroup's): name, kind-specific fields, the explicit guest node.
 * DYNAMIC defaults: blockSizeBytes 2 MiB, requestedBytes 0.
 */
export function normalizeGroupInput(input: CreateMemoryGroupInput, vm: Pick<VmSpec, 'guestNodes'>): GroupShape {
  const v = new Violations();
  checkName(v, 'name', input.name);
  if (!GROUP_ONLINE_TYPES.includes(input.onlineType)) v.add('onlineType', `onlineType "${String(input.onlineType)}" must be one of ${GROUP_ONLINE_TYPES.join(', ')}`);
  const cpuNodes = vm.guestNodes.length;
  if (input.guestNodeId !== undefined) {
    if (!isInt(input.guestNodeId) || input.guestNodeId < 0 || input.guestNodeId >= MAX_GUEST_NODES) {
      v.add('guestNodeId', `guestNodeId ${String(input.guestNodeId)} must be an integer between 0 and ${MAX_GUEST_NODES - 1}`);
    } else if (input.guestNodeId < cpuNodes) {
      v.add('guestNodeId', `guestNodeId ${input.guestNodeId} is a guest CPU node (0..${cpuNodes - 1}); memory groups go to CPU-less guest nodes (${cpuNodes} and up)`);
    }
  }
  if (input.kind === 'STATIC') {
    for (const f of ['maxSizeBytes', 'blockSizeBytes', 'requestedBytes'] as const) {
      if (input[f] !== undefined && input[f] !== 0) v.add(f, `${f} is a DYNAMIC (virtio-mem) field; a STATIC group has sizeBytes only`);
    }
    if (input.sizeBytes === undefined) v.add('sizeBytes', 'a STATIC group needs sizeBytes');
  } else if (input.kind === 'DYNAMIC') {
    if (input.sizeBytes !== undefined && input.sizeBytes !== 0) v.add('sizeBytes', 'sizeBytes is a STATIC field; a DYNAMIC group has maxSizeBytes, blockSizeBytes and requestedBytes');
    if (input.maxSizeBytes === undefined) v.add('maxSizeBytes', 'a DYNAMIC group needs maxSizeBytes');
  } else {
    v.add('kind', `kind "${String(input.kind)}" must be STATIC or DYNAMIC`);
  }
  v.throwIfAny('INVALID_MEMORY_GROUP');
  const node = input.guestNodeId === undefined ? {} : { guestNodeId: input.guestNodeId };
  if (input.kind === 'STATIC') {
    return { kind: 'STATIC', sizeBytes: input.sizeBytes ?? 0, maxSizeBytes: 0, blockSizeBytes: 0, requestedBytes: 0, onlineType: input.onlineType, ...node };
  }
  return {
    kind: 'DYNAMIC',
    sizeBytes: 0,
    maxSizeBytes: input.maxSizeBytes ?? 0,
    blockSizeBytes: input.blockSizeBytes ?? DEFAULT_VIRTIO_MEM_BLOCK_BYTES,
    requestedBytes: input.requestedBytes ?? 0,
    onlineType: input.onlineType,
    ...node,
  };
}

/** QEMU's x86_64 default block-size with THP (hw/virtio/virtio-mem.c). */
export const DEFAULT_VIRTIO_MEM_BLOCK_BYTES = 2 * 1024 * 1024;

/**
 * The pool must be on the VM's host, CPU-addressable and ACTIVE (for a new
 * group or a growth), and a device-DAX pool backs one STATIC group only.
 */
export function checkGroupPool(pool: GroupPoolFacts, vmHost: string, kind: MemoryGroupKind): void {
  if (pool.host !== vmHost) {
    throw DomainError.invalid(
      'POOL_ON_OTHER_HOST',
      [{ field: 'pool', description: `pool ${pool.name} is on host ${pool.host}, but the VM runs on host ${vmHost}` }],
      { pool: pool.name, poolHost: pool.host, vmHost },
    );
  }
  assertPoolCanBackGuestRam({ name: pool.name, state: pool.state, memoryType: pool.memoryType, cpuAddressable: pool.cpuAddressable });
  if (pool.daxDevicePath !== undefined && kind === 'DYNAMIC') {
    // virtio-mem unplug discards memory (fallocate PUNCH_HOLE), which device-DAX does not support.
    throw DomainError.invalid(
      'DAX_POOL_NOT_DISCARDABLE',
      [{ field: 'pool', description: `pool ${pool.name} is device-DAX ${pool.daxDevicePath}; a DYNAMIC (virtio-mem) group needs a discardable RAM backend` }],
      { pool: pool.name },
    );
  }
}

/** QEMU 7.2's memory-backend-file maps a device from offset 0: one group per device-DAX pool. */
export function checkDaxPoolFree(pool: Pick<GroupPoolFacts, 'name' | 'daxDevicePath'>, heldExtents: number): void {
  if (pool.daxDevicePath !== undefined && heldExtents > 0) {
    throw DomainError.precondition(
      'DAX_POOL_IN_USE',
      `pool ${pool.name} is device-DAX ${pool.daxDevicePath}, which QEMU maps from offset 0: it already backs a group, and one device backs one group`,
      { pool: pool.name },
    );
  }
}

/** Only DYNAMIC groups resize; the new size follows planMemoryGroup's rules. */
export function assertResizable(vm: string, group: Pick<StoredMemoryGroup, 'name' | 'kind' | 'sizeBytes'>): void {
  if (group.kind !== 'DYNAMIC') {
    throw DomainError.precondition(
      'GROUP_NOT_RESIZABLE',
      `group ${vm}/${group.name} is STATIC (a ${formatBytes(group.sizeBytes)} DIMM): it is plugged and removed whole; create a DYNAMIC group to resize`,
      { vm, group: group.name },
    );
  }
}

/**
 * DYNAMIC groups added while the VM runs are virtio-mem-pci devices hotplugged
 * on a spare pcie-root-port planned at launch (pcie.0 takes no hotplug).
 */
export function checkSparePciePorts(vm: Pick<VmSpec, 'name' | 'sparePciePorts'>, hotpluggedDynamicGroups: number): void {
  if (hotpluggedDynamicGroups > vm.sparePciePorts) {
    throw new DomainError(
      'FAILED_PRECONDITION',
      'VM_PCIE_PORTS_EXHAUSTED',
      `sparePciePorts: ${hotpluggedDynamicGroups} DYNAMIC groups added while vm ${vm.name} runs need ${hotpluggedDynamicGroups} spare PCIe root ports but the VM was launched with ${vm.sparePciePorts}`,
      [{ field: 'sparePciePorts', description: `${hotpluggedDynamicGroups} hotplugged DYNAMIC groups need ${hotpluggedDynamicGroups} spare PCIe root ports but the VM has ${vm.sparePciePorts}` }],
      { sparePciePorts: String(vm.sparePciePorts), needed: String(hotpluggedDynamicGroups) },
    );
  }
}

/** The spec the kernel rules check, on the node the group will land on. */
export function groupSpecOf(g: GroupShape, guestNodeId: number): MemoryGroupSpec {
  return g.kind === 'STATIC'
    ? { kind: 'STATIC', sizeBytes: g.sizeBytes, onlineType: g.onlineType, guestNodeId }
    : { kind: 'DYNAMIC', maxSizeBytes: g.maxSizeBytes, blockSizeBytes: g.blockSizeBytes, requestedBytes: g.requestedBytes, onlineType: g.onlineType, guestNodeId };
}

/**
 * The guest node each group lands on: its own `guestNodeId`, else the
 * CPU-less node of its pool's host node. Like the topology compiler, CPU-less
 * nodes follow the k CPU nodes, one per host node ("class") the groups use, in
 * host node order. The compiler may still move the class of a device-DAX-only
 * pool last (SRAT placement), so for such VMs this is a prediction.
 */
export function effectiveGuestNodes(
  cpuNodeCount: number,
  groups: readonly Pick<StoredMemoryGroup, 'uid' | 'poolHostNodeId' | 'guestNodeId'>[],
): Map<string, number> {
  const classes = [...new Set(groups.filter((g) => g.guestNodeId === undefined).map((g) => g.poolHostNodeId))].sort((a, b) => a - b);
  const out = new Map<string, number>();
  for (const g of groups) out.set(g.uid, g.guestNodeId ?? cpuNodeCount + classes.indexOf(g.poolHostNodeId));
  return out;
}
