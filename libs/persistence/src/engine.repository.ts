import type { Host, NodeKind, OperationStep } from '#domain';
import { GROUP_SELECT, groupRowToRecord, type GroupRow, type MemoryGroupRecord } from './memory-group.repository';
import { operationRowToRecord, type OperationRecord, type OpRow } from './operation.repository';
import type { Sql } from './sql';
import { VM_COLUMNS, vmRowToRecord, type VmRecord, type VmRow } from './vm.repository';

/** Where a running VM's QEMU can be found again, by any worker (Postgres is the source of truth). */
export interface VmRuntime {
  pid: number;
  qmpSocketPath: string;
  qgaSocketPath: string;
  runtimeDir: string;
}

/** Everything one run of the hotplug engine reads from Postgres: desired state, where QEMU is, the host's topology. */
export interface ClaimedOperation {
  op: OperationRecord;
  cancelRequested: boolean;
  vm: VmRecord;
  runtime?: VmRuntime;
  host: Pick<Host, 'name' | 'nodes' | 'performance' | 'distances'>;
  /**
   * The VM's groups, or undefined when their desired state is still what `groupsKey` names
   * (the caller's copy is current). The operation's own group is always read: `group`.
   */
  groups?: MemoryGroupRecord[];
  /** A digest of every desired-state field of the VM's groups (and their pools' placement). */
  groupsKey: string;
  group?: MemoryGroupRecord;
}

interface ClaimRow {
  op: (OpRow & { cancel_requested: boolean }) | null;
  vm: (VmRow & { runtime_dir: string | null }) | null;
  host: {
    name: string;
    nodes: { nodeId: number; cpus: number[]; memoryBytes: number; kind: string }[];
    performance: Host['performance'];
    distances: Host['distances'];
  } | null;
  groups: GroupRow[] | null;
  groups_key: string;
  group: GroupRow | null;
}

// One statement: take the VM's oldest unfinished operation, mark it RUNNING (an attempt),
// and read the VM, its groups (desired state) and its host with it. The reads see the
// snapshot the statement started with, which is all committed state (the claim itself is
// returned by the update). Every group is read only when the digest of the groups' desired
// state differs from the one the caller has ($2); the operation's own group always is.
const CLAIM_HEAD = `with head as (
    select id from operations where vm_id = $1::uuid and state in ('PENDING', 'RUNNING') order by seq limit 1),
  claimed as (
    update operations o set state = 'RUNNING', error = null, started_at = coalesce(o.started_at, now()), attempts = o.attempts + 1, updated_at = now()
    from head where o.id = head.id
    returning o.*),
  keyed as (
    select md5(coalesce(string_agg(concat_ws(',', g.id, g.name, g.kind, g.pool_id, p.name, p.host_node_id, p.memory_type, p.dax_device_path, g.size_bytes, g.max_size_bytes,
        g.block_size_bytes, g.requested_bytes, g.online_type, g.guest_node_id, g.desired_state, g.hotplugged, g.created_at), ';' order by g.created_at, g.id), '')) as k
    from memory_groups g join pools p on p.id = g.pool_id where g.vm_id = $1::uuid)
  select
    (select row_to_json(x) from (
      select c.id, c.seq, c.vm_id, v.name as vm, c.group_id, c.group_name, c.kind::text as kind, c.state::text as state, c.steps, c.progress_percent,
        c.attempts, c.error, c.rollback, c.request_id, c.principal, c.created_at, c.updated_at, c.started_at, c.ended_at, c.cancel_requested
      from claimed c join vms v on v.id = c.vm_id) x) as op,
    (select row_to_json(x) from (select ${VM_COLUMNS}, v.runtime_dir from vms v join hosts h on h.id = v.host_id where v.id = $1::uuid) x) as vm,
    (select json_build_object(
        'name', h.name,
        'nodes', (select coalesce(json_agg(json_build_object('nodeId', n.node_id, 'cpus', n.cpus, 'memoryBytes', n.memory_bytes, 'kind', n.kind) order by n.node_id), '[]'::json)
                  from host_nodes n where n.host_id = h.id),
        'performance', (select coalesce(json_agg(json_build_object('cpuNodeId', p.cpu_node_id, 'memoryNodeId', p.memory_node_id, 'readLatencyNs', p.read_latency_ns,
                          'writeLatencyNs', p.write_latency_ns, 'readBandwidthMBps', p.read_bandwidth_mbps, 'writeBandwidthMBps', p.write_bandwidth_mbps)
                          order by p.cpu_node_id, p.memory_node_id), '[]'::json)
                  from host_performance p where p.host_id = h.id),
        'distances', (select coalesce(json_agg(json_build_object('fromNodeId', d.from_node_id, 'toNodeId', d.to_node_id, 'distance', d.distance)
                          order by d.from_node_id, d.to_node_id), '[]'::json)
                  from host_distances d where d.host_id = h.id))
      from vms v join hosts h on h.id = v.host_id where v.id = $1::uuid) as host,
    (select k from keyed) as groups_key,
    case when (select k from keyed) is distinct from $2::text then
      (select coalesce(json_agg(row_to_json(x) order by x.created_at, x.id), '[]'::json) from (${GROUP_SELECT} where g.vm_id = $1::uuid) x) end as groups,
    (select row_to_json(x) from (${GROUP_SELECT} where g.id = (select group_id from claimed)) x) as group`;

/** The hotplug engine's reads and writes that must cost one round trip each. */
export class EngineRepository {
  /**
   * Claims the VM's oldest unfinished operation (the only one that may run: operations on one
   * VM run in order) and returns it with the VM, its groups and its host; undefined when the
   * VM has nothing left to do. The caller holds the VM's advisory lock.
   */
  async claimHead(sql: Sql, vmId: string, knownGroupsKey?: string): Promise<ClaimedOperation | undefined> {
    const rows = await sql.query<ClaimRow>(CLAIM_HEAD, [vmId, knownGroupsKey ?? null]);
    const r = rows[0];
    if (!r?.op || !r.vm || !r.host) return undefined;
    const vm = vmRowToRecord(r.vm);
    const runtime =
      r.vm.qemu_pid && r.vm.qmp_socket_path && r.vm.qga_socket_path && r.vm.runtime_dir
        ? { pid: r.vm.qemu_pid, qmpSocketPath: r.vm.qmp_socket_path, qgaSocketPath: r.vm.qga_socket_path, runtimeDir: r.vm.runtime_dir }
        : undefined;
    return {
      op: operationRowToRecord(r.op),
      cancelRequested: r.op.cancel_requested,
      vm,
      ...(runtime ? { runtime } : {}),
      host: {
        name: r.host.name,
        nodes: r.host.nodes.map((n) => ({ nodeId: n.nodeId, cpus: n.cpus, memoryBytes: Number(n.memoryBytes), kind: n.kind as NodeKind })),
        performance: r.host.performance,
        distances: r.host.distances,
      },
      ...(r.groups ? { groups: r.groups.map(groupRowToRecord) } : {}),
      groupsKey: r.groups_key,
      ...(r.group ? { group: groupRowToRecord(r.group) } : {}),
    };
  }

  /** Records the steps done so far and answers whether a cancel was asked for meanwhile. */
  async recordSteps(sql: Sql, operationId: string, steps: readonly OperationStep[], progressPercent: number): Promise<boolean> {
    const rows = await sql.query<{ cancel_requested: boolean }>(
      `update operations set steps = $2::jsonb, progress_percent = $3, updated_at = now() where id = $1::uuid returning cancel_requested`,
      [operationId, JSON.stringify(steps), progressPercent],
    );
    return rows[0]?.cancel_requested ?? false;
  }
}
