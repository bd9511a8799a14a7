import type { VmSpec } from '#domain';
import type { PreviewMemoryGroupInput, TopologyView } from '#application';
import type { MemoryGroup } from '#contracts/generated/memplane/v1/memory_group';
import {
  HmatDataType,
  MemoryDeviceModel,
  PciePortPurpose,
  SratSource,
  TierSource,
  TopologyNodeKind,
  TopologyServiceService,
  type GetTopologyRequest,
  type HmatValues,
  type PreviewTopologyRequest,
  type Topology,
  type TopologyServiceServer,
} from '#contracts/generated/memplane/v1/topology';
import type { Vm } from '#contracts/generated/memplane/v1/vm';
import type { Runtime } from '../runtime';
import { big, Converter, requireMessage } from './convert';
import { KIND, ONLINE_TYPE, ONLINE_TYPE_OUT, vmSpecFrom } from './vm.grpc';
import type { GrpcRegistry } from './server';

// Output vocabularies.
const NODE_KIND = { CPU: TopologyNodeKind.TOPOLOGY_NODE_KIND_CPU, CXL: TopologyNodeKind.TOPOLOGY_NODE_KIND_CXL } as const;
const SRAT = { BOOT_MEMORY: SratSource.SRAT_SOURCE_BOOT_MEMORY, HOTPLUG_REGION: SratSource.SRAT_SOURCE_HOTPLUG_REGION } as const;
const DATA_TYPE = {
  READ_LATENCY: HmatDataType.HMAT_DATA_TYPE_READ_LATENCY,
  WRITE_LATENCY: HmatDataType.HMAT_DATA_TYPE_WRITE_LATENCY,
  READ_BANDWIDTH: HmatDataType.HMAT_DATA_TYPE_READ_BANDWIDTH,
  WRITE_BANDWIDTH: HmatDataType.HMAT_DATA_TYPE_WRITE_BANDWIDTH,
} as const;
const TIER_SOURCE = { HMAT: TierSource.TIER_SOURCE_HMAT, DEFAULT: TierSource.TIER_SOURCE_DEFAULT } as const;
const MODEL = { PC_DIMM: MemoryDeviceModel.MEMORY_DEVICE_MODEL_PC_DIMM, VIRTIO_MEM_PCI: MemoryDeviceModel.MEMORY_DEVICE_MODEL_VIRTIO_MEM_PCI } as const;
const PURPOSE = { VIRTIO_MEM: PciePortPurpose.PCIE_PORT_PURPOSE_VIRTIO_MEM, SPARE: PciePortPurpose.PCIE_PORT_PURPOSE_SPARE } as const;

/** The hypothetical VM: CreateVm's fields; an empty name is "preview". */
function previewVmFrom(c: Converter, v: Vm): VmSpec {
  return { ...vmSpecFrom(c, v), name: v.name || 'preview' };
}

/** CreateMemoryGroup's fields; proto3 zeros of the other kind's fields mean "not given". */
function previewGroupFrom(c: Converter, g: MemoryGroup, i: number): PreviewMemoryGroupInput {
  const f = (name: string) => `memoryGroups[${i}].${name}`;
  const kind = c.enumValue(f('kind'), g.kind, KIND);
  const size = (name: 'sizeBytes' | 'maxSizeBytes' | 'blockSizeBytes' | 'requestedBytes', required: boolean) =>
    required || g[name] ? { [name]: c.num(f(name), g[name]) } : {};
  return {
    name: g.name,
    pool: g.pool,
    kind,
    onlineType: c.enumValue(f('onlineType'), g.onlineType, ONLINE_TYPE, 'ONLINE_MOVABLE'),
    ...(g.guestNodeId !== undefined ? { guestNodeId: g.guestNodeId } : {}),
    ...size('sizeBytes', kind === 'STATIC'),
    ...size('maxSizeBytes', kind === 'DYNAMIC'),
    ...size('blockSizeBytes', false),
    ...size('requestedBytes', kind === 'DYNAMIC'),
  };
}

const perf = (p: { readLatencyNs: number; writeLatencyNs: number; readBandwidthMBps: number; writeBandwidthMBps: number }): HmatValues => ({
  readLatencyNs: big(p.readLatencyNs),
  writeLatencyNs: big(p.writeLatencyNs),
  readBandwidthMbps: big(p.readBandwidthMBps),
  writeBandwidthMbps: big(p.writeBandwidthMBps),
});

export function topologyToProto(t: TopologyView): Topology {
  return {
    vm: t.vm,
    host: t.host,
    kernelProfile: t.kernelProfile,
    machine: { type: t.machine.type, reason: t.machine.reason },
    vcpuCount: t.vcpuCount,
    bootMemoryBytes: big(t.bootMemoryBytes),
    maxMemoryBytes: big(t.maxMemoryBytes),
    memorySlots: t.memorySlots,
    guestMemoryBlockBytes: big(t.guestMemoryBlockBytes),
    memmapOnMemory: t.memmapOnMemory,
    deviceMemory: { baseAddr: big(t.deviceMemory.baseAddr), sizeBytes: big(t.deviceMemory.sizeBytes) },
    nodes: t.nodes.map((n) => ({
      guestNodeId: n.guestNodeId,
      kind: NODE_KIND[n.kind],
      vcpuIds: n.vcpuIds,
      hostNodeId: n.hostNodeId,
      hostNodePinned: n.hostNodePinned,
      bootMemoryBytes: big(n.bootMemoryBytes),
      initiatorGuestNodeId: n.initiatorGuestNodeId,
      srat: SRAT[n.srat],
      pools: n.pools,
      anchorPool: n.anchorPool ?? '',
    })),
    distances: t.distances.map((values) => ({ values })),
    hmat: {
      initiators: t.hmat.initiators,
      targets: t.hmat.targets,
      cells: t.hmat.cells.map((c) => ({
        initiator: c.initiator,
        target: c.target,
        host: perf(c.host),
        derivation: c.derivation ?? '',
        qemu: {
          readLatencyNs: big(c.qemu.readLatencyNs),
          writeLatencyNs: big(c.qemu.writeLatencyNs),
          readBandwidthBps: big(c.qemu.readBandwidthBps),
          writeBandwidthBps: big(c.qemu.writeBandwidthBps),
        },
        guest: perf(c.guest),
      })),
      bandwidthDivisor: big(t.hmat.bandwidthDivisor),
      bandwidthDivisorReason: t.hmat.bandwidthDivisorReason ?? '',
      latencyGranularityNs: big(t.hmat.latencyGranularityNs),
      bandwidthGranularityMbps: big(t.hmat.bandwidthGranularityMBps),
      structures: t.hmat.structures.map((s) => ({
        dataType: DATA_TYPE[s.dataType],
        qemuBase: big(s.qemuBase),
        entryBaseUnit: big(s.entryBaseUnit),
        entries: s.entries.map((values) => ({ values })),
      })),
    },
    tiers: {
      kernelProfile: t.tiers.kernelProfile,
      hmatTiering: { enabled: t.tiers.hmatTiering.enabled, referenceGuestNodeId: t.tiers.hmatTiering.referenceGuestNodeId, reason: t.tiers.hmatTiering.reason },
      nodes: t.tiers.nodes.map((n) => ({
        guestNodeId: n.guestNodeId,
        adistance: n.adistance,
        tier: n.tier,
        source: TIER_SOURCE[n.source],
        reason: n.reason,
        calculation: n.calculation
          ? {
              latencySumNs: big(n.calculation.latencySumNs),
              referenceLatencySumNs: big(n.calculation.referenceLatencySumNs),
              bandwidthSumMbps: big(n.calculation.bandwidthSumMBps),
              referenceBandwidthSumMbps: big(n.calculation.referenceBandwidthSumMBps),
              steps: n.calculation.steps.map(big),
              wrapped: n.calculation.wrapped,
            }
          : undefined,
      })),
      memoryTiers: t.tiers.memoryTiers.map((m) => ({ tier: m.tier, adistanceStart: m.adistanceStart, guestNodeIds: m.guestNodeIds, nodelist: m.nodelist })),
      topTierAdistance: t.tiers.topTierAdistance,
    },
    demotionTargets: t.demotionTargets.map((d) => ({ guestNodeId: d.guestNodeId, preferred: d.preferred, fallback: d.fallback })),
    memoryDevices: t.memoryDevices.map((d) => ({
      memoryGroup: d.memoryGroup,
      model: MODEL[d.model],
      deviceId: d.deviceId,
      guestNodeId: d.guestNodeId,
      pool: d.pool,
      onCommandLine: d.onCommandLine,
      sizeBytes: big(d.sizeBytes),
      requestedBytes: big(d.requestedBytes ?? 0),
      blockSizeBytes: big(d.blockSizeBytes ?? 0),
      onlineType: ONLINE_TYPE_OUT[d.onlineType],
      bus: d.bus ?? '',
      predictedAddr: big(d.predictedAddr),
      backend: {
        id: d.backend.id,
        type: d.backend.type,
        sizeBytes: big(d.backend.sizeBytes),
        hostNodeId: d.backend.hostNodeId,
        bindHostNode: d.backend.bindHostNode,
        memPath: d.backend.memPath ?? '',
      },
    })),
    pciePorts: t.pciePorts.map((p) => ({ id: p.id, chassis: p.chassis, purpose: PURPOSE[p.purpose], memoryGroup: p.memoryGroup ?? '' })),
    qemuArgv: t.qemuArgv,
    libvirtXml: t.libvirtXml,
    kernelCmdline: { args: t.kernelCmdline.args, cmdline: t.kernelCmdline.cmdline, explained: t.kernelCmdline.explained, warnings: t.kernelCmdline.warnings },
    warnings: t.warnings,
  };
}

export function registerTopology(registry: GrpcRegistry, rt: Runtime): void {
  const topology: TopologyServiceServer = {
    getTopology: registry.unary(async (ctx, req: GetTopologyRequest) => topologyToProto(await rt.topology.get(ctx, req.vm))),
    previewTopology: registry.unary(async (ctx, req: PreviewTopologyRequest) => {
      const c = new Converter();
      const vm = previewVmFrom(c, requireMessage('vm', req.vm));
      const memoryGroups = req.memoryGroups.map((g, i) => previewGroupFrom(c, g, i));
      c.done();
      return topologyToProto(await rt.topology.preview(ctx, { vm, memoryGroups }));
    }),
  };
  registry.add(TopologyServiceService, topology);
}
