import type { MemoryDriftCondition } from '#domain';
import type { Sql } from './sql';
import { deviceRows } from './vm-devices';

/**
 * The sweeper's drift reports (vms.memory_drift, memory_drift_checked_at): output only,
 * written without touching the VM's version or etag, and only while no operation is
 * changing the VM.
 */
export class VmDriftRepository {
  /**
   * RUNNING VMs with a QEMU on record, no PENDING or RUNNING operation, none that ended in
   * the last `quietForMs` (a VM being changed is left alone until it is quiet: a check holds
   * the VM's operation lock while it observes the guest, and the next operation would wait
   * for it) and no check in the last `checkedWithinMs` (several workers then share the
   * checks), oldest check first.
   */
  async idleRunningVms(sql: Sql, opts: { limit: number; checkedWithinMs: number; quietForMs?: number }): Promise<{ uid: string; name: string }[]> {
    return sql.query<{ uid: string; name: string }>(
      `select v.id as uid, v.name from vms v
       where v.state = 'RUNNING' and v.qemu_pid is not null
         and (v.memory_drift_checked_at is null or v.memory_drift_checked_at < now() - ($2 || ' milliseconds')::interval)
         and not exists (select 1 from operations o where o.vm_id = v.id
                           and (o.state in ('PENDING', 'RUNNING') or o.ended_at > now() - ($3 || ' milliseconds')::interval))
       order by v.memory_drift_checked_at nulls first, v.name limit $1`,
      [opts.limit, String(opts.checkedWithinMs), String(opts.quietForMs ?? 0)],
    );
  }

  /**
   * Records one check (`observedAt`: when its observation began, so a check stamped after a
   * change has seen it) and what QEMU listed, unless the VM stopped running or an operation
   * was recorded meanwhile (the desired state the check compared with may be gone): undefined then.
   */
  async record(sql: Sql, vmId: string, conditions: readonly MemoryDriftCondition[], observedDevices: readonly unknown[], observedAt: Date): Promise<Date | undefined> {
    const rows = await sql.query<{ checked_at: Date }>(
      `update vms set memory_drift = $2::jsonb, memory_drift_checked_at = $4::timestamptz, observed_at = $4::timestamptz
       where id = $1::uuid and state = 'RUNNING'
         and not exists (select 1 from operations o where o.vm_id = $1::uuid and o.state in ('PENDING', 'RUNNING'))
       returning memory_drift_checked_at as checked_at, memplane_put_vm_devices(id, true, $3::jsonb, null) as devices_written`,
      [vmId, JSON.stringify(conditions), JSON.stringify(deviceRows(observedDevices)), observedAt],
    );
    return rows[0]?.checked_at;
  }

  /** Drift is about running VMs: a VM that stopped (or failed) has none to show. */
  async clearNotRunning(sql: Sql): Promise<number> {
    const rows = await sql.query<{ id: string }>(
      `update vms set memory_drift = null, memory_drift_checked_at = null where state <> 'RUNNING' and memory_drift_checked_at is not null returning id`,
    );
    return rows.length;
  }
}
