/**
 * Drift: where a running VM's memory, as QEMU and the guest show it, differs from what
 * Postgres says it should be, while no operation is changing it. Pure comparison; the
 * sweeper observes (QMP query-memory-devices and qom-list /objects, the guest agent's
 * memory blocks and their zones) and records what this returns.
 *
 * What is expected of each group (domain-spec §4–§7):
 * - a group whose desired state is PRESENT and that is not FAILED (a failed plug gave its
 *   capacity back) has its device in QEMU: a pc-dimm of its size, or a virtio-mem device
 *   whose requested-size and plugged size are the group's requested bytes;
 * - every guest memory block the plugged memory needs is online (a DIMM's whole range; for
 *   virtio-mem ⌈plugged / block⌉ blocks, as the engine counts them);
 * - with ONLINE_MOVABLE / ONLINE_KERNEL, every online block is in that zone (AUTO: the
 *   guest's policy decides, nothing to compare);
 * - no other memory device is in QEMU, and no group backend (`memgrp-…`) is left over.
 */
import type { GroupOnlineType, MemoryGroupKind } from '../memory';
import { memoryDeviceIds } from '../topology/devices';
import type { GroupDesiredState, GroupObservedState } from '../vm/memory-group-resource';
import { blocksOf, expectedZone, type ObservedMemoryDevice, type ObservedVmMemory } from './reconcile';

export type MemoryDriftReason =
  /** The group's device is not in QEMU. */
  | 'DEVICE_MISSING'
  /** Plugged bytes (a DIMM's size, a virtio-mem device's `size`) differ from the desired bytes. */
  | 'PLUGGED_SIZE_MISMATCH'
  /** A virtio-mem device's `requested-size` differs from the group's requested bytes. */
  | 'REQUESTED_SIZE_MISMATCH'
  /** Fewer guest memory blocks online than the plugged memory needs. */
  | 'BLOCKS_NOT_ONLINE'
  /** Online blocks in another zone than the group's online type asks for. */
  | 'WRONG_ZONE'
  /** A memory device in QEMU that no present group accounts for. */
  | 'UNEXPECTED_DEVICE'
  /** A group memory backend object in QEMU that no present group or device uses. */
  | 'UNEXPECTED_BACKEND'
  /** The VM is RUNNING in Postgres but its QEMU process is gone. */
  | 'QEMU_NOT_RUNNING';

export const MEMORY_DRIFT_REASONS: readonly MemoryDriftReason[] = [
  'DEVICE_MISSING',
  'PLUGGED_SIZE_MISMATCH',
  'REQUESTED_SIZE_MISMATCH',
  'BLOCKS_NOT_ONLINE',
  'WRONG_ZONE',
  'UNEXPECTED_DEVICE',
  'UNEXPECTED_BACKEND',
  'QEMU_NOT_RUNNING',
];

/** One difference, with the numbers that show it (only those that apply to its reason). */
export interface MemoryDriftCondition {
  reason: MemoryDriftReason;
  /** The group concerned, when one is (a device or backend nobody asked for has none). */
  memoryGroup?: string;
  /** The QEMU device or object id. */
  qemuId?: string;
  message: string;
  expectedBytes?: number;
  observedBytes?: number;
  expectedBlocks?: number;
  observedBlocks?: number;
  expectedZone?: string;
  observedZone?: string;
}

export type MemoryDriftState = 'IN_SYNC' | 'DRIFTED';
export const MEMORY_DRIFT_STATES: readonly MemoryDriftState[] = ['IN_SYNC', 'DRIFTED'];

/** The last drift check of a running VM (output only). */
export interface MemoryDrift {
  state: MemoryDriftState;
  conditions: MemoryDriftCondition[];
  /** When the last check began observing QEMU and the guest (what it saw is at least this recent). */
  checkTime: Date;
}

/** A group as the drift check needs it. */
export interface DriftGroup {
  name: string;
  kind: MemoryGroupKind;
  desiredState: GroupDesiredState;
  state: GroupObservedState;
  sizeBytes: number;
  requestedBytes: number;
  onlineType: GroupOnlineType;
}

/** A memory device the engine never plugs (another type, or added without an id). */
export interface UnmodelledMemoryDevice {
  type: string;
  id?: string;
}

export interface DriftObservation extends ObservedVmMemory {
  unmodelledDevices?: readonly UnmodelledMemoryDevice[];
}

/** Should QEMU have this group's device while no operation runs? */
export function groupExpectedInQemu(g: Pick<DriftGroup, 'desiredState' | 'state'>): boolean {
  return g.desiredState === 'PRESENT' && g.state !== 'FAILED';
}

/** The bytes a group should have plugged. */
export function desiredPluggedBytes(g: Pick<DriftGroup, 'kind' | 'sizeBytes' | 'requestedBytes'>): number {
  return g.kind === 'STATIC' ? g.sizeBytes : g.requestedBytes;
}

function deviceIdOf(g: Pick<DriftGroup, 'name' | 'kind'>): string {
  const ids = memoryDeviceIds(g.name);
  return g.kind === 'STATIC' ? ids.dimmId : ids.virtioMemId;
}

const GROUP_BACKEND_PREFIX = memoryDeviceIds('').backendId;

function groupConditions(g: DriftGroup, device: ObservedMemoryDevice | undefined, observed: ObservedVmMemory): MemoryDriftCondition[] {
  const out: MemoryDriftCondition[] = [];
  const deviceId = deviceIdOf(g);
  const want = desiredPluggedBytes(g);
  const base = { memoryGroup: g.name, qemuId: deviceId };
  if (!device) {
    return [{ ...base, reason: 'DEVICE_MISSING', expectedBytes: want, observedBytes: 0, message: `${deviceId} of group ${g.name} is not in QEMU; ${want} bytes should be plugged` }];
  }
  if (g.kind === 'DYNAMIC' && (device.requestedBytes ?? 0) !== g.requestedBytes) {
    out.push({
      ...base,
      reason: 'REQUESTED_SIZE_MISMATCH',
      expectedBytes: g.requestedBytes,
      observedBytes: device.requestedBytes ?? 0,
      message: `virtio-mem ${deviceId} has requested-size ${device.requestedBytes ?? 0}, but group ${g.name} requests ${g.requestedBytes} bytes`,
    });
  }
  if (device.sizeBytes !== want) {
    out.push({
      ...base,
      reason: 'PLUGGED_SIZE_MISMATCH',
      expectedBytes: want,
      observedBytes: device.sizeBytes,
      message: `${deviceId} has ${device.sizeBytes} bytes plugged, but group ${g.name} should have ${want}`,
    });
  }
  const blocks = blocksOf(device, observed);
  const online = blocks.filter((b) => b.online);
  const needed = Math.ceil(device.sizeBytes / observed.guestBlockSizeBytes);
  if (online.length < needed) {
    out.push({
      ...base,
      reason: 'BLOCKS_NOT_ONLINE',
      expectedBlocks: needed,
      observedBlocks: online.length,
      message: `the guest has ${online.length} of the ${needed} memory blocks of ${deviceId} online`,
    });
  }
  const zone = expectedZone(g.onlineType);
  const zoned = online.filter((b) => b.zone !== undefined);
  const wrong = zone === undefined ? [] : zoned.filter((b) => b.zone !== zone);
  if (zone !== undefined && wrong.length > 0) {
    const zones = [...new Set(wrong.map((b) => b.zone!))].sort();
    out.push({
      ...base,
      reason: 'WRONG_ZONE',
      expectedZone: zone,
      observedZone: zones.join(','),
      expectedBlocks: zoned.length,
      observedBlocks: zoned.length - wrong.length,
      message: `memory block(s) ${wrong.map((b) => b.index).join(', ')} of ${deviceId} are online in ${zones.join(', ')}, but group ${g.name} asks for ${g.onlineType} (${zone})`,
    });
  }
  return out;
}

/**
 * Every difference between the groups' desired state and what QEMU and the guest show, in a
 * stable order (groups by name, then devices and backends nobody asked for). Empty = in sync.
 * Blocks without a `zone` are not zone-checked (the caller reads zones of online blocks only).
 */
export function memoryDrift(groups: readonly DriftGroup[], observed: DriftObservation): MemoryDriftCondition[] {
  const out: MemoryDriftCondition[] = [];
  const expected = [...groups].filter(groupExpectedInQemu).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const matched = new Set<string>();
  const byDeviceId = new Map(groups.map((g) => [deviceIdOf(g), g]));
  const byBackendId = new Map(groups.map((g) => [memoryDeviceIds(g.name).backendId, g]));
  for (const g of expected) {
    const device = observed.devices.find((d) => d.id === deviceIdOf(g) && d.model === (g.kind === 'STATIC' ? 'pc-dimm' : 'virtio-mem-pci'));
    if (device) matched.add(device.id);
    out.push(...groupConditions(g, device, observed));
  }
  for (const d of [...observed.devices].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))) {
    if (matched.has(d.id)) continue;
    const known = byDeviceId.get(d.id);
    out.push({
      reason: 'UNEXPECTED_DEVICE',
      ...(known ? { memoryGroup: known.name } : {}),
      qemuId: d.id,
      expectedBytes: 0,
      observedBytes: d.sizeBytes,
      message: known
        ? `${d.model} ${d.id} (${d.sizeBytes} bytes plugged) is in QEMU, but group ${known.name} is ${known.desiredState === 'ABSENT' ? 'being removed' : known.state}`
        : `${d.model} ${d.id} (${d.sizeBytes} bytes plugged) is in QEMU, but no memory group of this VM accounts for it`,
    });
  }
  for (const d of observed.unmodelledDevices ?? []) {
    out.push({
      reason: 'UNEXPECTED_DEVICE',
      ...(d.id ? { qemuId: d.id } : {}),
      message: `a ${d.type} memory device${d.id ? ` ${d.id}` : ' without an id'} is in QEMU; no memory group of this VM accounts for it`,
    });
  }
  const usedBackends = new Set(observed.devices.map((d) => d.backendId));
  for (const id of [...observed.backendIds].sort()) {
    if (!id.startsWith(GROUP_BACKEND_PREFIX) || usedBackends.has(id)) continue;
    const owner = byBackendId.get(id);
    if (owner && groupExpectedInQemu(owner)) continue; // its device is missing: DEVICE_MISSING says so
    out.push({
      reason: 'UNEXPECTED_BACKEND',
      ...(owner ? { memoryGroup: owner.name } : {}),
      qemuId: id,
      message: owner
        ? `memory backend ${id} of group ${owner.name} is left in QEMU, but the group is ${owner.desiredState === 'ABSENT' ? 'being removed' : owner.state}`
        : `memory backend ${id} is in QEMU, but no memory group of this VM has that name`,
    });
  }
  return out;
}

/** The drift record of one check. */
export function driftRecord(conditions: readonly MemoryDriftCondition[], checkTime: Date): MemoryDrift {
  return { state: conditions.length ? 'DRIFTED' : 'IN_SYNC', conditions: [...conditions], checkTime };
}

/**
 * A group's share of its VM's drift record: the conditions that name it. None for a group
 * created after the check (the check never saw it).
 */
export function groupDrift(vm: MemoryDrift | undefined, groupName: string, groupCreateTime?: Date): MemoryDrift | undefined {
  if (!vm || (groupCreateTime && groupCreateTime > vm.checkTime)) return undefined;
  return driftRecord(
    vm.conditions.filter((c) => c.memoryGroup === groupName),
    vm.checkTime,
  );
}

/** Two checks found the same differences (so the log says only what changed). */
export function sameDrift(a: readonly MemoryDriftCondition[], b: readonly MemoryDriftCondition[]): boolean {
  const key = (c: MemoryDriftCondition) =>
    [c.reason, c.memoryGroup, c.qemuId, c.expectedBytes, c.observedBytes, c.expectedBlocks, c.observedBlocks, c.expectedZone, c.observedZone].join('|');
  return a.length === b.length && a.every((c, i) => key(c) === key(b[i]!));
}
