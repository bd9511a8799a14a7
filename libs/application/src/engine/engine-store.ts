import { holdingBytes, type GroupObservedState, type Host, type OperationError, type OperationStep, type Pool } from '#domain';
import {
  Database,
  HostRepository,
  MemoryGroupRepository,
  OperationRepository,
  PoolRepository,
  VmRepository,
  type MemoryGroupRecord,
  type OperationRecord,
  type Sql,
  type VmRecord,
} from '#persistence';
import { PoolLedger } from '../pool-ledger';

/** Where a running VM's QEMU can be found again, by any worker (Postgres is the source of truth). */
export interface VmRuntime {
  pid: number;
  qmpSocketPath: string;
  qgaSocketPath: string;
  runtimeDir: string;
}

export interface EngineContext {
  op: OperationRecord;
  vm: VmRecord;
  runtime?: VmRuntime;
  host: Host;
  pools: Pool[];
  groups: MemoryGroupRecord[];
}

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
  private readonly vms = new VmRepository();
  private readonly groups = new MemoryGroupRepository();
  private readonly operations = new OperationRepository();
  private readonly hosts = new HostRepository();
  private readonly pools = new PoolRepository();
  private readonly ledger = new PoolLedger();

  constructor(readonly db: Database) {}

  async load(operationId: string): Promise<EngineContext | undefined> {
    const sql = this.db.sql;
    const op = await this.operations.find(sql, operationId);
    if (!op) return undefined;
    const vm = await this.vms.getById(sql, op.vmId);
    const groups = await this.groups.listForVm(sql, vm.uid);
    const host = await this.hosts.get(this.db.prisma, vm.host);
    const poolNames = [...new Set(groups.map((g) => g.pool))];
    const pools = await Promise.all(poolNames.map((p) => this.pools.get(this.db.prisma, p)));
    const runtime = await this.runtime(vm.uid);
    return { op, vm, host, pools, groups, ...(runtime ? { runtime } : {}) };
  }

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

  async markRunning(op: OperationRecord): Promise<void> {
    await this.operations.setState(this.db.sql, op.name, 'RUNNING');
  }

  async recordSteps(operationId: string, steps: OperationStep[], progressPercent: number): Promise<void> {
    await this.db.sql.query(`update operations set steps = $2::jsonb, progress_percent = $3, updated_at = now() where id = $1::uuid`, [
      operationId,
      JSON.stringify(steps),
      progressPercent,
    ]);
  }

  async cancelRequested(operationId: string): Promise<boolean> {
    const rows = await this.db.sql.query<{ cancel_requested: boolean }>(`select cancel_requested from operations where id = $1::uuid`, [operationId]);
    return rows[0]?.cancel_requested ?? false;
  }

  async finish(operationId: string, state: 'SUCCEEDED' | 'FAILED' | 'CANCELLED', error?: OperationError): Promise<void> {
    await this.db.sql.query(
      `update operations set state = $2::"OperationState", error = $3::jsonb, ended_at = now(), updated_at = now(),
         progress_percent = case when $2 = 'SUCCEEDED' then 100 else progress_percent end
       where id = $1::uuid and state in ('PENDING', 'RUNNING')`,
      [operationId, state, error ? JSON.stringify(error) : null],
    );
  }

  /** Back to PENDING for a retry after a transient failure. */
  async requeue(operationId: string, error: OperationError): Promise<void> {
    await this.db.sql.query(`update operations set state = 'PENDING', error = $2::jsonb, updated_at = now() where id = $1::uuid and state = 'RUNNING'`, [
      operationId,
      JSON.stringify(error),
    ]);
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
        `update vms set state = $2::"VmState", qemu_pid = null, observed_devices = '[]'::jsonb, version = version + 1, updated_at = now() where id = $1::uuid`,
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

  async recordObservedDevices(vmId: string, devices: unknown[]): Promise<void> {
    await this.db.sql.query(`update vms set observed_devices = $2::jsonb, observed_at = now() where id = $1::uuid`, [vmId, JSON.stringify(devices)]);
  }

  async setGroupObserved(groupId: string, o: GroupObservation): Promise<void> {
    await this.db.sql.query(
      `update memory_groups set state = $2::"GroupObservedState", plugged_bytes = $3, online_blocks = $4, online_zones = $5::jsonb, updated_at = now() where id = $1::uuid`,
      [groupId, o.state, o.pluggedBytes, o.onlineBlocks, JSON.stringify(o.zones)],
    );
  }

  /**
   * The group left the guest (or, for a cancelled plug, never arrived): its extents return
   * to the pool and the group row goes, in one transaction.
   */
  async completeUnplug(vm: VmRecord, group: MemoryGroupRecord): Promise<void> {
    await this.db.sqlTransaction(async (sql) => {
      const { groups } = await this.groups.lockVm(sql, vm.name);
      const g = groups.find((x) => x.uid === group.uid);
      if (!g) return;
      if (g.heldBytes === 0) return this.groups.delete(sql, g.uid);
      const step = await this.ledger.plan(sql, g.poolFacts, { uid: g.uid, label: `${vm.name}/${g.name}`, heldBytes: g.heldBytes }, 0, 'release');
      await step.write({ deleteGroup: true });
    });
  }

  /**
   * A failed or cancelled plug: nothing is left in QEMU, so the capacity goes back to the
   * pool and the group says FAILED (it stays visible with its reason until deleted).
   */
  async releaseFailedPlug(vm: VmRecord, group: MemoryGroupRecord): Promise<void> {
    await this.db.sqlTransaction(async (sql) => {
      const { groups } = await this.groups.lockVm(sql, vm.name);
      const g = groups.find((x) => x.uid === group.uid);
      if (!g) return;
      if (g.heldBytes > 0) await this.ledger.set(sql, g.poolFacts, { uid: g.uid, label: `${vm.name}/${g.name}`, heldBytes: g.heldBytes }, 0, 'release');
      await sql.query(
        `update memory_groups set state = 'FAILED', held_bytes = 0, plugged_bytes = 0, online_blocks = 0, online_zones = '{}'::jsonb, updated_at = now() where id = $1::uuid`,
        [g.uid],
      );
    });
  }

  /** The guest refused to give memory back: the group is PRESENT and PLUGGED again, holding what it held. */
  async restorePresent(groupId: string): Promise<void> {
    await this.db.sql.query(
      `update memory_groups set desired_state = 'PRESENT', state = 'PLUGGED', version = version + 1, updated_at = now() where id = $1::uuid`,
      [groupId],
    );
  }

  /**
   * A virtio-mem shrink that completed: the capacity it no longer needs goes back to the pool
   * (a running shrink keeps its extents until the guest has given the memory back).
   */
  async releaseShrunk(vm: VmRecord, group: MemoryGroupRecord, requestedBytes: number): Promise<void> {
    await this.db.sqlTransaction(async (sql) => {
      const { groups } = await this.groups.lockVm(sql, vm.name);
      const g = groups.find((x) => x.uid === group.uid);
      if (!g || g.requestedBytes !== requestedBytes || g.heldBytes <= holdingBytes(requestedBytes, g.poolFacts.granuleBytes)) return;
      await this.ledger.set(sql, g.poolFacts, { uid: g.uid, label: `${vm.name}/${g.name}`, heldBytes: g.heldBytes }, requestedBytes, 'resize');
    });
  }

  /**
   * A virtio-mem resize that the guest could only partly follow: the request and the
   * ledger follow what is plugged, so capacity is neither lost nor double-counted.
   */
  async followPlugged(vm: VmRecord, group: MemoryGroupRecord, pluggedBytes: number): Promise<void> {
    await this.db.sqlTransaction(async (sql) => {
      const { groups } = await this.groups.lockVm(sql, vm.name);
      const g = groups.find((x) => x.uid === group.uid);
      if (!g) return;
      await this.ledger.set(sql, g.poolFacts, { uid: g.uid, label: `${vm.name}/${g.name}`, heldBytes: g.heldBytes }, pluggedBytes, 'resize');
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

  /** Outbox rows not yet handed to the queue. */
  async pendingOutbox(limit: number): Promise<{ id: string; payload: { operation: string; vm: string } }[]> {
    const rows = await this.operations.pendingMessages(this.db.sql, limit);
    return rows.map((r) => ({ id: r.id, payload: r.payload as unknown as { operation: string; vm: string } }));
  }

  async markDispatched(ids: string[]): Promise<void> {
    if (ids.length) await this.db.sql.query(`update outbox set dispatched_at = now() where id = any($1::bigint[])`, [ids]);
  }

  async vmIdOf(operationId: string): Promise<string | undefined> {
    const rows = await this.db.sql.query<{ vm_id: string }>(`select vm_id from operations where id = $1::uuid`, [operationId]);
    return rows[0]?.vm_id;
  }

  sql(): Sql {
    return this.db.sql;
  }
}
