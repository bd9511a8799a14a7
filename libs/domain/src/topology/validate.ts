import { Violations } from '../errors';
import { MiB, isPowerOfTwo, isMultipleOf } from '../units';
import { KERNEL_PROFILES, type TopologyInput } from './types';

/** QEMU `MAX_NODES` (include/sysemu/numa.h). */
export const QEMU_MAX_NUMA_NODES = 128;
/** `ACPI_MAX_RAM_SLOTS` (hw/i386/pc.c pc_memory_init). */
export const QEMU_MAX_RAM_SLOTS = 256;
/** xAPIC limit: more vCPUs need x2APIC + an IOMMU with interrupt remapping. */
export const MAX_VCPUS = 255;
/** Devices on pcie.0/pci.0 besides ours (host bridge, ISA bridge, VGA, virtio-serial…) leave ~24 slots. */
export const MAX_ROOT_PORTS = 24;
/** Guest node memory, anchors and maxmem are kept 2 MiB aligned (huge page / pc-dimm backend rule, §6). */
export const NODE_MEMORY_ALIGN_BYTES = 2 * MiB;
export const SLIT_LOCAL = 10;
/** 255 means "unreachable" in ACPI SLIT; Linux would then never use the node. */
export const SLIT_MAX = 254;

/** QEMU ids must be well-formed (`id_wellformed`, util/id.c); we prefix group ids with a letter. */
const GROUP_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;

const PERF_FIELDS = ['readLatencyNs', 'writeLatencyNs', 'readBandwidthMBps', 'writeBandwidthMBps'] as const;

function isNonNegInt(n: unknown): n is number {
  return typeof n === 'number' && Number.isSafeInteger(n) && n >= 0;
}
function isPosInt(n: unknown): n is number {
  return isNonNegInt(n) && n > 0;
}

/**
 * Shape and value checks that need no derived state. Every problem is collected so one
 * answer names all of them (DomainError INVALID_ARGUMENT, reason TOPOLOGY_INVALID).
 */
export function validateTopologyInput(input: TopologyInput): void {
  const v = new Violations();
  const { host, vm, pools, groups } = input;

  const hostNodes = new Map<number, (typeof host.nodes)[number]>();
  host.nodes.forEach((n, i) => {
    const f = (s = '') => `host.nodes[${i}]${s}`;
    if (!isNonNegInt(n.nodeId) || n.nodeId >= 1024) v.add(f('.nodeId'), `must be an integer 0..1023, got ${n.nodeId}`);
    else if (hostNodes.has(n.nodeId)) v.add(f('.nodeId'), `duplicate host node ${n.nodeId}`);
    else hostNodes.set(n.nodeId, n);
    if (!isNonNegInt(n.memoryBytes)) v.add(f('.memoryBytes'), `must be a non-negative safe integer, got ${n.memoryBytes}`);
    if (!Array.isArray(n.cpus) || !n.cpus.every(isNonNegInt)) v.add(f('.cpus'), 'must be a list of CPU ids');
    if (n.kind !== 'DRAM' && n.kind !== 'CXL') v.add(f('.kind'), `must be DRAM or CXL, got ${String(n.kind)}`);
    if (n.kind === 'CXL' && n.cpus.length > 0) v.add(f('.cpus'), `CXL node ${n.nodeId} must be CPU-less`);
  });
  const hasCpus = (id: number) => (hostNodes.get(id)?.cpus.length ?? 0) > 0;

  const perfPairs = new Set<number>();
  host.performance.forEach((p, i) => {
    const f = (s = '') => `host.performance[${i}]${s}`;
    if (!hostNodes.has(p.cpuNodeId)) v.add(f('.cpuNodeId'), `host node ${p.cpuNodeId} does not exist`);
    else if (!hasCpus(p.cpuNodeId)) v.add(f('.cpuNodeId'), `host node ${p.cpuNodeId} has no CPUs, so it is no initiator`);
    if (!hostNodes.has(p.memoryNodeId)) v.add(f('.memoryNodeId'), `host node ${p.memoryNodeId} does not exist`);
    const key = p.cpuNodeId * 1024 + p.memoryNodeId;
    if (perfPairs.has(key)) v.add(f(), `duplicate performance entry ${p.cpuNodeId}->${p.memoryNodeId}`);
    perfPairs.add(key);
    for (const k of PERF_FIELDS) {
      // HMAT reads 0 as "no data" (hmat_normalize), so a 0 would silently drop the entry.
      if (!isPosInt(p[k])) v.add(f(`.${k}`), `must be a positive safe integer (0 means "no data" in HMAT), got ${p[k]}`);
    }
  });

  const distPairs = new Map<number, number>();
  (host.distances ?? []).forEach((d, i) => {
    const f = (s = '') => `host.distances[${i}]${s}`;
    if (!hostNodes.has(d.fromNodeId)) v.add(f('.fromNodeId'), `host node ${d.fromNodeId} does not exist`);
    if (!hostNodes.has(d.toNodeId)) v.add(f('.toNodeId'), `host node ${d.toNodeId} does not exist`);
    if (!isNonNegInt(d.distance)) v.add(f('.distance'), `must be an integer, got ${d.distance}`);
    else if (d.fromNodeId === d.toNodeId && d.distance !== SLIT_LOCAL)
      v.add(f('.distance'), `a node's distance to itself must be ${SLIT_LOCAL}, got ${d.distance}`);
    else if (d.fromNodeId !== d.toNodeId && (d.distance <= SLIT_LOCAL || d.distance > SLIT_MAX))
      // Linux drivers/acpi/numa/srat.c slit_valid() discards the whole SLIT if an off-diagonal value is ≤ 10.
      v.add(f('.distance'), `distance between different nodes must be ${SLIT_LOCAL + 1}..${SLIT_MAX}, got ${d.distance}`);
    const key = d.fromNodeId * 1024 + d.toNodeId;
    const prev = distPairs.get(key);
    if (prev !== undefined && prev !== d.distance)
      v.add(f(), `conflicting distances for ${d.fromNodeId}->${d.toNodeId}: ${prev} and ${d.distance}`);
    distPairs.set(key, d.distance);
  });

  if (typeof vm.name !== 'string' || vm.name.length === 0) v.add('vm.name', 'must be a non-empty string');
  if (!KERNEL_PROFILES.includes(vm.kernelProfile))
    v.add('vm.kernelProfile', `must be one of ${KERNEL_PROFILES.join(', ')}, got ${String(vm.kernelProfile)}`);
  if (!Array.isArray(vm.guestNodes) || vm.guestNodes.length === 0) v.add('vm.guestNodes', 'at least one CPU node is required');
  const ids = vm.guestNodes.map((g) => g.guestNodeId).sort((a, b) => a - b);
  // QEMU requires node ids 0..N-1 without holes ("numa: Node ID missing", hw/core/numa.c).
  if (!ids.every((id, i) => id === i))
    v.add('vm.guestNodes', `guestNodeId values must be 0..${vm.guestNodes.length - 1} without gaps or duplicates, got ${ids.join(',')}`);
  let vcpus = 0;
  vm.guestNodes.forEach((g, i) => {
    const f = (s = '') => `vm.guestNodes[${i}]${s}`;
    if (!isPosInt(g.vcpus)) v.add(f('.vcpus'), `CPU nodes need at least one vCPU, got ${g.vcpus}`);
    else vcpus += g.vcpus;
    if (!isPosInt(g.memoryBytes) || !isMultipleOf(g.memoryBytes, NODE_MEMORY_ALIGN_BYTES))
      v.add(f('.memoryBytes'), `must be a positive multiple of 2 MiB, got ${g.memoryBytes}`);
    if (g.hostNodeId !== undefined) {
      const h = hostNodes.get(g.hostNodeId);
      if (!h) v.add(f('.hostNodeId'), `host node ${g.hostNodeId} does not exist`);
      else if (h.kind !== 'DRAM' || h.cpus.length === 0)
        v.add(f('.hostNodeId'), `host node ${g.hostNodeId} must be a DRAM node with CPUs to back a guest CPU node`);
    }
  });
  if (vcpus > MAX_VCPUS) v.add('vm.guestNodes', `total vCPUs ${vcpus} exceed ${MAX_VCPUS} (xAPIC limit)`);
  if (!isPosInt(vm.maxMemoryBytes) || !isMultipleOf(vm.maxMemoryBytes, NODE_MEMORY_ALIGN_BYTES))
    v.add('vm.maxMemoryBytes', `must be a positive multiple of 2 MiB, got ${vm.maxMemoryBytes}`);
  if (!isNonNegInt(vm.memorySlots) || vm.memorySlots > QEMU_MAX_RAM_SLOTS)
    v.add('vm.memorySlots', `must be 0..${QEMU_MAX_RAM_SLOTS} (ACPI_MAX_RAM_SLOTS), got ${vm.memorySlots}`);
  if (!isNonNegInt(vm.sparePciePorts) || vm.sparePciePorts > MAX_ROOT_PORTS)
    v.add('vm.sparePciePorts', `must be 0..${MAX_ROOT_PORTS}, got ${vm.sparePciePorts}`);
  if (vm.guestMemoryBlockBytes !== undefined && (!isPowerOfTwo(vm.guestMemoryBlockBytes) || vm.guestMemoryBlockBytes < 128 * MiB))
    // drivers/base/memory.c memory_dev_init: a power of two, at least MIN_MEMORY_BLOCK_SIZE.
    v.add('vm.guestMemoryBlockBytes', `must be a power of two ≥ 128 MiB, got ${vm.guestMemoryBlockBytes}`);

  const poolById = new Map<string, (typeof pools)[number]>();
  pools.forEach((p, i) => {
    const f = (s = '') => `pools[${i}]${s}`;
    if (typeof p.id !== 'string' || p.id.length === 0) v.add(f('.id'), 'must be a non-empty string');
    else if (poolById.has(p.id)) v.add(f('.id'), `duplicate pool ${p.id}`);
    else poolById.set(p.id, p);
    const h = hostNodes.get(p.hostNodeId);
    if (!h) v.add(f('.hostNodeId'), `host node ${p.hostNodeId} does not exist`);
    else if (h.cpus.length > 0 || h.kind !== 'CXL') v.add(f('.hostNodeId'), `host node ${p.hostNodeId} must be a CPU-less CXL node`);
    if (p.daxDevicePath !== undefined && !/^\/[^\0]*$/.test(p.daxDevicePath))
      v.add(f('.daxDevicePath'), `must be an absolute path, got ${p.daxDevicePath}`);
    if (p.daxAlignBytes !== undefined && (!isPowerOfTwo(p.daxAlignBytes) || p.daxAlignBytes < 4096))
      v.add(f('.daxAlignBytes'), `must be a power of two ≥ 4 KiB, got ${p.daxAlignBytes}`);
    if (p.memoryType !== 'VOLATILE' && p.memoryType !== 'PERSISTENT')
      v.add(f('.memoryType'), `must be VOLATILE or PERSISTENT, got ${String(p.memoryType)}`);
  });

  const groupIds = new Set<string>();
  const groupsPerDax = new Map<string, string[]>();
  groups.forEach((g, i) => {
    const f = (s = '') => `groups[${i}]${s}`;
    if (typeof g.id !== 'string' || !GROUP_ID_PATTERN.test(g.id)) v.add(f('.id'), `must match ${GROUP_ID_PATTERN.source} (it names QEMU objects), got ${g.id}`);
    else if (groupIds.has(g.id)) v.add(f('.id'), `duplicate group ${g.id}`);
    groupIds.add(g.id);
    const pool = poolById.get(g.poolId);
    if (!pool) v.add(f('.poolId'), `pool ${g.poolId} does not exist`);
    if (!['ONLINE_MOVABLE', 'ONLINE_KERNEL', 'AUTO'].includes(g.onlineType))
      v.add(f('.onlineType'), `must be ONLINE_MOVABLE, ONLINE_KERNEL or AUTO, got ${String(g.onlineType)}`);
    if (typeof g.plugged !== 'boolean') v.add(f('.plugged'), 'must be a boolean');
    if (g.guestNodeId !== undefined && !isNonNegInt(g.guestNodeId)) v.add(f('.guestNodeId'), `must be a node id, got ${g.guestNodeId}`);
    if (g.kind === 'STATIC') {
      if (!isPosInt(g.sizeBytes)) v.add(f('.sizeBytes'), `a STATIC group needs a positive size, got ${g.sizeBytes}`);
      for (const k of ['maxSizeBytes', 'blockSizeBytes', 'requestedBytes'] as const)
        if (g[k] !== undefined) v.add(f(`.${k}`), 'only DYNAMIC (virtio-mem) groups have this field');
    } else if (g.kind === 'DYNAMIC') {
      if (g.sizeBytes !== undefined) v.add(f('.sizeBytes'), 'a DYNAMIC group is sized by maxSizeBytes/requestedBytes');
      if (!isPosInt(g.maxSizeBytes)) v.add(f('.maxSizeBytes'), `a DYNAMIC group needs a positive maxSizeBytes, got ${g.maxSizeBytes}`);
      const block = g.blockSizeBytes ?? 2 * MiB;
      // hw/virtio/virtio-mem.c: block-size ≥ 1 MiB, power of two; sizes multiples of it.
      if (!isPowerOfTwo(block) || block < MiB) v.add(f('.blockSizeBytes'), `must be a power of two ≥ 1 MiB, got ${block}`);
      else {
        if (isPosInt(g.maxSizeBytes) && !isMultipleOf(g.maxSizeBytes, block))
          v.add(f('.maxSizeBytes'), `${g.maxSizeBytes} is not a multiple of block-size ${block} (virtio-mem realize)`);
        const req = g.requestedBytes ?? 0;
        if (!isNonNegInt(req) || !isMultipleOf(req, block))
          v.add(f('.requestedBytes'), `must be a multiple of block-size ${block}, got ${req}`);
        else if (isPosInt(g.maxSizeBytes) && req > g.maxSizeBytes)
          v.add(f('.requestedBytes'), `requested ${req} exceeds maxSizeBytes ${g.maxSizeBytes}`);
      }
      if (pool?.daxDevicePath !== undefined)
        // virtio-mem unplug discards memory (ram_block_discard_range → fallocate PUNCH_HOLE),
        // which a device-dax file does not support.
        v.add(f('.poolId'), `pool ${pool.id} is a device-DAX pool; virtio-mem needs a discardable (RAM) backend`);
    } else v.add(f('.kind'), `must be STATIC or DYNAMIC, got ${String(g.kind)}`);
    if (pool?.daxDevicePath !== undefined) {
      const list = groupsPerDax.get(pool.daxDevicePath) ?? [];
      list.push(g.id);
      groupsPerDax.set(pool.daxDevicePath, list);
    }
  });
  for (const [path, list] of groupsPerDax) {
    // QEMU 7.2's memory-backend-file has no `offset`: two backends on one device would alias.
    if (list.length > 1) v.add('groups', `device-DAX ${path} would back ${list.length} groups (${list.join(', ')}); QEMU 7.2 maps a DAX device from offset 0, so one group per device`);
  }

  const anchor = input.policy?.cxlAnchorBytes;
  if (anchor !== undefined && (!isPosInt(anchor) || !isMultipleOf(anchor, NODE_MEMORY_ALIGN_BYTES)))
    v.add('policy.cxlAnchorBytes', `must be a positive multiple of 2 MiB, got ${anchor}`);
  const rounding = input.policy?.hmatRounding;
  if (rounding !== undefined && rounding !== 'exact' && rounding !== 'round')
    v.add('policy.hmatRounding', `must be exact or round, got ${String(rounding)}`);
  const placement = input.policy?.cxlSratPlacement;
  if (placement !== undefined && placement !== 'last-node' && placement !== 'boot-memory')
    v.add('policy.cxlSratPlacement', `must be last-node or boot-memory, got ${String(placement)}`);

  v.throwIfAny('TOPOLOGY_INVALID');
}
