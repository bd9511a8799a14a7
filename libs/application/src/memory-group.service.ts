import { randomUUID } from 'node:crypto';
import {
  assertNoActiveGroupOperation,
  assertResizable,
  authorize,
  checkEtag,
  checkGroupPool,
  checkSparePciePorts,
  checkVmHeadroom,
  DomainError,
  effectiveGuestNodes,
  etagOf,
  groupChangeMode,
  groupGuestFacts,
  groupDrift,
  groupSpecOf,
  holdingBytes,
  normalizeGroupInput,
  OPERATIONS_TOPIC,
  planMemoryGroup,
  plannedSteps,
  resolveGuestMemorySettings,
  type CreateMemoryGroupInput,
  type GuestMemorySettings,
  type MemoryDrift,
  type MemoryGroup,
  type OperationKind,
  type OperationRollback,
  type VmSpec,
} from '#domain';
import { MemoryGroupRepository, VmRepository, type GroupChangeWrites, type MemoryGroupRecord, type VmRecord } from '#persistence';
import type { CallContext } from './context';
import type { LockedGroupChange, Mutations } from './mutations';
import { pageToken, parsePageRequest, type Page } from './pagination';
import { ledgerGroupOf, PoolLedger } from './pool-ledger';

export interface MemoryGroupDeletion {
  memoryGroup: MemoryGroup;
  /** true: gone now, extents released. false: an UNPLUG operation (memoryGroup.operation) removes it. */
  deleted: boolean;
}

function groupNotFound(vm: string, name: string): DomainError {
  return new DomainError('NOT_FOUND', 'MEMORY_GROUP_NOT_FOUND', `memory group ${vm}/${name} does not exist`, [], { resource: 'memoryGroup', vm, name });
}

export function principalLabel(ctx: CallContext): string {
  return `${ctx.principal.keyName} (${ctx.principal.keyId})`;
}

export function settingsOf(vm: Pick<VmSpec, 'kernelProfile' | 'guestMemory'>): GuestMemorySettings {
  return resolveGuestMemorySettings(vm.kernelProfile, vm.guestMemory);
}

function optionalDrift(drift: MemoryDrift | undefined): { memoryDrift?: MemoryDrift } {
  return drift ? { memoryDrift: drift } : {};
}

/** The API view of a group; `all` are the VM's groups (the effective guest node depends on them). */
export function memoryGroupView(vm: VmRecord, all: readonly MemoryGroupRecord[], g: MemoryGroupRecord, settings: GuestMemorySettings): MemoryGroup {
  const node = effectiveGuestNodes(vm.guestNodes.length, all).get(g.uid) ?? g.guestNodeId ?? vm.guestNodes.length;
  const facts = groupGuestFacts(g, node, settings);
  return {
    name: g.name,
    uid: g.uid,
    vm: vm.name,
    pool: g.pool,
    kind: g.kind,
    sizeBytes: g.sizeBytes,
    maxSizeBytes: g.maxSizeBytes,
    blockSizeBytes: g.blockSizeBytes,
    requestedBytes: g.requestedBytes,
    onlineType: g.onlineType,
    ...(g.guestNodeId === undefined ? {} : { guestNodeId: g.guestNodeId }),
    effectiveGuestNodeId: node,
    desiredState: g.desiredState,
    heldBytes: g.heldBytes,
    hotplugged: g.hotplugged,
    guestUnit: facts.guestUnit,
    usableBytes: facts.usableBytes,
    memmapPlacement: facts.memmapPlacement,
    vmemmapBytes: facts.vmemmapBytes,
    state: g.state,
    pluggedBytes: g.pluggedBytes,
    onlineBlocks: g.onlineBlocks,
    onlineZones: g.onlineZones,
    ...(g.activeOperation ? { operation: g.activeOperation.name } : {}),
    ...optionalDrift(groupDrift(vm.memoryDrift, g.name, g.createTime)),
    etag: g.etag,
    createTime: g.createTime,
    updateTime: g.updateTime,
  };
}

/**
 * Memory groups and their pool extents. Every mutation runs in one
 * transaction that locks the VM row (so VM limits see a stable set of groups)
 * and then the pool row (so the ledger sees a stable set of extents), and
 * records an Operation plus its outbox message when the VM is STARTING or
 * RUNNING. A failed request rolls the whole transaction back, extents included.
 */
export class MemoryGroupService {
  private readonly vms = new VmRepository();
  private readonly groups = new MemoryGroupRepository();
  private readonly ledger = new PoolLedger();

  constructor(private readonly mutations: Mutations) {}

  async create(ctx: CallContext, input: CreateMemoryGroupInput, requestId?: string): Promise<MemoryGroup> {
    authorize(ctx.principal, 'vms.write');
    const resource = `vms/${input.vm}/memoryGroups/${input.name}`;
    const spec = { method: 'CreateMemoryGroup', resource, requestId, request: input };
    return this.mutations.runGroupChange(ctx, spec, { vm: input.vm, group: input.name, pool: input.pool }, async ({ vm, groups, pool, ledger }) => {
      const mode = groupChangeMode(vm.name, vm.state);
      const shape = normalizeGroupInput(input, vm);
      const settings = settingsOf(vm);
      planMemoryGroup(groupSpecOf(shape, shape.guestNodeId ?? vm.guestNodes.length), settings);
      if (!pool || !ledger) throw DomainError.invalid('MEMORY_GROUP_POOL_NOT_FOUND', [{ field: 'pool', description: `pool ${input.pool} does not exist` }], { pool: input.pool });
      checkGroupPool(pool, vm.host, shape.kind);

      if (groups.some((g) => g.name === input.name)) {
        throw DomainError.exists('MEMORY_GROUP_ALREADY_EXISTS', `vm ${vm.name} already has a memory group ${input.name}`, { vm: vm.name, name: input.name });
      }
      const hotplugged = mode === 'OPERATION';
      const now = new Date();
      const record: MemoryGroupRecord = {
        ...shape,
        uid: randomUUID(),
        vmId: vm.uid,
        name: input.name,
        pool: pool.name,
        poolId: pool.id,
        poolHostNodeId: pool.hostNodeId,
        poolFacts: pool,
        desiredState: 'PRESENT',
        heldBytes: 0,
        hotplugged,
        state: 'PENDING',
        pluggedBytes: 0,
        onlineBlocks: 0,
        onlineZones: {},
        version: 1,
        etag: etagOf(1),
        createTime: now,
        updateTime: now,
      };
      checkVmHeadroom(vm, [...groups, record]);
      if (hotplugged && shape.kind === 'DYNAMIC') {
        checkSparePciePorts(vm, groups.filter((g) => g.hotplugged && g.kind === 'DYNAMIC').length + 1);
      }
      const bytes = shape.kind === 'STATIC' ? shape.sizeBytes : shape.requestedBytes;
      const change = bytes === 0 ? undefined : this.ledger.compute(ledger, pool, ledgerGroupOf(vm.name, record), bytes, 'reserve');
      record.heldBytes = change?.heldBytes ?? 0;
      const insertGroup = {
        id: record.uid,
        vmId: vm.uid,
        name: input.name,
        poolId: pool.id,
        kind: shape.kind,
        sizeBytes: shape.sizeBytes,
        maxSizeBytes: shape.maxSizeBytes,
        blockSizeBytes: shape.blockSizeBytes,
        requestedBytes: shape.requestedBytes,
        onlineType: shape.onlineType,
        ...(shape.guestNodeId === undefined ? {} : { guestNodeId: shape.guestNodeId }),
        hotplugged,
        heldBytes: record.heldBytes,
        createTime: now,
      };
      const insertOperation = mode === 'OPERATION' ? this.newOperation(ctx, vm, record, 'PLUG', { kind: 'PLUG' }, requestId) : undefined;
      if (insertOperation) record.activeOperation = { name: insertOperation.id, kind: 'PLUG', state: 'PENDING' };
      return {
        result: memoryGroupView(vm, [...groups, record], record, settings),
        writes: { insertGroup, ...(insertOperation ? { insertOperation } : {}), ...(change ? { ledger: { poolId: pool.id, change } } : {}) },
      };
    });
  }

  async get(ctx: CallContext, vmName: string, name: string): Promise<MemoryGroup> {
    authorize(ctx.principal, 'read');
    const db = this.mutations.db.sql;
    const vm = await this.vms.get(db, vmName);
    const groups = await this.groups.listForVm(db, vm.uid);
    const g = groups.find((x) => x.name === name);
    if (!g) throw groupNotFound(vmName, name);
    return memoryGroupView(vm, groups, g, settingsOf(vm));
  }

  async list(ctx: CallContext, vmName: string, req: { pageSize?: number; pageToken?: string }): Promise<Page<MemoryGroup>> {
    authorize(ctx.principal, 'read');
    const filterKey = `memoryGroups|${vmName}`;
    const page = parsePageRequest(req.pageSize, req.pageToken, filterKey);
    const db = this.mutations.db.sql;
    const vm = await this.vms.get(db, vmName);
    // A VM has at most a few hundred groups, and each one's guest node depends on all of them.
    const groups = await this.groups.listForVm(db, vm.uid);
    const sorted = [...groups].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    const rest = page.after === undefined ? sorted : sorted.filter((g) => g.name > page.after!);
    const shown = rest.slice(0, page.pageSize);
    const settings = settingsOf(vm);
    return {
      items: shown.map((g) => memoryGroupView(vm, groups, g, settings)),
      totalSize: groups.length,
      nextPageToken: rest.length > page.pageSize ? pageToken(shown[shown.length - 1]!.name, filterKey) : '',
    };
  }

  /**
   * A DYNAMIC group's new requested size. On a VM at rest the holding follows
   * it (growth needs the pool to cover it, shrinking releases at once). On a
   * running VM growth is reserved now and a shrink keeps its extents until the
   * RESIZE operation has unplugged the memory.
   */
  async resize(ctx: CallContext, vmName: string, name: string, requestedBytes: number, etag?: string, requestId?: string): Promise<MemoryGroup> {
    authorize(ctx.principal, 'vms.write');
    const resource = `vms/${vmName}/memoryGroups/${name}`;
    const spec = { method: 'ResizeMemoryGroup', resource, requestId, request: { vm: vmName, name, requestedBytes, etag } };
    return this.mutations.runGroupChange(ctx, spec, { vm: vmName, group: name }, async (locked) => {
      const { vm, groups, g, ledger } = this.lockedGroup(locked, vmName, name, etag);
      const mode = groupChangeMode(vm.name, vm.state);
      assertResizable(vm.name, g);
      assertNoActiveGroupOperation(vm.name, g.name, g.activeOperation);
      const settings = settingsOf(vm);
      const node = effectiveGuestNodes(vm.guestNodes.length, groups).get(g.uid) ?? vm.guestNodes.length;
      planMemoryGroup(groupSpecOf({ ...g, requestedBytes }, node), settings);
      if (requestedBytes === g.requestedBytes) return { result: memoryGroupView(vm, groups, g, settings), writes: {} };

      const before = { requestedBytes: g.requestedBytes, heldBytes: g.heldBytes, state: g.state };
      // On a VM at rest the holding follows the request; on a running one a
      // shrink keeps its extents until the RESIZE operation has unplugged the memory.
      const target = mode === 'DIRECT' ? requestedBytes : Math.max(requestedBytes, before.heldBytes);
      const change = holdingBytes(target, g.poolFacts.granuleBytes) === before.heldBytes ? undefined : this.ledger.compute(ledger, g.poolFacts, ledgerGroupOf(vm.name, g), target, 'resize');
      g.requestedBytes = requestedBytes;
      if (mode === 'OPERATION') g.state = 'RESIZING';
      g.heldBytes = change?.heldBytes ?? before.heldBytes;
      g.version += 1;
      g.etag = etagOf(g.version);
      g.updateTime = new Date();
      const updateGroup = { id: g.uid, requestedBytes, state: g.state, heldBytes: g.heldBytes, updateTime: g.updateTime };
      const rollback: OperationRollback = { kind: 'RESIZE', requestedBytes: before.requestedBytes, heldBytes: before.heldBytes, groupState: before.state };
      const insertOperation = mode === 'OPERATION' ? this.newOperation(ctx, vm, g, 'RESIZE', rollback, requestId) : undefined;
      if (insertOperation) g.activeOperation = { name: insertOperation.id, kind: 'RESIZE', state: 'PENDING' };
      return {
        result: memoryGroupView(vm, groups, g, settings),
        writes: { updateGroup, ...(insertOperation ? { insertOperation } : {}), ...(change ? { ledger: { poolId: g.poolId, change } } : {}) },
      };
    });
  }

  /** At rest: gone at once, extents released. Running: an UNPLUG operation; extents stay until it completes. */
  async delete(ctx: CallContext, vmName: string, name: string, etag?: string, requestId?: string): Promise<MemoryGroupDeletion> {
    authorize(ctx.principal, 'vms.write');
    const resource = `vms/${vmName}/memoryGroups/${name}`;
    const spec = { method: 'DeleteMemoryGroup', resource, requestId, request: { vm: vmName, name, etag } };
    return this.mutations.runGroupChange<MemoryGroupDeletion>(ctx, spec, { vm: vmName, group: name }, async (locked) => {
      const { vm, groups, g, ledger } = this.lockedGroup(locked, vmName, name, etag);
      const mode = groupChangeMode(vm.name, vm.state);
      assertNoActiveGroupOperation(vm.name, g.name, g.activeOperation);
      const settings = settingsOf(vm);
      const view = () => memoryGroupView(vm, groups, g, settings);
      if (mode === 'DIRECT') {
        const change = g.heldBytes === 0 ? undefined : this.ledger.compute(ledger, g.poolFacts, ledgerGroupOf(vm.name, g), 0, 'release');
        g.desiredState = 'ABSENT';
        g.heldBytes = 0;
        return { result: { memoryGroup: view(), deleted: true }, writes: { deleteGroup: g.uid, ...(change ? { ledger: { poolId: g.poolId, change } } : {}) } };
      }
      const rollback: OperationRollback = { kind: 'UNPLUG', groupState: g.state };
      g.desiredState = 'ABSENT';
      g.state = 'UNPLUGGING';
      g.version += 1;
      g.etag = etagOf(g.version);
      g.updateTime = new Date();
      const insertOperation = this.newOperation(ctx, vm, g, 'UNPLUG', rollback, requestId);
      g.activeOperation = { name: insertOperation.id, kind: 'UNPLUG', state: 'PENDING' };
      return {
        result: { memoryGroup: view(), deleted: false },
        writes: { updateGroup: { id: g.uid, desiredState: 'ABSENT', state: 'UNPLUGGING', updateTime: g.updateTime }, insertOperation },
      };
    });
  }

  /** The named group under its VM's lock, its etag checked, with its pool's ledger (read under the pool's lock). */
  private lockedGroup(locked: LockedGroupChange, vmName: string, name: string, etag: string | undefined) {
    const { vm, groups, ledger } = locked;
    const g = groups.find((x) => x.name === name);
    if (!g) throw groupNotFound(vmName, name);
    checkEtag('memory group', `${vmName}/${name}`, etag, g.etag);
    if (!ledger) throw new DomainError('INTERNAL', 'POOL_LEDGER_NOT_LOCKED', `memory group ${vmName}/${name}: its pool was not locked`);
    return { vm, groups, g, ledger };
  }

  /** The operation a change to a running VM records (with its outbox message) when its batch commits. */
  private newOperation(
    ctx: CallContext,
    vm: VmRecord,
    g: MemoryGroupRecord,
    kind: OperationKind,
    rollback: OperationRollback,
    requestId: string | undefined,
  ): NonNullable<GroupChangeWrites['insertOperation']> {
    return {
      id: randomUUID(),
      topic: OPERATIONS_TOPIC,
      vmId: vm.uid,
      vm: vm.name,
      groupId: g.uid,
      groupName: g.name,
      kind,
      steps: plannedSteps(kind, g.kind),
      rollback,
      ...(requestId ? { requestId } : {}),
      principal: principalLabel(ctx),
    };
  }
}
