import {
  assertVmDeletable,
  authorize,
  buildVmMemoryReport,
  checkEtag,
  checkVmHostNodes,
  DomainError,
  OPERATIONS_TOPIC,
  plannedSteps,
  startTransition,
  stopTransition,
  validateVmSpec,
  type Operation,
  type Vm,
  type VmMemoryReport,
  type VmSpec,
  type VmState,
} from '#domain';
import { MemoryGroupRepository, OperationRepository, VmRepository, type MemoryGroupRecord, type Sql, type VmRecord } from '#persistence';
import type { CallContext } from './context';
import { principalLabel } from './memory-group.service';
import type { Mutations } from './mutations';
import { operationView } from './operation.service';
import { pageToken, parsePageRequest, type Page } from './pagination';
import { PoolLedger } from './pool-ledger';

export interface VmView extends Vm {
  memoryReport: VmMemoryReport;
}

export function vmView(vm: VmRecord, groups: readonly MemoryGroupRecord[]): VmView {
  const { hostId: _h, hostState: _s, version: _v, ...rest } = vm;
  return { ...rest, memoryReport: buildVmMemoryReport(vm, groups) };
}

export class VmService {
  private readonly vms = new VmRepository();
  private readonly groups = new MemoryGroupRepository();
  private readonly operations = new OperationRepository();
  private readonly ledger = new PoolLedger();

  constructor(private readonly mutations: Mutations) {}

  async create(ctx: CallContext, spec: VmSpec, requestId?: string): Promise<VmView> {
    authorize(ctx.principal, 'vms.write');
    validateVmSpec(spec);
    return this.mutations.runSql(ctx, { method: 'CreateVm', resource: `vms/${spec.name}`, requestId, request: spec }, async (sql) => {
      const host = await this.vms.hostFor(sql, spec.host);
      if (!host) throw DomainError.invalid('VM_HOST_NOT_FOUND', [{ field: 'host', description: `host ${spec.host} does not exist` }], { host: spec.host });
      checkVmHostNodes(spec, host);
      return vmView(await this.vms.create(sql, host.uid, spec), []);
    });
  }

  async get(ctx: CallContext, name: string): Promise<VmView> {
    authorize(ctx.principal, 'read');
    const db = this.mutations.db.sql;
    const vm = await this.vms.get(db, name);
    return vmView(vm, await this.groups.listForVm(db, vm.uid));
  }

  async list(ctx: CallContext, req: { pageSize?: number; pageToken?: string; host?: string; state?: VmState }): Promise<Page<VmView>> {
    authorize(ctx.principal, 'read');
    const filterKey = `vms|${req.host ?? ''}|${req.state ?? ''}`;
    const page = parsePageRequest(req.pageSize, req.pageToken, filterKey);
    const db = this.mutations.db.sql;
    const { items, total } = await this.vms.list(db, {
      limit: page.pageSize + 1,
      ...(page.after ? { after: page.after } : {}),
      ...(req.host ? { host: req.host } : {}),
      ...(req.state ? { state: req.state } : {}),
    });
    const shown = items.slice(0, page.pageSize);
    const views = await Promise.all(shown.map(async (vm) => vmView(vm, await this.groups.listForVm(db, vm.uid))));
    return { items: views, totalSize: total, nextPageToken: items.length > page.pageSize ? pageToken(shown[shown.length - 1]!.name, filterKey) : '' };
  }

  /** A VM at rest goes with its groups; their extents go back to their pools. */
  async delete(ctx: CallContext, name: string, etag?: string, requestId?: string): Promise<void> {
    authorize(ctx.principal, 'vms.write');
    await this.mutations.runSql(ctx, { method: 'DeleteVm', resource: `vms/${name}`, requestId, request: { name, etag } }, async (sql) => {
      const { vm, groups } = await this.groups.lockVm(sql, name);
      checkEtag('vm', name, etag, vm.etag);
      assertVmDeletable(vm.name, vm.state);
      const busy = groups.find((g) => g.activeOperation);
      if (busy?.activeOperation) {
        throw DomainError.precondition(
          'VM_HAS_ACTIVE_OPERATIONS',
          `vm ${name}: group ${busy.name} has ${busy.activeOperation.kind} operation ${busy.activeOperation.name} ${busy.activeOperation.state}; cancel it first`,
          { operation: busy.activeOperation.name },
        );
      }
      // Pools in one order, so two deletions never wait on each other's pools.
      for (const g of [...groups].sort((a, b) => (a.poolId < b.poolId ? -1 : a.poolId > b.poolId ? 1 : 0))) {
        await this.ledger.deleteGroup(sql, vm.name, g);
      }
      await this.vms.delete(sql, vm.uid);
      return null;
    });
  }

  /** :start (AIP-216): DEFINED/STOPPED/FAILED → STARTING, with a START operation that launches every PRESENT group cold-plugged. */
  async start(ctx: CallContext, name: string, etag?: string, requestId?: string): Promise<Operation> {
    authorize(ctx.principal, 'vms.write');
    return this.mutations.runSql(ctx, { method: 'StartVm', resource: `vms/${name}`, requestId, request: { name, etag } }, async (sql) => {
      const vm = await this.vms.lock(sql, name);
      checkEtag('vm', name, etag, vm.etag);
      const next = startTransition(vm.name, vm.state, vm.hostState, vm.host);
      await this.groups.clearHotplugged(sql, vm.uid);
      return this.transition(sql, ctx, vm, next, 'START', requestId);
    });
  }

  /** :stop: RUNNING → STOPPING, with a STOP operation. */
  async stop(ctx: CallContext, name: string, etag?: string, requestId?: string): Promise<Operation> {
    authorize(ctx.principal, 'vms.write');
    return this.mutations.runSql(ctx, { method: 'StopVm', resource: `vms/${name}`, requestId, request: { name, etag } }, async (sql) => {
      const vm = await this.vms.lock(sql, name);
      checkEtag('vm', name, etag, vm.etag);
      return this.transition(sql, ctx, vm, stopTransition(vm.name, vm.state), 'STOP', requestId);
    });
  }

  private async transition(sql: Sql, ctx: CallContext, vm: VmRecord, next: VmState, kind: 'START' | 'STOP', requestId: string | undefined): Promise<Operation> {
    await this.vms.setState(sql, vm.uid, next);
    const op = await this.operations.create(
      sql,
      {
        vmId: vm.uid,
        vm: vm.name,
        kind,
        steps: plannedSteps(kind),
        rollback: { kind, vmState: vm.state },
        ...(requestId ? { requestId } : {}),
        principal: principalLabel(ctx),
      },
      OPERATIONS_TOPIC,
    );
    return operationView(op);
  }
}
