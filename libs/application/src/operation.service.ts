import { authorize, DomainError, nextOperationState, type Operation, type OperationState } from '#domain';
import { MemoryGroupRepository, OperationRepository, VmRepository, type OperationRecord, type Sql, type VmRecord } from '#persistence';
import type { CallContext } from './context';
import type { Mutations } from './mutations';
import { pageToken, parsePageRequest, type Page } from './pagination';
import { ledgerGroupOf, PoolLedger } from './pool-ledger';

export function operationView(op: OperationRecord): Operation {
  const { vmId: _vm, groupId: _g, rollback: _r, seq: _s, ...view } = op;
  return view;
}

export class OperationService {
  private readonly vms = new VmRepository();
  private readonly groups = new MemoryGroupRepository();
  private readonly operations = new OperationRepository();
  private readonly ledger = new PoolLedger();

  constructor(private readonly mutations: Mutations) {}

  async get(ctx: CallContext, name: string): Promise<Operation> {
    authorize(ctx.principal, 'read');
    return operationView(await this.operations.get(this.mutations.db.sql, name));
  }

  /** Newest first, optionally of one VM and/or in one state. */
  async list(ctx: CallContext, req: { pageSize?: number; pageToken?: string; vm?: string; state?: OperationState }): Promise<Page<Operation>> {
    authorize(ctx.principal, 'read');
    const filterKey = `operations|${req.vm ?? ''}|${req.state ?? ''}`;
    const page = parsePageRequest(req.pageSize, req.pageToken, filterKey);
    const { items, total } = await this.operations.list(this.mutations.db.sql, {
      limit: page.pageSize + 1,
      ...(page.after ? { after: page.after } : {}),
      ...(req.vm ? { vm: req.vm } : {}),
      ...(req.state ? { state: req.state } : {}),
    });
    const shown = items.slice(0, page.pageSize);
    return { items: shown.map(operationView), totalSize: total, nextPageToken: items.length > page.pageSize ? pageToken(shown[shown.length - 1]!.seq, filterKey) : '' };
  }

  /**
   * Cancels a PENDING operation and puts back what it was to change: the VM's
   * state (START/STOP), or the group (PLUG: the group goes and its extents
   * return to the pool; RESIZE: the requested size and holding go back;
   * UNPLUG: the group is PRESENT again). Cancelling a cancelled one is a no-op.
   */
  async cancel(ctx: CallContext, name: string, requestId?: string): Promise<Operation> {
    authorize(ctx.principal, 'operations.write');
    return this.mutations.runSql(ctx, { method: 'CancelOperation', resource: `operations/${name}`, requestId, request: { name } }, async (sql) => {
      const found = await this.operations.get(sql, name);
      // Lock order as everywhere: the VM, then what hangs off it.
      const vm = await this.vms.lockById(sql, found.vmId);
      const op = await this.operations.lock(sql, name);
      if (op.state === 'CANCELLED') return operationView(op);
      if (op.state === 'RUNNING' && (op.kind === 'PLUG' || op.kind === 'UNPLUG')) {
        // A worker holds it: ask it to stop. It compensates (a plug removes what it made and
        // returns the capacity; an unplug puts offlined blocks back) and ends it CANCELLED.
        await sql.query(`update operations set cancel_requested = true, updated_at = now() where id = $1::uuid`, [op.name]);
        return operationView(await this.operations.get(sql, name));
      }
      if (op.state === 'RUNNING') {
        throw DomainError.precondition(
          'OPERATION_NOT_CANCELLABLE',
          `operation ${op.name} is a RUNNING ${op.kind}: only PENDING operations, and running PLUG or UNPLUG operations, can be cancelled` +
            (op.kind === 'RESIZE' ? '; resize the group again instead' : op.kind === 'START' ? '; stop the VM instead' : ''),
          { operation: op.name, state: op.state, kind: op.kind },
        );
      }
      nextOperationState(op.name, op.state, 'CANCEL');
      await this.rollBack(sql, vm, op);
      await this.operations.setState(sql, op.name, 'CANCELLED');
      return operationView(await this.operations.get(sql, name));
    });
  }

  private async rollBack(sql: Sql, vm: VmRecord, op: OperationRecord): Promise<void> {
    const r = op.rollback;
    if (r.kind === 'START') {
      // Group changes made while the VM was STARTING are queued behind the launch;
      // without it they would be left waiting for a guest that never comes.
      const queued = (await this.groups.listForVm(sql, vm.uid)).filter((g) => g.activeOperation);
      if (queued.length > 0) {
        const names = queued.map((g) => `${g.activeOperation!.kind} ${g.name} (${g.activeOperation!.name})`).join(', ');
        throw DomainError.precondition('OPERATION_HAS_DEPENDENTS', `operation ${op.name} launches vm ${vm.name}, and ${names} are queued behind it; cancel them first`, {
          operation: op.name,
          dependents: queued.map((g) => g.activeOperation!.name).join(','),
        });
      }
    }
    if (r.kind === 'START' || r.kind === 'STOP') {
      const transient = r.kind === 'START' ? 'STARTING' : 'STOPPING';
      if (vm.state === transient) await this.vms.setState(sql, vm.uid, r.vmState);
      return;
    }
    const groups = await this.groups.listForVm(sql, vm.uid);
    const g = groups.find((x) => x.uid === op.groupId);
    if (!g) throw new DomainError('INTERNAL', 'OPERATION_GROUP_MISSING', `operation ${op.name} is PENDING but its group ${op.memoryGroup ?? '?'} is gone`);
    switch (r.kind) {
      case 'PLUG':
        // The group goes, and with it (in the same statement) its extents.
        await this.ledger.deleteGroup(sql, vm.name, g);
        return;
      case 'UNPLUG':
        await this.groups.setDesired(sql, g.uid, 'PRESENT', r.groupState);
        return;
      case 'RESIZE':
        if (g.heldBytes !== r.heldBytes) await this.ledger.set(sql, g.poolFacts, ledgerGroupOf(vm.name, g), r.heldBytes, 'resize');
        await this.groups.setRequested(sql, g.uid, r.requestedBytes, r.groupState);
        return;
    }
  }
}
