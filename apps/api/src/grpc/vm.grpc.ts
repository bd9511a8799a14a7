import type {
  CreateMemoryGroupInput,
  GroupDesiredState as DomainDesiredState,
  GroupObservedState as DomainGroupState,
  GroupOnlineType as DomainOnlineType,
  GuestMemoryOverrides as DomainOverrides,
  MemmapPlacement as DomainMemmap,
  MemoryGroup as DomainGroup,
  MemoryGroupKind as DomainKind,
  MemoryDrift as DomainDrift,
  MemoryDriftReason as DomainDriftReason,
  MovableRatio as DomainRatio,
  OnlinePolicy as DomainOnlinePolicy,
  Operation as DomainOperation,
  OperationKind as DomainOperationKind,
  OperationState as DomainOperationState,
  PredictedZone as DomainZone,
  StepState as DomainStepState,
  VmSpec,
  VmState as DomainVmState,
} from '#domain';
import type { PoolLedgerView, VmView } from '#application';
import { Empty } from '#contracts/generated/google/protobuf/empty';
import { MemoryDriftReason, MemoryDriftState, type MemoryDrift } from '#contracts/generated/memplane/v1/drift';
import { LedgerServiceService, type GetPoolLedgerRequest, type LedgerServiceServer, type PoolLedger } from '#contracts/generated/memplane/v1/ledger';
import {
  GroupDesiredState,
  GroupOnlineType,
  GuestUnitMode,
  MemmapPlacement,
  MemoryGroupKind,
  MemoryGroupServiceService,
  MemoryGroupState,
  type CreateMemoryGroupRequest,
  type DeleteMemoryGroupRequest,
  type GetMemoryGroupRequest,
  type ListMemoryGroupsRequest,
  type ListMemoryGroupsResponse,
  type MemoryGroup,
  type MemoryGroupServiceServer,
  type ResizeMemoryGroupRequest,
} from '#contracts/generated/memplane/v1/memory_group';
import {
  OperationKind,
  OperationServiceService,
  OperationState,
  OperationStepState,
  type CancelOperationRequest,
  type GetOperationRequest,
  type ListOperationsRequest,
  type ListOperationsResponse,
  type Operation,
  type OperationServiceServer,
} from '#contracts/generated/memplane/v1/operation';
import {
  OnlinePolicy,
  PredictedZone,
  VmServiceService,
  VmState,
  ZoneDecision,
  type CreateVmRequest,
  type DeleteVmRequest,
  type GetVmRequest,
  type GuestMemoryOverrides,
  type ListVmsRequest,
  type ListVmsResponse,
  type MovableRatio,
  type StartVmRequest,
  type StopVmRequest,
  type Vm,
  type VmServiceServer,
} from '#contracts/generated/memplane/v1/vm';
import type { Runtime } from '../runtime';
import { big, Converter, invert, requireMessage } from './convert';
import type { GrpcRegistry } from './server';
import { watchOperationHandler, watchVmHandler } from './watch.grpc';

const VM_STATE: Record<number, DomainVmState> = {
  [VmState.VM_STATE_DEFINED]: 'DEFINED',
  [VmState.VM_STATE_STARTING]: 'STARTING',
  [VmState.VM_STATE_RUNNING]: 'RUNNING',
  [VmState.VM_STATE_STOPPING]: 'STOPPING',
  [VmState.VM_STATE_STOPPED]: 'STOPPED',
  [VmState.VM_STATE_FAILED]: 'FAILED',
};
const ONLINE_POLICY: Record<number, DomainOnlinePolicy> = {
  [OnlinePolicy.ONLINE_POLICY_CONTIG_ZONES]: 'CONTIG_ZONES',
  [OnlinePolicy.ONLINE_POLICY_AUTO_MOVABLE]: 'AUTO_MOVABLE',
};
const ZONE: Record<number, DomainZone> = {
  [PredictedZone.PREDICTED_ZONE_MOVABLE]: 'MOVABLE',
  [PredictedZone.PREDICTED_ZONE_KERNEL]: 'KERNEL',
  [PredictedZone.PREDICTED_ZONE_MIXED]: 'MIXED',
  [PredictedZone.PREDICTED_ZONE_NONE]: 'NONE',
};
const DECISION: Record<number, 'EXPLICIT' | 'CONTIG_ZONES' | 'AUTO_MOVABLE'> = {
  [ZoneDecision.ZONE_DECISION_EXPLICIT]: 'EXPLICIT',
  [ZoneDecision.ZONE_DECISION_CONTIG_ZONES]: 'CONTIG_ZONES',
  [ZoneDecision.ZONE_DECISION_AUTO_MOVABLE]: 'AUTO_MOVABLE',
};
export const KIND: Record<number, DomainKind> = { [MemoryGroupKind.MEMORY_GROUP_KIND_STATIC]: 'STATIC', [MemoryGroupKind.MEMORY_GROUP_KIND_DYNAMIC]: 'DYNAMIC' };
export const ONLINE_TYPE: Record<number, DomainOnlineType> = {
  [GroupOnlineType.GROUP_ONLINE_TYPE_ONLINE_MOVABLE]: 'ONLINE_MOVABLE',
  [GroupOnlineType.GROUP_ONLINE_TYPE_ONLINE_KERNEL]: 'ONLINE_KERNEL',
  [GroupOnlineType.GROUP_ONLINE_TYPE_AUTO]: 'AUTO',
};
const DESIRED: Record<number, DomainDesiredState> = {
  [GroupDesiredState.GROUP_DESIRED_STATE_PRESENT]: 'PRESENT',
  [GroupDesiredState.GROUP_DESIRED_STATE_ABSENT]: 'ABSENT',
};
const GROUP_STATE: Record<number, DomainGroupState> = {
  [MemoryGroupState.MEMORY_GROUP_STATE_PENDING]: 'PENDING',
  [MemoryGroupState.MEMORY_GROUP_STATE_PLUGGED]: 'PLUGGED',
  [MemoryGroupState.MEMORY_GROUP_STATE_RESIZING]: 'RESIZING',
  [MemoryGroupState.MEMORY_GROUP_STATE_UNPLUGGING]: 'UNPLUGGING',
  [MemoryGroupState.MEMORY_GROUP_STATE_FAILED]: 'FAILED',
};
const UNIT_MODE: Record<number, 'DIMM' | 'SBM' | 'BBM'> = {
  [GuestUnitMode.GUEST_UNIT_MODE_DIMM]: 'DIMM',
  [GuestUnitMode.GUEST_UNIT_MODE_SBM]: 'SBM',
  [GuestUnitMode.GUEST_UNIT_MODE_BBM]: 'BBM',
};
const MEMMAP: Record<number, DomainMemmap> = {
  [MemmapPlacement.MEMMAP_PLACEMENT_SELF_HOSTED]: 'SELF_HOSTED',
  [MemmapPlacement.MEMMAP_PLACEMENT_DISABLED]: 'DISABLED',
  [MemmapPlacement.MEMMAP_PLACEMENT_NOT_REQUESTED_BY_DRIVER]: 'NOT_REQUESTED_BY_DRIVER',
  [MemmapPlacement.MEMMAP_PLACEMENT_RANGE_NOT_ONE_BLOCK]: 'RANGE_NOT_ONE_BLOCK',
  [MemmapPlacement.MEMMAP_PLACEMENT_BLOCK_SIZE_UNSUITABLE]: 'BLOCK_SIZE_UNSUITABLE',
};
const OP_KIND: Record<number, DomainOperationKind> = {
  [OperationKind.OPERATION_KIND_START]: 'START',
  [OperationKind.OPERATION_KIND_STOP]: 'STOP',
  [OperationKind.OPERATION_KIND_PLUG]: 'PLUG',
  [OperationKind.OPERATION_KIND_UNPLUG]: 'UNPLUG',
  [OperationKind.OPERATION_KIND_RESIZE]: 'RESIZE',
};
const OP_STATE: Record<number, DomainOperationState> = {
  [OperationState.OPERATION_STATE_PENDING]: 'PENDING',
  [OperationState.OPERATION_STATE_RUNNING]: 'RUNNING',
  [OperationState.OPERATION_STATE_SUCCEEDED]: 'SUCCEEDED',
  [OperationState.OPERATION_STATE_FAILED]: 'FAILED',
  [OperationState.OPERATION_STATE_CANCELLED]: 'CANCELLED',
};
const STEP_STATE: Record<number, DomainStepState> = {
  [OperationStepState.OPERATION_STEP_STATE_PENDING]: 'PENDING',
  [OperationStepState.OPERATION_STEP_STATE_DONE]: 'DONE',
  [OperationStepState.OPERATION_STEP_STATE_FAILED]: 'FAILED',
};
const DRIFT_REASON_OUT: Record<DomainDriftReason, MemoryDriftReason> = {
  DEVICE_MISSING: MemoryDriftReason.MEMORY_DRIFT_REASON_DEVICE_MISSING,
  PLUGGED_SIZE_MISMATCH: MemoryDriftReason.MEMORY_DRIFT_REASON_PLUGGED_SIZE_MISMATCH,
  REQUESTED_SIZE_MISMATCH: MemoryDriftReason.MEMORY_DRIFT_REASON_REQUESTED_SIZE_MISMATCH,
  BLOCKS_NOT_ONLINE: MemoryDriftReason.MEMORY_DRIFT_REASON_BLOCKS_NOT_ONLINE,
  WRONG_ZONE: MemoryDriftReason.MEMORY_DRIFT_REASON_WRONG_ZONE,
  UNEXPECTED_DEVICE: MemoryDriftReason.MEMORY_DRIFT_REASON_UNEXPECTED_DEVICE,
  UNEXPECTED_BACKEND: MemoryDriftReason.MEMORY_DRIFT_REASON_UNEXPECTED_BACKEND,
  QEMU_NOT_RUNNING: MemoryDriftReason.MEMORY_DRIFT_REASON_QEMU_NOT_RUNNING,
};
const VM_STATE_OUT = invert(VM_STATE);
const ONLINE_POLICY_OUT = invert(ONLINE_POLICY);
const ZONE_OUT = invert(ZONE);
const DECISION_OUT = invert(DECISION);
const KIND_OUT = invert(KIND);
export const ONLINE_TYPE_OUT = invert(ONLINE_TYPE);
const DESIRED_OUT = invert(DESIRED);
const GROUP_STATE_OUT = invert(GROUP_STATE);
const UNIT_MODE_OUT = invert(UNIT_MODE);
const MEMMAP_OUT = invert(MEMMAP);
const OP_KIND_OUT = invert(OP_KIND);
const OP_STATE_OUT = invert(OP_STATE);
const STEP_STATE_OUT = invert(STEP_STATE);

function overridesFrom(c: Converter, o: GuestMemoryOverrides | undefined): DomainOverrides {
  if (!o) return {};
  const out: DomainOverrides = {};
  if (o.memoryBlockSizeBytes !== undefined) out.memoryBlockSizeBytes = c.num('vm.guestMemory.memoryBlockSizeBytes', o.memoryBlockSizeBytes);
  if (o.memmapOnMemory !== undefined) out.memmapOnMemory = o.memmapOnMemory;
  if (o.onlinePolicy) out.onlinePolicy = c.enumValue('vm.guestMemory.onlinePolicy', o.onlinePolicy, ONLINE_POLICY);
  if (o.autoMovableRatioPercent !== undefined) out.autoMovableRatioPercent = o.autoMovableRatioPercent;
  if (o.autoMovableNumaAware !== undefined) out.autoMovableNumaAware = o.autoMovableNumaAware;
  if (o.virtioMemForceBbm !== undefined) out.virtioMemForceBbm = o.virtioMemForceBbm;
  if (o.virtioMemBbmBlockSizeBytes !== undefined) out.virtioMemBbmBlockSizeBytes = c.num('vm.guestMemory.virtioMemBbmBlockSizeBytes', o.virtioMemBbmBlockSizeBytes);
  return out;
}

function overridesTo(o: DomainOverrides): GuestMemoryOverrides {
  return {
    ...(o.memoryBlockSizeBytes !== undefined ? { memoryBlockSizeBytes: big(o.memoryBlockSizeBytes) } : {}),
    ...(o.memmapOnMemory !== undefined ? { memmapOnMemory: o.memmapOnMemory } : {}),
    onlinePolicy: o.onlinePolicy ? ONLINE_POLICY_OUT[o.onlinePolicy] : OnlinePolicy.ONLINE_POLICY_UNSPECIFIED,
    ...(o.autoMovableRatioPercent !== undefined ? { autoMovableRatioPercent: o.autoMovableRatioPercent } : {}),
    ...(o.autoMovableNumaAware !== undefined ? { autoMovableNumaAware: o.autoMovableNumaAware } : {}),
    ...(o.virtioMemForceBbm !== undefined ? { virtioMemForceBbm: o.virtioMemForceBbm } : {}),
    ...(o.virtioMemBbmBlockSizeBytes !== undefined ? { virtioMemBbmBlockSizeBytes: big(o.virtioMemBbmBlockSizeBytes) } : {}),
  };
}

/** CreateVm's fields as the domain's VmSpec (also the hypothetical VM of a topology preview). */
export function vmSpecFrom(c: Converter, v: Vm): VmSpec {
  return {
    name: v.name,
    description: v.description,
    labels: { ...v.labels },
    host: v.host,
    kernelProfile: v.kernelProfile,
    guestMemory: overridesFrom(c, v.guestMemory),
    guestNodes: v.guestNodes.map((n, i) => ({
      guestNodeId: n.guestNodeId,
      vcpus: n.vcpus,
      bootMemoryBytes: c.num(`vm.guestNodes[${i}].bootMemoryBytes`, n.bootMemoryBytes),
      ...(n.hostNodeId !== undefined ? { hostNodeId: n.hostNodeId } : {}),
    })),
    memorySlots: v.memorySlots,
    maxMemoryBytes: c.num('vm.maxMemoryBytes', v.maxMemoryBytes),
    sparePciePorts: v.sparePciePorts,
  };
}

function ratioTo(r: DomainRatio): MovableRatio {
  return {
    ...(r.nodeId === null ? {} : { guestNodeId: r.nodeId }),
    kernelEarlyBytes: big(r.kernelEarlyBytes),
    movableBytes: big(r.movableBytes),
    limitBytes: big(r.limitBytes),
    ...(r.ratioPercent === null ? {} : { ratioPercent: r.ratioPercent }),
    exceeds: r.exceeds,
  };
}

/** A drift record (output only): numbers only where the reason has them. */
export function driftToProto(d: DomainDrift): MemoryDrift {
  return {
    state: d.state === 'DRIFTED' ? MemoryDriftState.MEMORY_DRIFT_STATE_DRIFTED : MemoryDriftState.MEMORY_DRIFT_STATE_IN_SYNC,
    conditions: d.conditions.map((c) => ({
      reason: DRIFT_REASON_OUT[c.reason] ?? MemoryDriftReason.MEMORY_DRIFT_REASON_UNSPECIFIED,
      memoryGroup: c.memoryGroup ?? '',
      qemuId: c.qemuId ?? '',
      message: c.message,
      ...(c.expectedBytes !== undefined ? { expectedBytes: big(c.expectedBytes) } : {}),
      ...(c.observedBytes !== undefined ? { observedBytes: big(c.observedBytes) } : {}),
      ...(c.expectedBlocks !== undefined ? { expectedBlocks: c.expectedBlocks } : {}),
      ...(c.observedBlocks !== undefined ? { observedBlocks: c.observedBlocks } : {}),
      expectedZone: c.expectedZone ?? '',
      observedZone: c.observedZone ?? '',
    })),
    checkTime: d.checkTime,
  };
}

export function vmToProto(v: VmView): Vm {
  const r = v.memoryReport;
  return {
    name: v.name,
    uid: v.uid,
    description: v.description,
    labels: v.labels,
    host: v.host,
    kernelProfile: v.kernelProfile,
    guestMemory: overridesTo(v.guestMemory),
    guestNodes: v.guestNodes.map((n) => ({
      guestNodeId: n.guestNodeId,
      vcpus: n.vcpus,
      bootMemoryBytes: big(n.bootMemoryBytes),
      ...(n.hostNodeId !== undefined ? { hostNodeId: n.hostNodeId } : {}),
    })),
    memorySlots: v.memorySlots,
    maxMemoryBytes: big(v.maxMemoryBytes),
    sparePciePorts: v.sparePciePorts,
    state: VM_STATE_OUT[v.state],
    memoryReport: {
      memoryBlockSizeBytes: big(r.memoryBlockSizeBytes),
      memmapOnMemory: r.memmapOnMemory,
      onlinePolicy: ONLINE_POLICY_OUT[r.onlinePolicy],
      autoMovableRatioPercent: r.autoMovableRatioPercent,
      bootMemoryBytes: big(r.bootMemoryBytes),
      totalMemoryBytes: big(r.totalMemoryBytes),
      maxMemoryBytes: big(r.maxMemoryBytes),
      staticGroupCount: r.staticGroupCount,
      memorySlots: r.memorySlots,
      hotpluggedDynamicGroupCount: r.hotpluggedDynamicGroupCount,
      sparePciePorts: r.sparePciePorts,
      heldBytes: big(r.heldBytes),
      groups: r.groups.map((g) => ({
        memoryGroup: g.name,
        effectiveGuestNodeId: g.effectiveGuestNodeId,
        guestUnit: { mode: UNIT_MODE_OUT[g.guestUnit.mode], unitBytes: big(g.guestUnit.unitBytes), memoryGroupUnitBytes: big(g.guestUnit.memoryGroupUnitBytes) },
        presentBytes: big(g.presentBytes),
        usableBytes: big(g.usableBytes),
        memmapPlacement: MEMMAP_OUT[g.memmapPlacement],
        vmemmapBytes: big(g.vmemmapBytes),
        zone: ZONE_OUT[g.zone],
        movableBytes: big(g.movableBytes),
        kernelBytes: big(g.kernelBytes),
        decidedBy: DECISION_OUT[g.decidedBy],
      })),
      global: ratioTo(r.global),
      nodes: r.nodes.map(ratioTo),
      warnings: r.warnings.map((w) => ({
        code: w.code,
        message: w.message,
        memoryGroup: w.groupId ?? '',
        ...(w.guestNodeId !== undefined ? { guestNodeId: w.guestNodeId } : {}),
      })),
    },
    etag: v.etag,
    createTime: v.createTime,
    updateTime: v.updateTime,
    qemuPid: v.qemuPid ?? 0,
    qmpSocketPath: v.qmpSocketPath ?? '',
    qgaSocketPath: v.qgaSocketPath ?? '',
    observedMemoryDevices: (v.observedMemoryDevices ?? []).map((d) => {
      const n = (k: string) => BigInt(Number(d[k] ?? 0));
      return {
        kind: String(d['kind'] ?? ''),
        id: String(d['id'] ?? ''),
        addressBytes: n('addressBytes'),
        sizeBytes: n('sizeBytes'),
        requestedSizeBytes: n('requestedSizeBytes'),
        maxSizeBytes: n('maxSizeBytes'),
        node: Number(d['node'] ?? 0),
        memdev: String(d['memdev'] ?? ''),
      };
    }),
    observeTime: v.observeTime,
    ...(v.memoryDrift ? { memoryDrift: driftToProto(v.memoryDrift) } : {}),
  };
}

export function groupToProto(g: DomainGroup): MemoryGroup {
  return {
    name: g.name,
    uid: g.uid,
    vm: g.vm,
    pool: g.pool,
    kind: KIND_OUT[g.kind],
    sizeBytes: big(g.sizeBytes),
    maxSizeBytes: big(g.maxSizeBytes),
    blockSizeBytes: big(g.blockSizeBytes),
    requestedBytes: big(g.requestedBytes),
    onlineType: ONLINE_TYPE_OUT[g.onlineType],
    ...(g.guestNodeId !== undefined ? { guestNodeId: g.guestNodeId } : {}),
    effectiveGuestNodeId: g.effectiveGuestNodeId,
    desiredState: DESIRED_OUT[g.desiredState],
    heldBytes: big(g.heldBytes),
    hotplugged: g.hotplugged,
    guestUnit: { mode: UNIT_MODE_OUT[g.guestUnit.mode], unitBytes: big(g.guestUnit.unitBytes), memoryGroupUnitBytes: big(g.guestUnit.memoryGroupUnitBytes) },
    usableBytes: big(g.usableBytes),
    memmapPlacement: MEMMAP_OUT[g.memmapPlacement],
    vmemmapBytes: big(g.vmemmapBytes),
    state: GROUP_STATE_OUT[g.state],
    pluggedBytes: big(g.pluggedBytes),
    onlineBlocks: g.onlineBlocks,
    onlineZones: { ...(g.onlineZones ?? {}) },
    ...(g.memoryDrift ? { memoryDrift: driftToProto(g.memoryDrift) } : {}),
    operation: g.operation ?? '',
    etag: g.etag,
    createTime: g.createTime,
    updateTime: g.updateTime,
  };
}

export function operationToProto(o: DomainOperation): Operation {
  return {
    name: o.name,
    vm: o.vm,
    memoryGroup: o.memoryGroup ?? '',
    kind: OP_KIND_OUT[o.kind],
    state: OP_STATE_OUT[o.state],
    steps: o.steps.map((s) => ({ name: s.name, state: STEP_STATE_OUT[s.state] })),
    progressPercent: o.progressPercent,
    attempts: o.attempts,
    error: o.error,
    requestId: o.requestId ?? '',
    principal: o.principal,
    createTime: o.createTime,
    updateTime: o.updateTime,
    startTime: o.startTime,
    endTime: o.endTime,
  };
}

function ledgerToProto(l: PoolLedgerView): PoolLedger {
  return {
    pool: l.pool,
    capacityBytes: big(l.capacityBytes),
    granuleBytes: big(l.granuleBytes),
    allocatedBytes: big(l.allocatedBytes),
    freeBytes: big(l.freeBytes),
    largestFreeBytes: big(l.largestFreeBytes),
    freeExtentCount: l.freeExtentCount,
    fragmentationBasisPoints: l.fragmentationBasisPoints,
    extents: l.extents.map((e) => ({ vm: e.vm, memoryGroup: e.memoryGroup, offsetBytes: big(e.offsetBytes), sizeBytes: big(e.sizeBytes) })),
    freeExtents: l.freeExtents.map((e) => ({ offsetBytes: big(e.offsetBytes), sizeBytes: big(e.sizeBytes) })),
  };
}

function groupInputFrom(c: Converter, vm: string, g: MemoryGroup): CreateMemoryGroupInput {
  const kind = c.enumValue('memoryGroup.kind', g.kind, KIND);
  const base = {
    name: g.name,
    vm,
    pool: g.pool,
    kind,
    onlineType: c.enumValue('memoryGroup.onlineType', g.onlineType, ONLINE_TYPE),
    ...(g.guestNodeId !== undefined ? { guestNodeId: g.guestNodeId } : {}),
  };
  if (kind === 'STATIC') {
    // proto3 cannot tell 0 from unset: zeros of the other kind's fields mean "not given".
    return {
      ...base,
      sizeBytes: c.num('memoryGroup.sizeBytes', g.sizeBytes),
      ...(g.maxSizeBytes ? { maxSizeBytes: c.num('memoryGroup.maxSizeBytes', g.maxSizeBytes) } : {}),
      ...(g.blockSizeBytes ? { blockSizeBytes: c.num('memoryGroup.blockSizeBytes', g.blockSizeBytes) } : {}),
      ...(g.requestedBytes ? { requestedBytes: c.num('memoryGroup.requestedBytes', g.requestedBytes) } : {}),
    };
  }
  return {
    ...base,
    ...(g.sizeBytes ? { sizeBytes: c.num('memoryGroup.sizeBytes', g.sizeBytes) } : {}),
    maxSizeBytes: c.num('memoryGroup.maxSizeBytes', g.maxSizeBytes),
    ...(g.blockSizeBytes ? { blockSizeBytes: c.num('memoryGroup.blockSizeBytes', g.blockSizeBytes) } : {}),
    requestedBytes: c.num('memoryGroup.requestedBytes', g.requestedBytes),
  };
}

export function registerVms(registry: GrpcRegistry, rt: Runtime): void {
  const vms: VmServiceServer = {
    createVm: registry.unary(async (ctx, req: CreateVmRequest) => {
      const c = new Converter();
      const spec = vmSpecFrom(c, requireMessage('vm', req.vm));
      c.done();
      return vmToProto(await rt.vms.create(ctx, spec, req.requestId || undefined));
    }),
    getVm: registry.unary(async (ctx, req: GetVmRequest) => vmToProto(await rt.vms.get(ctx, req.name))),
    listVms: registry.unary(async (ctx, req: ListVmsRequest): Promise<ListVmsResponse> => {
      const c = new Converter();
      const state = req.state ? c.enumValue('state', req.state, VM_STATE) : undefined;
      c.done();
      const page = await rt.vms.list(ctx, { pageSize: req.pageSize, pageToken: req.pageToken, ...(req.host ? { host: req.host } : {}), ...(state ? { state } : {}) });
      return { vms: page.items.map(vmToProto), nextPageToken: page.nextPageToken, totalSize: page.totalSize };
    }),
    deleteVm: registry.unary(async (ctx, req: DeleteVmRequest) => {
      await rt.vms.delete(ctx, req.name, req.etag || undefined, req.requestId || undefined);
      return Empty.create();
    }),
    startVm: registry.unary(async (ctx, req: StartVmRequest) => operationToProto(await rt.vms.start(ctx, req.name, req.etag || undefined, req.requestId || undefined))),
    stopVm: registry.unary(async (ctx, req: StopVmRequest) => operationToProto(await rt.vms.stop(ctx, req.name, req.etag || undefined, req.requestId || undefined))),
    watchVm: watchVmHandler(registry, rt),
  };
  registry.add(VmServiceService, vms);

  const groups: MemoryGroupServiceServer = {
    createMemoryGroup: registry.unary(async (ctx, req: CreateMemoryGroupRequest) => {
      const c = new Converter();
      const input = groupInputFrom(c, req.vm, requireMessage('memoryGroup', req.memoryGroup));
      c.done();
      return groupToProto(await rt.memoryGroups.create(ctx, input, req.requestId || undefined));
    }),
    getMemoryGroup: registry.unary(async (ctx, req: GetMemoryGroupRequest) => groupToProto(await rt.memoryGroups.get(ctx, req.vm, req.name))),
    listMemoryGroups: registry.unary(async (ctx, req: ListMemoryGroupsRequest): Promise<ListMemoryGroupsResponse> => {
      const page = await rt.memoryGroups.list(ctx, req.vm, { pageSize: req.pageSize, pageToken: req.pageToken });
      return { memoryGroups: page.items.map(groupToProto), nextPageToken: page.nextPageToken, totalSize: page.totalSize };
    }),
    resizeMemoryGroup: registry.unary(async (ctx, req: ResizeMemoryGroupRequest) => {
      const c = new Converter();
      const requested = c.num('requestedBytes', req.requestedBytes);
      c.done();
      return groupToProto(await rt.memoryGroups.resize(ctx, req.vm, req.name, requested, req.etag || undefined, req.requestId || undefined));
    }),
    deleteMemoryGroup: registry.unary(async (ctx, req: DeleteMemoryGroupRequest) => {
      const r = await rt.memoryGroups.delete(ctx, req.vm, req.name, req.etag || undefined, req.requestId || undefined);
      return groupToProto(r.memoryGroup);
    }),
  };
  registry.add(MemoryGroupServiceService, groups);

  const operations: OperationServiceServer = {
    getOperation: registry.unary(async (ctx, req: GetOperationRequest) => operationToProto(await rt.operations.get(ctx, req.name))),
    listOperations: registry.unary(async (ctx, req: ListOperationsRequest): Promise<ListOperationsResponse> => {
      const c = new Converter();
      const state = req.state ? c.enumValue('state', req.state, OP_STATE) : undefined;
      c.done();
      const page = await rt.operations.list(ctx, { pageSize: req.pageSize, pageToken: req.pageToken, ...(req.vm ? { vm: req.vm } : {}), ...(state ? { state } : {}) });
      return { operations: page.items.map(operationToProto), nextPageToken: page.nextPageToken, totalSize: page.totalSize };
    }),
    cancelOperation: registry.unary(async (ctx, req: CancelOperationRequest) => operationToProto(await rt.operations.cancel(ctx, req.name, req.requestId || undefined))),
    watchOperation: watchOperationHandler(registry, rt),
  };
  registry.add(OperationServiceService, operations);

  const ledger: LedgerServiceServer = {
    getPoolLedger: registry.unary(async (ctx, req: GetPoolLedgerRequest) => ledgerToProto(await rt.ledger.poolLedger(ctx, req.pool))),
  };
  registry.add(LedgerServiceService, ledger);
}
