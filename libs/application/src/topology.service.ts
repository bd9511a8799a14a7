import {
  authorize,
  checkGroupPool,
  checkVmHeadroom,
  checkVmHostNodes,
  compileTopology,
  DomainError,
  formatBytes,
  groupSpecOf,
  holdingBytes,
  isDomainError,
  normalizeGroupInput,
  planMemoryGroup,
  recommendKernelCmdline,
  renderLibvirtDomainXml,
  renderQemuArgv,
  topologyInputFromResources,
  validateVmSpec,
  type CreateMemoryGroupInput,
  type FieldViolation,
  type GroupOnlineType,
  type GroupShape,
  type GuestMemorySettings,
  type HmatDataType,
  type Host,
  type Pool,
  type StoredMemoryGroup,
  type Topology,
  type TopologyResources,
  type VmSpec,
} from '#domain';
import { HostRepository, MemoryGroupRepository, PoolRepository, VmRepository } from '#persistence';
import type { CallContext } from './context';
import type { Mutations } from './mutations';

// ---------------------------------------------------------------- API view

/** Latency (ns) and bandwidth (MB/s as the guest prints it) of one initiator/target pair. */
export interface HmatValuesView {
  readLatencyNs: number;
  writeLatencyNs: number;
  readBandwidthMBps: number;
  writeBandwidthMBps: number;
}

export type TopologyNodeKindView = 'CPU' | 'CXL';
export type SratSourceView = 'BOOT_MEMORY' | 'HOTPLUG_REGION';
export type HmatDataTypeView = 'READ_LATENCY' | 'WRITE_LATENCY' | 'READ_BANDWIDTH' | 'WRITE_BANDWIDTH';
export type MemoryDeviceModelView = 'PC_DIMM' | 'VIRTIO_MEM_PCI';

export interface TopologyNodeView {
  guestNodeId: number;
  kind: TopologyNodeKindView;
  vcpuIds: number[];
  hostNodeId: number;
  hostNodePinned: boolean;
  bootMemoryBytes: number;
  initiatorGuestNodeId: number;
  srat: SratSourceView;
  pools: string[];
  anchorPool?: string;
}

export interface HmatView {
  initiators: number[];
  targets: number[];
  cells: {
    initiator: number;
    target: number;
    host: HmatValuesView;
    derivation?: string;
    qemu: { readLatencyNs: number; writeLatencyNs: number; readBandwidthBps: number; writeBandwidthBps: number };
    guest: HmatValuesView;
  }[];
  bandwidthDivisor: number;
  bandwidthDivisorReason?: string;
  latencyGranularityNs: number;
  bandwidthGranularityMBps: number;
  structures: { dataType: HmatDataTypeView; qemuBase: number; entryBaseUnit: number; entries: number[][] }[];
}

export interface TierPredictionView {
  kernelProfile: string;
  hmatTiering: { enabled: boolean; referenceGuestNodeId?: number; reason: string };
  nodes: {
    guestNodeId: number;
    adistance: number;
    tier: number;
    source: 'HMAT' | 'DEFAULT';
    reason: string;
    calculation?: {
      latencySumNs: number;
      referenceLatencySumNs: number;
      bandwidthSumMBps: number;
      referenceBandwidthSumMBps: number;
      steps: number[];
      wrapped: boolean;
    };
  }[];
  memoryTiers: { tier: number; adistanceStart: number; guestNodeIds: number[]; nodelist: string }[];
  topTierAdistance: number;
}

export interface TopologyMemoryDeviceView {
  memoryGroup: string;
  model: MemoryDeviceModelView;
  deviceId: string;
  guestNodeId: number;
  pool: string;
  /** true: on the QEMU command line; false: hotplugged through QMP after boot. */
  onCommandLine: boolean;
  sizeBytes: number;
  requestedBytes?: number;
  blockSizeBytes?: number;
  onlineType: GroupOnlineType;
  bus?: string;
  predictedAddr: number;
  backend: { id: string; type: string; sizeBytes: number; hostNodeId: number; bindHostNode: boolean; memPath?: string };
}

/** What GetTopology and PreviewTopology answer (REST as is, gRPC through topology.grpc.ts). */
export interface TopologyView {
  vm: string;
  host: string;
  kernelProfile: string;
  machine: { type: string; reason: string };
  vcpuCount: number;
  bootMemoryBytes: number;
  maxMemoryBytes: number;
  memorySlots: number;
  guestMemoryBlockBytes: number;
  memmapOnMemory: boolean;
  deviceMemory: { baseAddr: number; sizeBytes: number };
  nodes: TopologyNodeView[];
  /** SLIT, [from][to]. */
  distances: number[][];
  hmat: HmatView;
  tiers: TierPredictionView;
  demotionTargets: { guestNodeId: number; preferred: number[]; fallback: number[] }[];
  memoryDevices: TopologyMemoryDeviceView[];
  pciePorts: { id: string; chassis: number; purpose: 'VIRTIO_MEM' | 'SPARE'; memoryGroup?: string }[];
  qemuArgv: string[];
  libvirtXml: string;
  kernelCmdline: { args: string[]; cmdline: string; explained: { arg: string; why: string }[]; warnings: string[] };
  warnings: string[];
}

const DATA_TYPE: Record<HmatDataType, HmatDataTypeView> = {
  'read-latency': 'READ_LATENCY',
  'write-latency': 'WRITE_LATENCY',
  'read-bandwidth': 'READ_BANDWIDTH',
  'write-bandwidth': 'WRITE_BANDWIDTH',
};

/**
 * Host paths in the rendered argv and XML are placeholders: the worker chooses the real
 * runtime directory and boot image when it launches the VM.
 */
export function topologyPlaceholders(vm: string, kernelProfile: string) {
  const image = `/var/lib/memplane/images/${kernelProfile}`;
  return {
    qmpSocketPath: `/run/memplane/${vm}/qmp.sock`,
    qgaSocketPath: `/run/memplane/${vm}/qga.sock`,
    kernel: `${image}/vmlinuz`,
    initrd: `${image}/initrd.img`,
  };
}

/** The compiled topology with its renderings, as the API shows it. */
export function topologyView(t: Topology, host: string, extraWarnings: readonly string[] = []): TopologyView {
  const cmd = recommendKernelCmdline(t);
  const cmdline = cmd.args.join(' ');
  const paths = topologyPlaceholders(t.vmName, t.kernelProfile);
  const append = cmdline ? { append: cmdline } : {};
  const qemuArgv = renderQemuArgv(t, { ...paths, ...append, hostNodeBinding: 'bind' });
  const libvirtXml = renderLibvirtDomainXml(t, { kernel: paths.kernel, initrd: paths.initrd, qgaSocketPath: paths.qgaSocketPath, ...append });
  return {
    vm: t.vmName,
    host,
    kernelProfile: t.kernelProfile,
    machine: { type: t.machine.type, reason: t.machine.reason },
    vcpuCount: t.vcpuCount,
    bootMemoryBytes: t.bootMemoryBytes,
    maxMemoryBytes: t.maxMemoryBytes,
    memorySlots: t.memorySlots,
    guestMemoryBlockBytes: t.guestMemoryBlockBytes,
    memmapOnMemory: t.memmapOnMemory,
    deviceMemory: { baseAddr: t.deviceMemory.baseAddr, sizeBytes: t.deviceMemory.sizeBytes },
    nodes: t.guestNodes.map((n) => ({
      guestNodeId: n.guestNodeId,
      kind: n.kind,
      vcpuIds: [...n.vcpuIds],
      hostNodeId: n.hostNodeId,
      hostNodePinned: n.hostNodePinned,
      bootMemoryBytes: n.bootMemoryBytes,
      initiatorGuestNodeId: n.initiatorGuestNodeId,
      srat: n.srat === 'boot-memory' ? 'BOOT_MEMORY' : 'HOTPLUG_REGION',
      pools: [...n.poolIds],
      ...(n.anchorPoolId !== undefined ? { anchorPool: n.anchorPoolId } : {}),
    })),
    distances: t.distances.map((row) => [...row]),
    hmat: {
      initiators: [...t.hmat.initiators],
      targets: [...t.hmat.targets],
      cells: t.hmat.cells.map((c) => ({
        initiator: c.initiator,
        target: c.target,
        host: { ...c.host },
        ...(c.derivation !== undefined ? { derivation: c.derivation } : {}),
        qemu: { ...c.qemu },
        guest: { ...c.guest },
      })),
      bandwidthDivisor: t.hmat.bandwidthDivisor,
      ...(t.hmat.bandwidthDivisorReason !== undefined ? { bandwidthDivisorReason: t.hmat.bandwidthDivisorReason } : {}),
      latencyGranularityNs: t.hmat.rounding.latencyGranularityNs,
      bandwidthGranularityMBps: t.hmat.rounding.bandwidthGranularityMBps,
      structures: t.hmat.structures.map((s) => ({
        dataType: DATA_TYPE[s.dataType],
        qemuBase: s.qemuBase,
        entryBaseUnit: s.entryBaseUnit,
        entries: s.entries.map((row) => [...row]),
      })),
    },
    tiers: {
      kernelProfile: t.tiers.kernelProfile,
      hmatTiering: {
        enabled: t.tiers.hmatTiering.enabled,
        ...(t.tiers.hmatTiering.referenceNodeId !== undefined ? { referenceGuestNodeId: t.tiers.hmatTiering.referenceNodeId } : {}),
        reason: t.tiers.hmatTiering.reason,
      },
      nodes: t.tiers.nodes.map((n) => ({
        guestNodeId: n.guestNodeId,
        adistance: n.adistance,
        tier: n.tier,
        source: n.source === 'hmat' ? 'HMAT' : 'DEFAULT',
        reason: n.reason,
        ...(n.calculation ? { calculation: { ...n.calculation, steps: [...n.calculation.steps] } } : {}),
      })),
      memoryTiers: t.tiers.tiers.map((m) => ({ tier: m.tier, adistanceStart: m.adistanceStart, guestNodeIds: [...m.nodes], nodelist: m.nodelist })),
      topTierAdistance: t.tiers.topTierAdistance,
    },
    demotionTargets: t.tiers.demotion.map((d) => ({ guestNodeId: d.guestNodeId, preferred: [...d.preferred], fallback: [...d.fallback] })),
    memoryDevices: t.memoryDevices.map((d) => ({
      memoryGroup: d.groupName,
      model: d.model === 'pc-dimm' ? 'PC_DIMM' : 'VIRTIO_MEM_PCI',
      deviceId: d.deviceId,
      guestNodeId: d.guestNodeId,
      pool: d.poolId,
      onCommandLine: d.plugged,
      sizeBytes: d.sizeBytes,
      ...(d.requestedBytes !== undefined ? { requestedBytes: d.requestedBytes } : {}),
      ...(d.blockSizeBytes !== undefined ? { blockSizeBytes: d.blockSizeBytes } : {}),
      onlineType: d.onlineType,
      ...(d.bus !== undefined ? { bus: d.bus } : {}),
      predictedAddr: d.predictedAddr,
      backend: {
        id: d.backend.id,
        type: d.backend.type,
        sizeBytes: d.backend.sizeBytes,
        hostNodeId: d.backend.hostNodeId,
        bindHostNode: d.backend.bindHostNode,
        ...(d.backend.memPath !== undefined ? { memPath: d.backend.memPath } : {}),
      },
    })),
    pciePorts: t.pciePorts.map((p) => ({
      id: p.id,
      chassis: p.chassis,
      purpose: p.purpose === 'virtio-mem' ? 'VIRTIO_MEM' : 'SPARE',
      ...(p.groupId !== undefined ? { memoryGroup: p.groupId } : {}),
    })),
    qemuArgv,
    libvirtXml,
    kernelCmdline: { args: [...cmd.args], cmdline, explained: cmd.explained.map((e) => ({ arg: e.arg, why: e.why })), warnings: [...cmd.warnings] },
    warnings: [...t.warnings, ...extraWarnings],
  };
}

// ---------------------------------------------------------------- preview input

/** A group of a hypothetical VM: CreateMemoryGroup's fields without the VM. */
export type PreviewMemoryGroupInput = Omit<CreateMemoryGroupInput, 'vm'>;

export interface TopologyPreviewInput {
  /** As for CreateVm; the host must exist. */
  vm: VmSpec;
  memoryGroups: PreviewMemoryGroupInput[];
}

/** Runs `fn`, re-throwing a DomainError with its field violations under `prefix`. */
function under<T>(prefix: string, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    if (!isDomainError(e)) throw e;
    throw new DomainError(
      e.code,
      e.reason,
      e.violations.length ? e.violations.map((v) => `${prefix}.${v.field}: ${v.description}`).join('; ') : e.message,
      e.violations.map((v) => ({ field: `${prefix}.${v.field}`, description: v.description })),
      e.metadata,
    );
  }
}

/** Collects the field violations of an INVALID_ARGUMENT (other errors propagate). */
function collect<T>(out: { violations: FieldViolation[]; reasons: Set<string> }, fn: () => T): T | undefined {
  try {
    return fn();
  } catch (e) {
    if (!isDomainError(e) || e.code !== 'INVALID_ARGUMENT') throw e;
    out.violations.push(...e.violations);
    out.reasons.add(e.reason);
    return undefined;
  }
}

// ---------------------------------------------------------------- service

/**
 * Guest topology of a stored VM, or of a hypothetical one (what-if): read only, nothing
 * is stored or reserved. The compiler's refusals are DomainErrors and pass through.
 */
export class TopologyService {
  private readonly vms = new VmRepository();
  private readonly groups = new MemoryGroupRepository();
  private readonly hosts = new HostRepository();
  private readonly pools = new PoolRepository();

  constructor(private readonly mutations: Mutations) {}

  async get(ctx: CallContext, vmName: string): Promise<TopologyView> {
    authorize(ctx.principal, 'read');
    const db = this.mutations.db;
    const vm = await this.vms.get(db.sql, vmName);
    const groups = await this.groups.listForVm(db.sql, vm.uid);
    const host = await this.hosts.get(db.prisma, vm.host);
    const pools = new Map<string, TopologyResources['pools'][number]>();
    for (const g of groups) {
      const p = g.poolFacts;
      pools.set(p.name, { name: p.name, hostNodeId: p.hostNodeId, memoryType: p.memoryType, ...(p.daxDevicePath ? { daxDevicePath: p.daxDevicePath } : {}) });
    }
    const topology = compileTopology(topologyInputFromResources({ host, vm, pools: [...pools.values()], groups }));
    return topologyView(topology, host.name);
  }

  /**
   * A VM that does not exist, on an existing host, with groups on that host's pools, all
   * known at launch. Checked with the rules CreateVm and CreateMemoryGroup apply (field
   * violations name `host`, `guestNodes[i]…`, `memoryGroups[i]…`); pool capacity is only
   * reported (warnings), since nothing is reserved.
   */
  async preview(ctx: CallContext, input: TopologyPreviewInput): Promise<TopologyView> {
    authorize(ctx.principal, 'read');
    const spec = input.vm;
    const groups = input.memoryGroups;

    // 1. Shapes: the VM and every group, all violations at once.
    const bad = { violations: [] as FieldViolation[], reasons: new Set<string>() };
    const settings: GuestMemorySettings | undefined = collect(bad, () => validateVmSpec(spec));
    const seen = new Map<string, number>();
    const shapes = groups.map((g, i) => {
      const prefix = `memoryGroups[${i}]`;
      if (seen.has(g.name)) {
        bad.violations.push({ field: `${prefix}.name`, description: `memory group ${g.name} is also memoryGroups[${seen.get(g.name)}]; names are unique within a VM` });
        bad.reasons.add('INVALID_MEMORY_GROUP');
      } else seen.set(g.name, i);
      const shape = collect(bad, () => under(prefix, () => normalizeGroupInput({ ...g, vm: spec.name }, spec)));
      if (shape && settings) collect(bad, () => under(prefix, () => planMemoryGroup(groupSpecOf(shape, shape.guestNodeId ?? spec.guestNodes.length), settings)));
      return shape;
    });
    if (bad.violations.length) {
      throw DomainError.invalid(bad.reasons.size === 1 ? [...bad.reasons][0]! : 'INVALID_TOPOLOGY_PREVIEW', bad.violations);
    }

    // 2. The host and its pools.
    const prisma = this.mutations.db.prisma;
    const host: Host | undefined = await this.hosts.find(prisma, spec.host);
    if (!host) throw DomainError.invalid('VM_HOST_NOT_FOUND', [{ field: 'host', description: `host ${spec.host} does not exist` }], { host: spec.host });
    checkVmHostNodes(spec, host);
    const pools = new Map<string, Pool>();
    for (const name of new Set(groups.map((g) => g.pool))) {
      const p = await this.pools.find(prisma, name);
      if (p) pools.set(name, p);
    }
    const missing = groups.flatMap((g, i) => (pools.has(g.pool) ? [] : [{ field: `memoryGroups[${i}].pool`, description: `pool ${g.pool} does not exist` }]));
    if (missing.length) throw DomainError.invalid('MEMORY_GROUP_POOL_NOT_FOUND', missing, { pool: groups.find((g) => !pools.has(g.pool))!.pool });

    const stored: StoredMemoryGroup[] = groups.map((g, i) => {
      const pool = pools.get(g.pool)!;
      const shape = shapes[i] as GroupShape;
      under(`memoryGroups[${i}]`, () =>
        checkGroupPool(
          {
            name: pool.name,
            host: pool.host,
            hostNodeId: pool.hostNodeId,
            state: pool.state,
            memoryType: pool.memoryType,
            cpuAddressable: pool.cpuAddressable ?? true,
            ...(pool.daxDevicePath !== undefined ? { daxDevicePath: pool.daxDevicePath } : {}),
          },
          spec.host,
          shape.kind,
        ),
      );
      return { ...shape, uid: `preview-${i}`, name: g.name, pool: pool.name, poolHostNodeId: pool.hostNodeId, desiredState: 'PRESENT', heldBytes: 0, hotplugged: false };
    });
    // 3. VM limits over all groups (slots, maxmem), as CreateMemoryGroup checks them.
    checkVmHeadroom(spec, stored);

    const topology = compileTopology(topologyInputFromResources({ host, vm: spec, pools: [...pools.values()], groups: stored }));
    return topologyView(topology, host.name, capacityWarnings(stored, pools));
  }
}

/** What a real CreateMemoryGroup would reserve against what each pool has free now. */
function capacityWarnings(groups: readonly StoredMemoryGroup[], pools: ReadonlyMap<string, Pool>): string[] {
  const need = new Map<string, number>();
  for (const g of groups) {
    const pool = pools.get(g.pool)!;
    const bytes = g.kind === 'STATIC' ? g.sizeBytes : g.requestedBytes;
    need.set(g.pool, (need.get(g.pool) ?? 0) + holdingBytes(bytes, pool.granuleBytes));
  }
  const out: string[] = [];
  for (const [name, bytes] of need) {
    const pool = pools.get(name)!;
    if (bytes > pool.freeBytes) {
      out.push(`pool ${name} has ${formatBytes(pool.freeBytes)} free but these groups would hold ${formatBytes(bytes)}: creating them now would fail with POOL_CAPACITY_EXHAUSTED`);
    }
  }
  return out;
}
