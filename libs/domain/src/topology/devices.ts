import { DomainError, Violations } from '../errors';
import { GiB, MiB, alignUp, formatBytes, isMultipleOf } from '../units';
import { ramBackend, type GuestLayout } from './layout';
import type { MachineType, MemoryBackend, MemoryDevice, MemoryGroupInput, PciePort, PoolInput, TopologyInput } from './types';
import { MAX_ROOT_PORTS } from './validate';

export const DEFAULT_VIRTIO_MEM_BLOCK_BYTES = 2 * MiB;
export const DEFAULT_DAX_ALIGN_BYTES = 2 * MiB;
/** QEMU_VMALLOC_ALIGN on x86_64 Linux: the alignment QEMU gives anonymous RAM blocks. */
const RAM_BLOCK_ALIGN_BYTES = 2 * MiB;
const MIN_MEMORY_BLOCK_BYTES = 128 * MiB;
const MAX_MEMORY_BLOCK_BYTES = 2 * GiB;
/** arch/x86/mm/init_64.c MEM_SIZE_FOR_LARGE_BLOCK */
const MEM_SIZE_FOR_LARGE_BLOCK = 64 * GiB;
const FOUR_GIB = 4 * GiB;

/**
 * Machine type: `pc` (i440fx) unless spare PCIe ports are asked for, then `q35`.
 * Runtime virtio-mem-pci hotplug on q35 needs a hotplug-capable `pcie-root-port` declared at
 * launch (pcie.0 refuses hotplug, domain-spec "Observed"); `pcie-root-port` exists only on
 * PCIe machines. On `pc`, `device_add virtio-mem-pci` at run time lands on pci.0, which has
 * ACPI PCI hotplug (checked here with QEMU 7.2 via QMP; guest-side onlining of such a device
 * is not yet verified with a real guest). Both machines support `hmat=on`.
 */
export function chooseMachine(sparePciePorts: number): { type: MachineType; reason: string } {
  return sparePciePorts > 0
    ? { type: 'q35', reason: `${sparePciePorts} spare pcie-root-port(s) requested for virtio-mem hotplug; pcie-root-port needs a PCIe (q35) machine` }
    : { type: 'pc', reason: 'no spare PCIe ports requested; i440fx pci.0 supports ACPI PCI hotplug for virtio-mem-pci added later' };
}

/** RAM split around the 32-bit PCI hole (hw/i386/pc_piix.c with gigabyte_align, hw/i386/pc_q35.c). */
export function ramLayout(machine: MachineType, bootBytes: number): { below4gBytes: number; above4gBytes: number } {
  let lowmem: number;
  if (machine === 'pc') lowmem = bootBytes >= 0xe0000000 ? 0xc0000000 : 0xe0000000;
  else lowmem = bootBytes >= 0xb0000000 ? 0x80000000 : 0xb0000000;
  return bootBytes >= lowmem ? { below4gBytes: lowmem, above4gBytes: bootBytes - lowmem } : { below4gBytes: bootBytes, above4gBytes: 0 };
}

/** hw/i386/pc.c pc_memory_init: device memory starts at ROUND_UP(4 GiB + above-4G RAM, 1 GiB). */
export function deviceMemoryBase(machine: MachineType, bootBytes: number): number {
  return alignUp(FOUR_GIB + ramLayout(machine, bootBytes).above4gBytes, GiB);
}

/**
 * arch/x86/mm/init_64.c probe_memory_block_size for a guest (X86_FEATURE_HYPERVISOR): 128 MiB
 * if the boot memory ends below 64 GiB, else the largest power of two ≤ 2 GiB that divides
 * the end of boot memory.
 */
export function predictGuestMemoryBlockBytes(machine: MachineType, bootBytes: number): number {
  const { below4gBytes, above4gBytes } = ramLayout(machine, bootBytes);
  const end = above4gBytes > 0 ? FOUR_GIB + above4gBytes : below4gBytes;
  if (end < MEM_SIZE_FOR_LARGE_BLOCK) return MIN_MEMORY_BLOCK_BYTES;
  let bz = MAX_MEMORY_BLOCK_BYTES;
  while (bz > MIN_MEMORY_BLOCK_BYTES && !isMultipleOf(end, bz)) bz /= 2;
  return bz;
}

/** QEMU ids for a group's objects; the hypervisor layer uses the same ones for QMP. */
export function memoryDeviceIds(groupId: string): { backendId: string; dimmId: string; virtioMemId: string; rootPortId: string } {
  return { backendId: `memgrp-${groupId}`, dimmId: `dimm-${groupId}`, virtioMemId: `vmem-${groupId}`, rootPortId: `rp-${groupId}` };
}

export function spareRootPortId(index: number): string {
  return `rp-spare${index}`;
}

export function groupBackend(group: MemoryGroupInput, pool: PoolInput, sizeBytes: number): MemoryBackend {
  const id = memoryDeviceIds(group.id).backendId;
  if (pool.daxDevicePath === undefined) return ramBackend(id, sizeBytes, pool.hostNodeId, group.kind === 'DYNAMIC');
  return {
    id,
    type: 'memory-backend-file',
    sizeBytes,
    hostNodeId: pool.hostNodeId,
    bindHostNode: false,
    memPath: pool.daxDevicePath,
    alignBytes: pool.daxAlignBytes ?? DEFAULT_DAX_ALIGN_BYTES,
    share: true,
    // pmem=on makes QEMU persist writes (libpmem); only meaningful for a persistent device.
    pmem: pool.memoryType === 'PERSISTENT',
    reserve: false,
  };
}

export interface DevicePlan {
  devices: MemoryDevice[];
  pciePorts: PciePort[];
  deviceMemory: { baseAddr: number; sizeBytes: number };
  warnings: string[];
}

/**
 * Turns groups into QEMU memory devices: STATIC → pc-dimm (one ACPI slot each), DYNAMIC →
 * virtio-mem-pci. Sizes must cover whole guest memory blocks: Linux adds hotplugged memory
 * only in block-aligned ranges (mm/memory_hotplug.c check_hotplug_memory_range). The device
 * memory region must hold every group (plugged now or later) and QEMU's first-fit placement
 * (hw/mem/memory-device.c) is simulated in launch order, then hotplug order.
 */
export function planMemoryDevices(
  input: TopologyInput,
  layout: GuestLayout,
  machine: MachineType,
  bootBytes: number,
  guestBlockBytes: number,
): DevicePlan {
  const { vm, pools, groups } = input;
  const poolById = new Map(pools.map((p) => [p.id, p]));
  const v = new Violations();
  const warnings: string[] = [];

  if (vm.maxMemoryBytes < bootBytes)
    v.add('vm.maxMemoryBytes', `maximum memory ${formatBytes(vm.maxMemoryBytes)} must be at least the boot memory ${formatBytes(bootBytes)} (hw/core/machine.c)`);
  if (vm.memorySlots > 0 && vm.maxMemoryBytes === bootBytes)
    v.add('vm.memorySlots', `slots were given but maxmem equals the boot memory ${formatBytes(bootBytes)}, leaving no device memory (hw/core/machine.c)`);

  const indexed = groups.map((g, index) => ({ g, index }));
  const statics = indexed.filter(({ g }) => g.kind === 'STATIC');
  if (statics.length > vm.memorySlots)
    v.add('vm.memorySlots', `${statics.length} STATIC groups need ${statics.length} pc-dimm slots, only ${vm.memorySlots} configured`);

  for (const { g, index } of indexed) {
    if (g.kind === 'STATIC' && !isMultipleOf(g.sizeBytes ?? 0, guestBlockBytes))
      v.add(`groups[${index}].sizeBytes`, `${formatBytes(g.sizeBytes ?? 0)} is not a multiple of the guest memory block ${formatBytes(guestBlockBytes)} (check_hotplug_memory_range)`);
    if (g.kind === 'DYNAMIC') {
      const unit = Math.max(g.blockSizeBytes ?? DEFAULT_VIRTIO_MEM_BLOCK_BYTES, guestBlockBytes);
      if (!isMultipleOf(g.maxSizeBytes ?? 0, unit))
        v.add(`groups[${index}].maxSizeBytes`, `${formatBytes(g.maxSizeBytes ?? 0)} is not a multiple of ${formatBytes(unit)} (virtio-mem block-size and guest memory block)`);
    }
  }

  for (const { g, index } of indexed) {
    const expected = layout.cxlNodeByHostNode.get(poolById.get(g.poolId)?.hostNodeId ?? -1)?.guestNodeId;
    if (g.guestNodeId !== undefined && g.guestNodeId !== expected)
      v.add(
        `groups[${index}].guestNodeId`,
        `group ${g.id} asks for guest node ${g.guestNodeId}, but memory of pool ${g.poolId} (host node ${poolById.get(g.poolId)?.hostNodeId}) ` +
          `is guest node ${expected}: a guest node has one HMAT description, so host classes are never mixed`,
      );
  }

  const dynamicLater = indexed.filter(({ g }) => g.kind === 'DYNAMIC' && !g.plugged);
  const dynamicNow = indexed.filter(({ g }) => g.kind === 'DYNAMIC' && g.plugged);
  if (machine === 'q35') {
    if (dynamicLater.length > vm.sparePciePorts)
      v.add('vm.sparePciePorts', `${dynamicLater.length} DYNAMIC groups are hotplugged later on q35 and each needs a spare pcie-root-port; ${vm.sparePciePorts} requested`);
    if (dynamicNow.length + vm.sparePciePorts > MAX_ROOT_PORTS)
      v.add('vm.sparePciePorts', `${dynamicNow.length} virtio-mem root ports plus ${vm.sparePciePorts} spare exceed ${MAX_ROOT_PORTS}`);
  }
  v.throwIfAny('TOPOLOGY_INVALID');

  const deviceSize = (g: MemoryGroupInput) => (g.kind === 'STATIC' ? (g.sizeBytes ?? 0) : (g.maxSizeBytes ?? 0));
  const total = groups.reduce((s, g) => s + deviceSize(g), 0);
  const available = vm.maxMemoryBytes - bootBytes;
  if (total > available)
    throw new DomainError(
      'RESOURCE_EXHAUSTED',
      'DEVICE_MEMORY_EXHAUSTED',
      `memory groups need ${formatBytes(total)} of device memory but maxmem ${formatBytes(vm.maxMemoryBytes)} − boot ${formatBytes(bootBytes)} leaves ${formatBytes(available)} ("not enough space", hw/mem/memory-device.c)`,
      [],
      { neededBytes: String(total), availableBytes: String(available) },
    );

  const cxlNode = (g: MemoryGroupInput) => layout.cxlNodeByHostNode.get((poolById.get(g.poolId) as PoolInput).hostNodeId);
  const order = (a: MemoryGroupInput, b: MemoryGroupInput) =>
    Number(b.plugged) - Number(a.plugged) ||
    (cxlNode(a)?.guestNodeId ?? 0) - (cxlNode(b)?.guestNodeId ?? 0) ||
    (a.kind === b.kind ? 0 : a.kind === 'STATIC' ? -1 : 1) ||
    (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);

  const baseAddr = deviceMemoryBase(machine, bootBytes);
  // hw/i386/pc.c: enforce_aligned_dimm machines reserve 1 GiB per slot for alignment padding.
  const regionBytes = available + vm.memorySlots * GiB;
  let chassis = 0;
  const pciePorts: PciePort[] = [];
  const placed: { start: number; end: number }[] = [];
  const devices: MemoryDevice[] = [...groups].sort(order).map((g) => {
    const pool = poolById.get(g.poolId) as PoolInput;
    const node = cxlNode(g);
    if (!node) throw new DomainError('INTERNAL', 'TOPOLOGY_INTERNAL', `no guest node for pool ${pool.id}`);
    const sizeBytes = deviceSize(g);
    const backend = groupBackend(g, pool, sizeBytes);
    const ids = memoryDeviceIds(g.id);
    const isDimm = g.kind === 'STATIC';
    const align = Math.max(RAM_BLOCK_ALIGN_BYTES, backend.alignBytes ?? 0, isDimm ? 0 : (g.blockSizeBytes ?? DEFAULT_VIRTIO_MEM_BLOCK_BYTES));
    const addr = firstFit(placed, baseAddr, regionBytes, sizeBytes, align);
    if (addr === undefined)
      throw new DomainError(
        'RESOURCE_EXHAUSTED',
        'DEVICE_MEMORY_FRAGMENTED',
        `group ${g.id} (${formatBytes(sizeBytes)}, alignment ${formatBytes(align)}) does not fit in device memory at ${formatBytes(baseAddr)} of ${formatBytes(regionBytes)} after alignment padding (hw/mem/memory-device.c memory_device_get_free_addr)`,
        [],
        { groupId: g.id },
      );
    if (!isMultipleOf(addr, guestBlockBytes))
      warnings.push(`group ${g.id} is predicted at 0x${addr.toString(16)}, not aligned to the guest memory block ${formatBytes(guestBlockBytes)}`);
    const device: MemoryDevice = {
      groupId: g.id,
      groupName: g.name,
      model: isDimm ? 'pc-dimm' : 'virtio-mem-pci',
      deviceId: isDimm ? ids.dimmId : ids.virtioMemId,
      guestNodeId: node.guestNodeId,
      poolId: pool.id,
      backend,
      plugged: g.plugged,
      sizeBytes,
      onlineType: g.onlineType,
      predictedAddr: addr,
    };
    if (!isDimm) {
      device.requestedBytes = g.requestedBytes ?? 0;
      device.blockSizeBytes = g.blockSizeBytes ?? DEFAULT_VIRTIO_MEM_BLOCK_BYTES;
      if (machine === 'q35' && g.plugged) {
        // A dedicated hotplug-capable port, so the device can also be unplugged later.
        pciePorts.push({ id: ids.rootPortId, chassis: ++chassis, purpose: 'virtio-mem', groupId: g.id });
        device.bus = ids.rootPortId;
      }
    }
    return device;
  });
  if (machine === 'q35')
    for (let i = 0; i < vm.sparePciePorts; i++) pciePorts.push({ id: spareRootPortId(i), chassis: ++chassis, purpose: 'spare' });

  return { devices, pciePorts, deviceMemory: { baseAddr, sizeBytes: available }, warnings };
}

function firstFit(placed: { start: number; end: number }[], base: number, regionBytes: number, size: number, align: number): number | undefined {
  const limit = base + regionBytes;
  let candidate = alignUp(base, align);
  const sorted = placed.sort((a, b) => a.start - b.start);
  for (const r of sorted) {
    if (candidate + size <= r.start) break;
    if (candidate < r.end) candidate = alignUp(r.end, align);
  }
  if (candidate + size > limit) return undefined;
  placed.push({ start: candidate, end: candidate + size });
  return candidate;
}
