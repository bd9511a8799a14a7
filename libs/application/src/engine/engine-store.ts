import { holdingBytes, type GroupObservedState, type OperationError, type OperationStep } from '#domain';
import {
  Database,
  EngineRepository,
  OPERATION_CHANNEL,
  MemoryGroupRepository,
  VmRepository,
  deviceRows,
  type ClaimedOperation,
  type EndAndClaimResult,
  type MemoryGroupRecord,
  type OperationEnd,
  type Sql,
  type VmContext,
  type VmRecord,
  type VmRuntime,
  type WrittenDevices,
} from '#persistence';
import { ledgerGroupOf, PoolLedger } from '../pool-ledger';
import { EndAndClaimBatcher, type EndAndClaimBatcherOptions } from './end-and-claim-batcher';

export type { VmRuntime };

/** What one run of an operation starts from: the claimed operation, its VM, groups and host. */
export type EngineContext = Pick<ClaimedOperation, 'op' | 'cancelRequested' | 'contextKey'> & VmContext;

export interface GroupObservation {
  state: GroupObservedState;
  pluggedBytes: number;
  onlineBlocks: number;
  zones: Record<string, number>;
}

/**
 * The worker's reads and writes. Every write is one short statement or transaction: the
 * engine never holds a database lock while it talks to QEMU.
 */
export class EngineStore {
  private readonly groups = new MemoryGroupRepository();
  private readonly vms = new VmRepository();
  private readonly engine = new EngineRepository();
  private readonly ledger = new PoolLedger();
  /** The VM loops' end-and-claim statements, several VMs' to one statement when they meet. */
  readonly endAndClaims: EndAndClaimBatcher;

  constructor(
    readonly db: Database,
    opts: { endAndClaim?: EndAndClaimBatcherOptions } = {},
  ) {
    this.endAndClaims = new EndAndClaimBatcher((n) => db.dedicatedSql(n), opts.endAndClaim);
  }

  /**
   * The VM's oldest unfinished operation, marked RUNNING, with what its run reads (one round
   * trip, shared with other VMs' loops). The VM context comes back unless it still has
   * `knownContextKey`.
   */
  async claimHead(vmId: string, knownContextKey?: string): Promise<ClaimedOperation | undefined> {
    return (await this.endAndClaims.submit({ vmId, claimNext: true, knownContextKey })).next;
  }

  /** Where the VM's QEMU runs, as last recorded (the drift check attaches to it). */
  async runtime(vmId: string): Promise<VmRuntime | undefined> {
    const rows = await this.db.sql.query<{ qemu_pid: number | null; qmp_socket_path: string | null; qga_socket_path: string | null; runtime_dir: string | null }>(
      `select qemu_pid, qmp_socket_path, qga_socket_path, runtime_dir from vms where id = $1::uuid`,
      [vmId],
    );
    const r = rows[0];
    if (!r?.qemu_pid || !r.qmp_socket_path || !r.qga_socket_path || !r.runtime_dir) return undefined;
    return { pid: r.qemu_pid, qmpSocketPath: r.qmp_socket_path, qgaSocketPath: r.qga_socket_path, runtimeDir: r.runtime_dir };
  }

  /** The VM's oldest unfinished operation: the only one that may run now. */
  async headOperation(vmId: string): Promise<string | undefined> {
    const rows = await this.db.sql.query<{ id: string }>(
      `select id from operations where vm_id = $1::uuid and state in ('PENDING', 'RUNNING') order by seq limit 1`,
      [vmId],
    );
    return rows[0]?.id;
  }

  /** Records the steps done so far; true when a cancel was asked for meanwhile. */
  async recordSteps(operationId: string, steps: OperationStep[], progressPercent: number): Promise<boolean> {
    return this.engine.recordSteps(this.db.sql, operationId, steps, progressPercent);
  }

  async cancelRequested(operationId: string): Promise<boolean> {
    const rows = await this.db.sql.query<{ cancel_requested: boolean }>(`select cancel_requested from operations where id = $1::uuid`, [operationId]);
    return rows[0]?.cancel_requested ?? false;
  }

  /**
   * Writes an operation's end (with its group's observation and the VM's devices) and, with
   * `claimNext`, claims the VM's next operation, in one statement. `writtenDevices`: the
   * VM's devices as the caller's previous end wrote them, while it held the VM's lock
   * throughout (then only what changed is written); the result says what this end wrote.
   */
  async endAndClaim(vmId: string, end: OperationEnd, claimNext: boolean, knownContextKey?: string, writtenDevices?: WrittenDevices): Promise<EndAndClaimResult> {
    return this.endAndClaims.submit({ vmId, end, claimNext, knownContextKey, writtenDevices });
  }

  /** Back to PENDING for a retry after a transient failure. */
  async requeue(operationId: string, error: OperationError, steps: { steps: OperationStep[]; progressPercent: number }): Promise<void> {
    await this.db.sql.query(
      `update operations set state = 'PENDING', error = $2::jsonb, steps = $3::jsonb, progress_percent = $4, updated_at = now() where id = $1::uuid and state = 'RUNNING'`,
      [operationId, JSON.stringify(error), JSON.stringify(steps.steps), steps.progressPercent],
    );
    this.db.sql.notify(OPERATION_CHANNEL, operationId);
  }

  async setVmRunning(vmId: string, runtime: VmRuntime): Promise<void> {
    await this.db.sql.query(
      `update vms set state = 'RUNNING', qemu_pid = $2, qmp_socket_path = $3, qga_socket_path = $4, runtime_dir = $5, version = version + 1, updated_at = now() where id = $1::uuid`,
      [vmId, runtime.pid, runtime.qmpSocketPath, runtime.qgaSocketPath, runtime.runtimeDir],
    );
  }

  async setVmStopped(vmId: string, state: 'STOPPED' | 'FAILED'): Promise<void> {
    await this.db.sqlTransaction(async (sql) => {
      await sql.query(
        `with d as (delete from vm_memory_devices where vm_id = $1::uuid)
         update vms set state = $2::"VmState", qemu_pid = null, version = version + 1, updated_at = now() where id = $1::uuid`,
        [vmId, state],
      );
      await sql.query(
        `update memory_groups set state = 'PENDING', plugged_bytes = 0, online_blocks = 0, online_zones = '{}'::jsonb, updated_at = now() where vm_id = $1::uuid`,
        [vmId],
      );
    });
  }

  async setVmState(vmId: string, state: 'STARTING' | 'RUNNING' | 'STOPPING' | 'FAILED'): Promise<void> {
    await this.vms.setState(this.db.sql, vmId, state);
  }

  async setGroupObserved(groupId: string, o: GroupObservation): Promise<void> {
    await this.db.sql.query(
      `update memory_groups set state = $2::"GroupObservedState", plugged_bytes = $3, online_blocks = $4, online_zones = $5::jsonb, updated_at = now() where id = $1::uuid`,
      [groupId, o.state, o.pluggedBytes, o.onlineBlocks, JSON.stringify(o.zones)],
    );
  }

  /**
   * The group left the guest: its extents return to the pool, the group row goes, the VM's
   * devices are recorded and the operation ends SUCCEEDED, in one transaction.
   */
  async completeUnplug(vm: VmRecord, group: MemoryGroupRecord, operationId: string, devices: unknown[], steps: OperationStep[]): Promise<void> {
    await this.db.sqlTransaction(async (sql) => {
      const g = await this.lockedGroup(sql, vm, group);
      if (g) await this.ledger.deleteGroup(sql, vm.name, g);
      await sql.query(
        `with v as (update vms set observed_at = now() where id = $2::uuid returning memplane_put_vm_devices(id, true, $3::jsonb, null))
         update operations set state = 'SUCCEEDED', error = null, ended_at = now(), updated_at = now(), progress_percent = 100, steps = $4::jsonb
         where id = $1::uuid and state in ('PENDING', 'RUNNING')`,
        [operationId, vm.uid, JSON.stringify(deviceRows(devices)), JSON.stringify(steps)],
      );
      sql.notify(OPERATION_CHANNEL, operationId);
    });
  }

  /** A cancelled plug: what it made is gone from QEMU, and the group goes with its extents, as cancelling a pending plug does. */
  async dropGroup(vm: VmRecord, group: MemoryGroupRecord): Promise<void> {
    await this.db.sqlTransaction(async (sql) => {
      const g = await this.lockedGroup(sql, vm, group);
      if (g) await this.ledger.deleteGroup(sql, vm.name, g);
    });
  }

  /** The group as it is now, read under its VM's lock (as every change to a VM's groups is); undefined once it is gone. */
  private async lockedGroup(sql: Sql, vm: VmRecord, group: MemoryGroupRecord): Promise<MemoryGroupRecord | undefined> {
    const { groups } = await this.groups.lockVm(sql, vm.name);
    return groups.find((x) => x.uid === group.uid);
  }

  /**
   * A virtio-mem shrink that completed: the capacity it no longer needs goes back to the pool
   * (a running shrink keeps its extents until the guest has given the memory back).
   */
  async releaseShrunk(vm: VmRecord, group: MemoryGroupRecord, requestedBytes: number): Promise<void> {
    // Nothing to give back (a grow, reserved by the API before it ran): no transaction. The
    // group as this operation was claimed with is current here, since only its one active
    // operation changes what it holds (operations_one_active_per_group); the check under the
    // lock below stays for the shrink.
    if (group.requestedBytes === requestedBytes && group.heldBytes <= holdingBytes(requestedBytes, group.poolFacts.granuleBytes)) return;
    await this.db.sqlTransaction(async (sql) => {
      const g = await this.lockedGroup(sql, vm, group);
      if (!g || g.requestedBytes !== requestedBytes || g.heldBytes <= holdingBytes(requestedBytes, g.poolFacts.granuleBytes)) return;
      await this.ledger.set(sql, g.poolFacts, ledgerGroupOf(vm.name, g), requestedBytes, 'resize');
    });
  }

  /**
   * A failed or cancelled plug: nothing is left in QEMU, so the capacity goes back to the
   * pool and the group says FAILED (it stays visible with its reason until deleted).
   */
  async releaseFailedPlug(vm: VmRecord, group: MemoryGroupRecord): Promise<void> {
    await this.db.sqlTransaction(async (sql) => {
      const g = await this.lockedGroup(sql, vm, group);
      if (!g) return;
      if (g.heldBytes > 0) await this.ledger.set(sql, g.poolFacts, ledgerGroupOf(vm.name, g), 0, 'release');
      await sql.query(
        `update memory_groups set state = 'FAILED', held_bytes = 0, plugged_bytes = 0, online_blocks = 0, online_zones = '{}'::jsonb, updated_at = now() where id = $1::uuid`,
        [g.uid],
      );
    });
  }

  /**
   * The guest refused to give memory back: the group is PRESENT and PLUGGED again, holding
   * what it held. The VM row is locked first, as every change to a VM's groups does.
   */
  async restorePresent(vm: VmRecord, groupId: string): Promise<void> {
    await this.db.sqlTransaction(async (sql) => {
      await this.groups.lockVm(sql, vm.name);
      await sql.query(`update memory_groups set desired_state = 'PRESENT', state = 'PLUGGED', version = version + 1, updated_at = now() where id = $1::uuid`, [groupId]);
    });
  }

  /**
   * A virtio-mem resize that the guest could only partly follow: the request and the
   * ledger follow what is plugged, so capacity is neither lost nor double-counted.
   */
  async followPlugged(vm: VmRecord, group: MemoryGroupRecord, pluggedBytes: number): Promise<void> {
    await this.db.sqlTransaction(async (sql) => {
      const g = await this.lockedGroup(sql, vm, group);
      if (!g) return;
      await this.ledger.set(sql, g.poolFacts, ledgerGroupOf(vm.name, g), pluggedBytes, 'resize');
      await this.groups.setRequested(sql, g.uid, pluggedBytes, 'PLUGGED');
    });
  }

  /** Operations not finished whose job may be gone from Redis: the sweeper re-sends them. */
  async unfinishedOperations(olderThanMs: number): Promise<{ id: string; vmId: string; state: string }[]> {
    return this.db.sql.query<{ id: string; vmId: string; state: string }>(
      `select id, vm_id as "vmId", state::text as state from operations where state in ('PENDING', 'RUNNING') and updated_at < now() - ($1 || ' milliseconds')::interval order by seq limit 500`,
      [String(olderThanMs)],
    );
  }

  /**
   * Outbox rows not yet handed to the queue, with the VM of each operation (null when the
   * operation is gone: nothing to run, the row is only marked).
   */
  async pendingOutbox(limit: number): Promise<{ id: string; operationId: string; vmId: string | null }[]> {
    return this.db.sql.query<{ id: string; operationId: string; vmId: string | null }>(
      `select b.id::text as id, b.payload->>'operation' as "operationId", o.vm_id as "vmId"
       from outbox b left join operations o on o.id = (b.payload->>'operation')::uuid
       where b.dispatched_at is null order by b.id limit $1`,
      [limit],
    );
  }

  async markDispatched(ids: string[]): Promise<void> {
    if (ids.length) await this.db.sql.query(`update outbox set dispatched_at = now() where id = any($1::bigint[])`, [ids]);
  }

  sql(): Sql {
    return this.db.sql;
  }
}
