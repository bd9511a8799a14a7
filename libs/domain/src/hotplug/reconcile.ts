/**
 * The hotplug reconciler's brain: given what a memory group should be and what QEMU and the
 * guest show now, the one next idempotent step. Level-triggered: a worker that crashed
 * between two steps, or a step that was applied twice, converges all the same, because the
 * answer depends only on the observed state (domain-spec §4–§7).
 */
import type { GroupOnlineType } from '../memory/memory-group';

export interface ObservedMemoryDevice {
  /** QEMU device id (`id=` of device_add). */
  id: string;
  model: 'pc-dimm' | 'virtio-mem-pci';
  /** Backend object id (the last element of the memdev QOM path). */
  backendId: string;
  /** Guest-physical start of the device's region. */
  addrBytes: number;
  /** pc-dimm: its size; virtio-mem: the plugged size (`size`). */
  sizeBytes: number;
  /** virtio-mem: `requested-size`. */
  requestedBytes?: number;
  /** virtio-mem: `max-size` (the region). */
  maxSizeBytes?: number;
  node: number;
}

export interface ObservedMemoryBlock {
  /** N of /sys/devices/system/memory/memoryN. */
  index: number;
  online: boolean;
  /** For online blocks, the zone the kernel put it in (`valid_zones`), when read. */
  zone?: string;
}

export interface ObservedVmMemory {
  devices: ObservedMemoryDevice[];
  /** Ids of the memory backend objects under /objects. */
  backendIds: string[];
  guestBlockSizeBytes: number;
  blocks: ObservedMemoryBlock[];
}

export interface QmpCommandSpec {
  execute: 'object-add' | 'device_add';
  arguments: Record<string, unknown>;
}

export interface DesiredGroupMemory {
  groupId: string;
  kind: 'STATIC' | 'DYNAMIC';
  /** false: the group is being removed. */
  present: boolean;
  deviceId: string;
  backendId: string;
  /** STATIC: the DIMM size. */
  sizeBytes?: number;
  /** DYNAMIC: the size the guest should have plugged. */
  requestedBytes?: number;
  onlineType: GroupOnlineType;
  /** The commands that create the backend and the device (from the topology compiler). */
  objectAdd: QmpCommandSpec;
  deviceAdd: QmpCommandSpec;
}

export type OnlineZoneRequest = 'online' | 'online_movable' | 'online_kernel';

export type HotplugStep =
  | { kind: 'object-add'; command: QmpCommandSpec }
  | { kind: 'device-add'; command: QmpCommandSpec }
  | { kind: 'set-requested-size'; deviceId: string; bytes: number }
  | { kind: 'online-blocks'; indexes: number[]; zone: OnlineZoneRequest }
  | { kind: 'offline-blocks'; indexes: number[] }
  | { kind: 'device-del'; deviceId: string }
  | { kind: 'object-del'; backendId: string }
  /**
   * Nothing to do but let the guest or QEMU move: `on` says whose state will change, so a
   * caller re-reads that (QEMU's devices while virtio-mem converges, the guest's memory
   * blocks while it adds them).
   */
  | { kind: 'wait'; reason: string; on: 'qemu' | 'guest' }
  | { kind: 'done'; pluggedBytes: number; onlineBlocks: number[]; zones: Record<string, number> };

export function zoneRequestFor(onlineType: GroupOnlineType): OnlineZoneRequest {
  return onlineType === 'ONLINE_MOVABLE' ? 'online_movable' : onlineType === 'ONLINE_KERNEL' ? 'online_kernel' : 'online';
}

/** The zone a block must end up in, or undefined when the guest's policy decides (AUTO). */
export function expectedZone(onlineType: GroupOnlineType): string | undefined {
  return onlineType === 'ONLINE_MOVABLE' ? 'Movable' : onlineType === 'ONLINE_KERNEL' ? 'Normal' : undefined;
}

/** The guest memory blocks inside a device's region that the guest has added. */
export function blocksOf(device: ObservedMemoryDevice, observed: ObservedVmMemory): ObservedMemoryBlock[] {
  const bs = observed.guestBlockSizeBytes;
  const regionBytes = device.model === 'pc-dimm' ? device.sizeBytes : (device.maxSizeBytes ?? device.sizeBytes);
  const first = Math.floor(device.addrBytes / bs);
  const end = Math.ceil((device.addrBytes + regionBytes) / bs);
  return observed.blocks.filter((b) => b.index >= first && b.index < end).sort((a, b) => a.index - b.index);
}

function summary(blocks: ObservedMemoryBlock[], pluggedBytes: number): HotplugStep {
  const zones: Record<string, number> = {};
  for (const b of blocks) if (b.online && b.zone) zones[b.zone] = (zones[b.zone] ?? 0) + 1;
  return { kind: 'done', pluggedBytes, onlineBlocks: blocks.filter((b) => b.online).map((b) => b.index), zones };
}

export function nextHotplugStep(desired: DesiredGroupMemory, observed: ObservedVmMemory): HotplugStep {
  const device = observed.devices.find((d) => d.id === desired.deviceId);
  const hasBackend = observed.backendIds.includes(desired.backendId);

  if (!desired.present) {
    if (device) {
      if (device.model === 'virtio-mem-pci') {
        // device_del needs requested-size and size at 0 (hw/virtio/virtio-mem.c unplug request).
        if ((device.requestedBytes ?? 0) !== 0) return { kind: 'set-requested-size', deviceId: device.id, bytes: 0 };
        if (device.sizeBytes !== 0) return { kind: 'wait', reason: `the guest still has ${device.sizeBytes} bytes of ${device.id} plugged`, on: 'qemu' };
        return { kind: 'device-del', deviceId: device.id };
      }
      const online = blocksOf(device, observed).filter((b) => b.online);
      if (online.length) return { kind: 'offline-blocks', indexes: online.map((b) => b.index) };
      return { kind: 'device-del', deviceId: device.id };
    }
    if (hasBackend) return { kind: 'object-del', backendId: desired.backendId };
    return { kind: 'done', pluggedBytes: 0, onlineBlocks: [], zones: {} };
  }

  if (!hasBackend && !device) return { kind: 'object-add', command: desired.objectAdd };
  if (!device) return { kind: 'device-add', command: desired.deviceAdd };

  if (desired.kind === 'DYNAMIC') {
    const want = desired.requestedBytes ?? 0;
    if ((device.requestedBytes ?? 0) !== want) return { kind: 'set-requested-size', deviceId: device.id, bytes: want };
    if (device.sizeBytes !== want) return { kind: 'wait', reason: `virtio-mem ${device.id} has ${device.sizeBytes} of ${want} bytes plugged`, on: 'qemu' };
  }

  const blocks = blocksOf(device, observed);
  const expectedBlocks = Math.ceil(device.sizeBytes / observed.guestBlockSizeBytes);
  if (desired.kind === 'STATIC' && blocks.length < expectedBlocks) {
    return { kind: 'wait', reason: `the guest has added ${blocks.length} of ${expectedBlocks} memory blocks of ${device.id}`, on: 'guest' };
  }
  const offline = blocks.filter((b) => !b.online);
  if (desired.kind === 'DYNAMIC') {
    // After a shrink the virtio-mem driver offlines and then removes blocks itself: an
    // offline block beyond what the plugged size needs is on its way out, not to be onlined.
    const needed = Math.ceil(device.sizeBytes / observed.guestBlockSizeBytes);
    const online = blocks.length - offline.length;
    if (online >= needed) return summary(blocks.filter((b) => b.online), device.sizeBytes);
    if (offline.length === 0) return { kind: 'wait', reason: `the guest has added ${online} of ${needed} memory blocks of ${device.id}`, on: 'guest' };
    return { kind: 'online-blocks', indexes: offline.slice(0, needed - online).map((b) => b.index), zone: zoneRequestFor(desired.onlineType) };
  }
  if (offline.length) return { kind: 'online-blocks', indexes: offline.map((b) => b.index), zone: zoneRequestFor(desired.onlineType) };
  return summary(blocks, device.sizeBytes);
}

/** Blocks the guest put in another zone than the group's online type asks for. */
export function zoneMismatches(onlineType: GroupOnlineType, blocks: readonly ObservedMemoryBlock[]): ObservedMemoryBlock[] {
  const want = expectedZone(onlineType);
  if (!want) return [];
  return blocks.filter((b) => b.online && b.zone !== undefined && b.zone !== want);
}
