/**
 * The Vm resource: a guest on one host, its guest NUMA nodes (vCPUs and boot
 * DRAM), its guest kernel profile and the hotplug headroom fixed at launch
 * (`-m slots=,maxmem=` and spare `pcie-root-port`s for virtio-mem devices
 * added after launch). State is output only (AIP-216): it changes through the
 * transition methods below and, later, through the workers that run them.
 */
import { DomainError, Violations } from '../errors';
import type { HostNode, HostState } from '../inventory/host';
import { checkDescription, checkLabels, checkName } from '../inventory/names';
import { collectVmMemoryLayout, type GuestMemoryOverrides, type GuestMemorySettings, type VmMemoryLayout } from '../memory';
import type { MemoryDrift } from '../hotplug/drift';
import { formatBytes, isMultipleOf, MiB } from '../units';

export type VmState = 'DEFINED' | 'STARTING' | 'RUNNING' | 'STOPPING' | 'STOPPED' | 'FAILED';
export const VM_STATES: readonly VmState[] = ['DEFINED', 'STARTING', 'RUNNING', 'STOPPING', 'STOPPED', 'FAILED'];

/** A guest NUMA node with CPUs. CPU-less (CXL) guest nodes are derived from the groups' pools. */
export interface GuestNodeSpec {
  /** 0..k-1 without gaps (QEMU "numa: Node ID missing"). */
  guestNodeId: number;
  vcpus: number;
  /** Boot DRAM of the node (`-numa node,memdev=` size). */
  bootMemoryBytes: number;
  /** Host DRAM node (with CPUs) that backs the node; the topology compiler picks one when absent. */
  hostNodeId?: number;
}

export interface VmSpec {
  name: string;
  description: string;
  labels: Record<string, string>;
  /** Name of the host. Immutable. */
  host: string;
  /** Guest kernel profile, e.g. `linux-6.12`: fixes the guest memory block size and the tier prediction. */
  kernelProfile: string;
  /** Guest kernel command-line overrides (memmap_on_memory, online_policy, auto_movable_ratio, …). */
  guestMemory: GuestMemoryOverrides;
  guestNodes: GuestNodeSpec[];
  /** pc-dimm slots (`-m slots=`); each STATIC group takes one. */
  memorySlots: number;
  /** `-m maxmem=`: boot memory plus every group's region must fit. */
  maxMemoryBytes: number;
  /** Hotplug-capable PCIe root ports kept free for DYNAMIC groups added while the VM runs. */
  sparePciePorts: number;
}

export interface Vm extends VmSpec {
  uid: string;
  state: VmState;
  /** Output only, while QEMU runs: its pid and the sockets any worker re-attaches through. */
  qemuPid?: number;
  qmpSocketPath?: string;
  qgaSocketPath?: string;
  /** Output only: query-memory-devices as the engine last saw it, and when. */
  observedMemoryDevices?: Record<string, unknown>[];
  observeTime?: Date;
  /**
   * Output only, while the VM runs: the sweeper's last comparison of its memory (QEMU devices,
   * guest blocks and zones) with the desired state, made only while no operation runs.
   */
  memoryDrift?: MemoryDrift;
  etag: string;
  createTime: Date;
  updateTime: Date;
}

/** QEMU MAX_NODES (include/sysemu/numa.h). */
export const MAX_GUEST_NODES = 128;
/** xAPIC: more vCPUs need x2APIC and interrupt remapping. */
export const MAX_VCPUS = 255;
/** Devices on pcie.0 besides ours leave about 24 slots for root ports. */
export const MAX_SPARE_PCIE_PORTS = 24;
/** Guest node memory and maxmem are kept 2 MiB aligned (huge pages, pc-dimm backend rule). */
export const GUEST_MEMORY_ALIGN_BYTES = 2 * MiB;

const isInt = (n: unknown): n is number => typeof n === 'number' && Number.isSafeInteger(n);

/**
 * Checks a VM description on its own (INVALID_ARGUMENT / INVALID_VM naming
 * every field) and returns the guest memory settings it implies.
 */
export function validateVmSpec(spec: VmSpec): GuestMemorySettings {
  const v = new Violations();
  checkName(v, 'name', spec.name);
  checkName(v, 'host', spec.host);
  checkDescription(v, 'description', spec.description);
  checkLabels(v, 'labels', spec.labels);

  const nodes = spec.guestNodes ?? [];
  if (nodes.length === 0) v.add('guestNodes', 'a VM needs at least one guest NUMA node with vCPUs');
  if (nodes.length > MAX_GUEST_NODES) v.add('guestNodes', `${nodes.length} guest nodes exceed QEMU's ${MAX_GUEST_NODES}`);
  const ids = nodes.map((n) => n.guestNodeId).sort((a, b) => a - b);
  if (nodes.length > 0 && !ids.every((id, i) => id === i)) {
    v.add('guestNodes', `guestNodeId values must be 0..${nodes.length - 1} without gaps or duplicates, got ${ids.join(', ')}`);
  }
  let vcpus = 0;
  nodes.forEach((n, i) => {
    const f = `guestNodes[${i}]`;
    if (!isInt(n.vcpus) || n.vcpus < 1) v.add(`${f}.vcpus`, `vcpus ${String(n.vcpus)} must be an integer ≥ 1 (CPU-less guest nodes come from memory groups)`);
    else vcpus += n.vcpus;
    if (!isInt(n.bootMemoryBytes) || n.bootMemoryBytes <= 0 || !isMultipleOf(n.bootMemoryBytes, GUEST_MEMORY_ALIGN_BYTES)) {
      v.add(`${f}.bootMemoryBytes`, `bootMemoryBytes ${String(n.bootMemoryBytes)} must be a positive multiple of ${formatBytes(GUEST_MEMORY_ALIGN_BYTES)}`);
    }
    if (n.hostNodeId !== undefined && (!isInt(n.hostNodeId) || n.hostNodeId < 0)) v.add(`${f}.hostNodeId`, `hostNodeId ${String(n.hostNodeId)} must be an integer ≥ 0`);
  });
  if (vcpus > MAX_VCPUS) v.add('guestNodes', `${vcpus} vCPUs in total exceed ${MAX_VCPUS} (xAPIC limit)`);
  if (!isInt(spec.sparePciePorts) || spec.sparePciePorts < 0 || spec.sparePciePorts > MAX_SPARE_PCIE_PORTS) {
    v.add('sparePciePorts', `sparePciePorts ${String(spec.sparePciePorts)} must be an integer between 0 and ${MAX_SPARE_PCIE_PORTS}`);
  }
  if (isInt(spec.maxMemoryBytes) && spec.maxMemoryBytes > 0 && !isMultipleOf(spec.maxMemoryBytes, GUEST_MEMORY_ALIGN_BYTES)) {
    v.add('maxMemoryBytes', `maxMemoryBytes ${spec.maxMemoryBytes} B is not a multiple of ${formatBytes(GUEST_MEMORY_ALIGN_BYTES)}`);
  }
  // Slots, maxmem against boot memory, kernel profile and overrides: the memory rules' own checks,
  // under this resource's field names (its guest nodes were checked above).
  const memory = new Violations();
  const settings = collectVmMemoryLayout(vmMemoryLayout(spec, []), memory);
  for (const m of memory.items) {
    if (m.field === 'nodes' || m.field.startsWith('nodes[')) continue;
    v.add(m.field === 'kernelProfileId' ? 'kernelProfile' : m.field, m.description);
  }
  v.throwIfAny('INVALID_VM');
  if (!settings) throw new Error('unreachable: settings missing without violations');
  return settings;
}

/** Pinned guest nodes must sit on DRAM nodes of the VM's host that have CPUs. */
export function checkVmHostNodes(spec: VmSpec, host: { name: string; nodes: readonly HostNode[] }): void {
  const v = new Violations();
  spec.guestNodes.forEach((n, i) => {
    if (n.hostNodeId === undefined) return;
    const node = host.nodes.find((h) => h.nodeId === n.hostNodeId);
    if (!node) v.add(`guestNodes[${i}].hostNodeId`, `host ${host.name} has no NUMA node ${n.hostNodeId} (it has ${host.nodes.map((h) => h.nodeId).join(', ')})`);
    else if (node.kind !== 'DRAM' || node.cpus.length === 0) {
      v.add(`guestNodes[${i}].hostNodeId`, `node ${n.hostNodeId} of host ${host.name} is ${node.kind} with ${node.cpus.length} CPUs; a guest CPU node needs a DRAM node with CPUs`);
    }
  });
  v.throwIfAny('INVALID_VM');
}

/**
 * The layout the memory rules see. `extraNodeIds` are CPU-less guest nodes
 * (one per pool class, or given explicitly by groups): no boot memory.
 */
export function vmMemoryLayout(spec: VmSpec, extraNodeIds: readonly number[]): VmMemoryLayout {
  const cpuIds = new Set(spec.guestNodes.map((n) => n.guestNodeId));
  return {
    kernelProfileId: spec.kernelProfile,
    guestMemory: spec.guestMemory,
    nodes: [
      ...spec.guestNodes.map((n) => ({ nodeId: n.guestNodeId, bootMemoryBytes: n.bootMemoryBytes })),
      ...[...new Set(extraNodeIds)].filter((id) => !cpuIds.has(id)).map((nodeId) => ({ nodeId, bootMemoryBytes: 0 })),
    ],
    memorySlots: spec.memorySlots,
    maxMemoryBytes: spec.maxMemoryBytes,
  };
}

// ------------------------------------------------------------ transitions (AIP-216)

/** States in which nothing runs: groups change directly, the VM may start or be deleted. */
export const VM_AT_REST: readonly VmState[] = ['DEFINED', 'STOPPED', 'FAILED'];

function conflict(name: string, state: VmState, action: string, allowed: readonly VmState[]): DomainError {
  return DomainError.precondition('VM_STATE_CONFLICT', `vm ${name} is ${state}; ${action} needs ${allowed.join(' or ')}`, {
    vm: name,
    state,
    allowed: allowed.join(','),
  });
}

/** :start — DEFINED/STOPPED/FAILED → STARTING (a START operation launches it). */
export function startTransition(name: string, state: VmState, hostState: HostState, host: string): VmState {
  if (!VM_AT_REST.includes(state)) throw conflict(name, state, 'start', VM_AT_REST);
  if (hostState !== 'READY') {
    throw DomainError.precondition('HOST_NOT_READY', `host ${host} is ${hostState}, not READY: no VM starts on it`, { host, state: hostState });
  }
  return 'STARTING';
}

/** :stop — RUNNING → STOPPING. A VM still STARTING is stopped by cancelling its START operation. */
export function stopTransition(name: string, state: VmState): VmState {
  if (state !== 'RUNNING') throw conflict(name, state, 'stop', ['RUNNING']);
  return 'STOPPING';
}

export function assertVmDeletable(name: string, state: VmState): void {
  if (!VM_AT_REST.includes(state)) throw conflict(name, state, 'delete', VM_AT_REST);
}

/**
 * How a change to a VM's memory groups is carried out:
 * - DIRECT: nothing runs, the stored desired state is all there is;
 * - OPERATION: the guest runs (or is being launched, and operations on one VM
 *   run in order after the launch), so an Operation brings QEMU and the guest to
 *   the new desired state;
 * - a VM being stopped takes no changes until it is STOPPED.
 */
export function groupChangeMode(name: string, state: VmState): 'DIRECT' | 'OPERATION' {
  if (VM_AT_REST.includes(state)) return 'DIRECT';
  if (state === 'RUNNING' || state === 'STARTING') return 'OPERATION';
  throw conflict(name, state, 'changing memory groups', [...VM_AT_REST, 'STARTING', 'RUNNING']);
}
