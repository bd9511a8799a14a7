/**
 * Input and output types of the topology compiler.
 *
 * Units are in the names. Sizes are safe integers of bytes. Latencies are integer
 * nanoseconds. Bandwidths called `…MBps` are the integers Linux prints in
 * `/sys/devices/system/node/nodeN/access*\/initiators/*_bandwidth` ("MB/s" in
 * drivers/base/node.c); QEMU's HMAT encoding makes that unit MiB/s (see encoding.ts),
 * so a host value of X MBps is handed to QEMU as X·2^20 B/s and the guest prints X.
 */

import type { PoolMemoryType } from '../inventory/pool';
import type { GroupOnlineType, MemoryGroupKind } from '../memory/memory-group';

// The pool and group vocabularies are inventory/'s and memory/'s (exported from there).
export type OnlineType = GroupOnlineType;

export type KernelProfile = 'linux-6.1' | 'linux-6.12';
export const KERNEL_PROFILES: readonly KernelProfile[] = ['linux-6.1', 'linux-6.12'];

export type HostNodeKind = 'DRAM' | 'CXL';
export type MachineType = 'pc' | 'q35';

/**
 * How CXL guest nodes get an SRAT memory-affinity entry (and therefore an HMAT target):
 * - `last-node` (default): the CXL node whose class cannot take boot memory (DAX-only), or
 *   else the one with the highest host node id, is declared last so QEMU assigns it the
 *   hotplug region; every other CXL node gets a small boot-memory anchor.
 * - `boot-memory`: every CXL node gets a boot-memory anchor.
 */
export type CxlSratPlacement = 'last-node' | 'boot-memory';

// ---------------------------------------------------------------- input

export interface HostNodeInput {
  nodeId: number;
  /** Host CPU ids on this node; empty for CPU-less (CXL) nodes. */
  cpus: number[];
  memoryBytes: number;
  kind: HostNodeKind;
}

/** Performance of `memoryNodeId` as seen from the CPUs of `cpuNodeId` (host HMAT / CDAT). */
export interface HostPerformanceInput {
  cpuNodeId: number;
  memoryNodeId: number;
  readLatencyNs: number;
  writeLatencyNs: number;
  readBandwidthMBps: number;
  writeBandwidthMBps: number;
}

/** Host SLIT entry: 10 for a node to itself, 11..254 between different nodes. */
export interface HostDistanceInput {
  fromNodeId: number;
  toNodeId: number;
  distance: number;
}

export interface HostTopologyInput {
  nodes: HostNodeInput[];
  performance: HostPerformanceInput[];
  distances?: HostDistanceInput[];
}

export interface GuestCpuNodeInput {
  /** Guest CPU nodes are numbered 0..k-1; CXL guest nodes follow them. */
  guestNodeId: number;
  vcpus: number;
  memoryBytes: number;
  /** Host DRAM node (with CPUs) whose memory backs this guest node; chosen by rule if absent. */
  hostNodeId?: number;
}

export interface VmTopologyInput {
  name: string;
  kernelProfile: KernelProfile;
  guestNodes: GuestCpuNodeInput[];
  maxMemoryBytes: number;
  /** pc-dimm slots (QEMU `-m slots=`); virtio-mem devices do not use them. */
  memorySlots: number;
  /** Hotplug-capable `pcie-root-port`s kept free for virtio-mem devices added after launch. */
  sparePciePorts: number;
  memmapOnMemory?: boolean;
  /** Override of the predicted guest memory block size (power of two ≥ 128 MiB). */
  guestMemoryBlockBytes?: number;
}

export interface PoolInput {
  id: string;
  /** The CPU-less host node that backs the pool (its "class"). */
  hostNodeId: number;
  /** Device-DAX character device; then the QEMU backend is memory-backend-file on it. */
  daxDevicePath?: string;
  /** Alignment of the DAX device (`align=` of memory-backend-file); default 2 MiB. */
  daxAlignBytes?: number;
  memoryType: PoolMemoryType;
}

export interface MemoryGroupInput {
  id: string;
  name: string;
  kind: MemoryGroupKind;
  poolId: string;
  /** STATIC: the pc-dimm size. */
  sizeBytes?: number;
  /** DYNAMIC: the virtio-mem region (memdev) size. */
  maxSizeBytes?: number;
  /** DYNAMIC: virtio-mem `block-size`; default 2 MiB (QEMU's x86_64 default with THP). */
  blockSizeBytes?: number;
  /** DYNAMIC: virtio-mem `requested-size` at launch; default 0. */
  requestedBytes?: number;
  onlineType: OnlineType;
  /** true: cold-plugged on the QEMU command line; false: hotplugged later through QMP. */
  plugged: boolean;
  /**
   * Optional check: the guest node the caller expects. It must be the CPU-less node of the
   * pool's host node — one guest node has one HMAT description, so classes are never mixed.
   */
  guestNodeId?: number;
}

/**
 * `exact` (default): HMAT values are encoded as given (bandwidths at most divided by a common
 * factor that keeps every ratio) or refused. `round`: values that cannot be kept exactly are
 * rounded to a coarser granularity instead (see hmat.ts).
 */
export type HmatRounding = 'exact' | 'round';

export interface TopologyPolicy {
  hmatRounding?: HmatRounding;
  cxlSratPlacement?: CxlSratPlacement;
  /** Boot memory given to a CXL node that needs an SRAT entry; default 128 MiB. */
  cxlAnchorBytes?: number;
}

export interface TopologyInput {
  host: HostTopologyInput;
  vm: VmTopologyInput;
  pools: PoolInput[];
  groups: MemoryGroupInput[];
  policy?: TopologyPolicy;
}

// ---------------------------------------------------------------- output

export interface PerfValues {
  readLatencyNs: number;
  writeLatencyNs: number;
  readBandwidthMBps: number;
  writeBandwidthMBps: number;
}

export interface MemoryBackend {
  id: string;
  type: 'memory-backend-ram' | 'memory-backend-file';
  sizeBytes: number;
  /** Host node the memory comes from (for DAX: the node the device belongs to). */
  hostNodeId: number;
  /** `host-nodes=<hostNodeId>,policy=bind` (RAM backends only: a devdax mapping is not mbind-able page cache). */
  bindHostNode: boolean;
  memPath?: string;
  alignBytes?: number;
  share: boolean;
  pmem: boolean;
  /** `reserve=off`: virtio-mem backends are sparse, so no swap reservation. */
  reserve: boolean;
}

export type GuestNodeKind = 'CPU' | 'CXL';
/** How the node gets its SRAT memory-affinity entry (hw/i386/acpi-build.c build_srat). */
export type SratSource = 'boot-memory' | 'hotplug-region';

export interface GuestNode {
  guestNodeId: number;
  kind: GuestNodeKind;
  /** QEMU CPU indices (contiguous, in guest node order). */
  vcpuIds: number[];
  /** Host node backing the memory of this guest node. */
  hostNodeId: number;
  /** CPU nodes: whether the host node came from the input (true) or from the mapping rule. */
  hostNodePinned: boolean;
  bootMemoryBytes: number;
  bootBackend?: MemoryBackend;
  /** CPU nodes: itself. CXL nodes: the CPU node given as `-numa node,initiator=`. */
  initiatorGuestNodeId: number;
  srat: SratSource;
  /** CXL: every pool of this class the VM's groups use. */
  poolIds: string[];
  /** CXL with boot memory: the pool whose capacity backs that boot memory. */
  anchorPoolId?: string;
}

export type HmatDataType = 'read-latency' | 'write-latency' | 'read-bandwidth' | 'write-bandwidth';
export const HMAT_DATA_TYPES: readonly HmatDataType[] = ['read-latency', 'write-latency', 'read-bandwidth', 'write-bandwidth'];

export interface HmatCell {
  initiator: number;
  target: number;
  /** Host values the cell was derived from. */
  host: PerfValues;
  /** Set when the host table had no entry for this CPU/memory pair (see hmat.ts). */
  derivation?: string;
  /** Values on the QEMU command line. */
  qemu: { readLatencyNs: number; writeLatencyNs: number; readBandwidthBps: number; writeBandwidthBps: number };
  /** What the guest kernel reads back from the HMAT (hmat_normalize) and prints in sysfs. */
  guest: PerfValues;
}

/** One System Locality Latency and Bandwidth Information structure as QEMU builds it. */
export interface HmatStructure {
  dataType: HmatDataType;
  /** QEMU's internal base: ns for latency, B/s for bandwidth. */
  qemuBase: number;
  /** ACPI Entry Base Unit: ps for latency, MB/s for bandwidth. */
  entryBaseUnit: number;
  /** u16 entries, [initiator index][target node]. */
  entries: number[][];
}

export interface HmatPlan {
  /** Initiator proximity domains (the CPU nodes), in QEMU's order. */
  initiators: number[];
  targets: number[];
  cells: HmatCell[];
  /** Every bandwidth was divided by this common factor (1 = unchanged). */
  bandwidthDivisor: number;
  /** Granularity values were rounded to (1 = not rounded; only with policy hmatRounding 'round'). */
  rounding: { latencyGranularityNs: number; bandwidthGranularityMBps: number };
  bandwidthDivisorReason?: string;
  structures: HmatStructure[];
}

export interface AdistCalculation {
  latencySumNs: number;
  referenceLatencySumNs: number;
  bandwidthSumMBps: number;
  referenceBandwidthSumMBps: number;
  /** The four left-to-right results: 576·Lt, /DL, ·DB, /Bt (each after u32 wrap). */
  steps: [number, number, number, number];
  wrapped: boolean;
}

export interface NodeTier {
  guestNodeId: number;
  adistance: number;
  tier: number;
  source: 'hmat' | 'default';
  reason: string;
  calculation?: AdistCalculation;
}

export interface MemoryTier {
  tier: number;
  adistanceStart: number;
  nodes: number[];
  /** What `/sys/devices/virtual/memory_tiering/memory_tierN/nodelist` prints. */
  nodelist: string;
}

export interface DemotionTarget {
  guestNodeId: number;
  preferred: number[];
  /** The tier's lower_tier_mask: every node in strictly lower tiers. */
  fallback: number[];
}

export interface TierPrediction {
  kernelProfile: KernelProfile;
  hmatTiering: { enabled: boolean; referenceNodeId?: number; reason: string };
  nodes: NodeTier[];
  tiers: MemoryTier[];
  demotion: DemotionTarget[];
  /** adistance_start+127 of the slowest tier holding a CPU node (-1 if none). */
  topTierAdistance: number;
}

export type MemoryDeviceModel = 'pc-dimm' | 'virtio-mem-pci';

export interface MemoryDevice {
  groupId: string;
  groupName: string;
  model: MemoryDeviceModel;
  deviceId: string;
  guestNodeId: number;
  poolId: string;
  backend: MemoryBackend;
  plugged: boolean;
  /** pc-dimm size, or the virtio-mem region (max) size. */
  sizeBytes: number;
  requestedBytes?: number;
  blockSizeBytes?: number;
  onlineType: OnlineType;
  /** q35: the dedicated root port of a cold-plugged virtio-mem device. */
  bus?: string;
  /** Guest-physical address QEMU's first-fit placement gives it, in launch-then-hotplug order. */
  predictedAddr: number;
}

export interface PciePort {
  id: string;
  chassis: number;
  purpose: 'virtio-mem' | 'spare';
  groupId?: string;
}

export interface Topology {
  vmName: string;
  kernelProfile: KernelProfile;
  machine: { type: MachineType; reason: string };
  vcpuCount: number;
  guestNodes: GuestNode[];
  bootMemoryBytes: number;
  maxMemoryBytes: number;
  memorySlots: number;
  guestMemoryBlockBytes: number;
  deviceMemory: { baseAddr: number; sizeBytes: number };
  memmapOnMemory: boolean;
  /** SLIT, [from][to]. */
  distances: number[][];
  hmat: HmatPlan;
  memoryDevices: MemoryDevice[];
  pciePorts: PciePort[];
  tiers: TierPrediction;
  warnings: string[];
}
