import type { GroupObservedState, Host, NodeKind, OperationError, OperationStep } from '#domain';
import { GROUP_SELECT, groupRowToRecord, type GroupRow, type MemoryGroupRecord } from './memory-group.repository';
import { OPERATION_CHANNEL } from './notifications';
import { operationRowToRecord, type OperationRecord, type OpRow } from './operation.repository';
import type { Sql } from './sql';
import { VM_SPEC_COLUMNS, vmRowToRecord, type VmRecord, type VmRow } from './vm.repository';

/** Where a running VM's QEMU can be found again, by any worker (Postgres is the source of truth). */
export interface VmRuntime {
  pid: number;
  qmpSocketPath: string;
  qgaSocketPath: string;
  runtimeDir: string;
}

/** How an operation ended, and what is recorded with it. */
export interface OperationEnd {
  operationId: string;
  state: 'SUCCEEDED' | 'FAILED' | 'CANCELLED';
  error?: OperationError;
  steps?: { steps: OperationStep[]; progressPercent: number };
  /** The group's observation. */
  group?: { id: string; observation: { state: GroupObservedState; pluggedBytes: number; onlineBlocks: number; zones: Record<string, number> } };
  /** The VM's memory devices as QEMU last showed them. */
  devices?: unknown[];
}

/** The VM, where its QEMU is, its host's topology and its groups: what a run reads besides its operation. */
export interface VmContext {
  vm: VmRecord;
  runtime?: VmRuntime;
  host: Pick<Host, 'name' | 'nodes' | 'performance' | 'distances'>;
  groups: MemoryGroupRecord[];
}

/** A claimed operation and what its run reads from Postgres. */
export interface ClaimedOperation {
  op: OperationRecord;
  cancelRequested: boolean;
  /**
   * Names the VM's version, its host's and its groups' generation: while it stays the same,
   * so does the VM context.
   */
  contextKey: string;
  /** Undefined when `contextKey` is the one the caller passed (its copy is current). */
  context?: VmContext;
  /** The operation's own group, always read. */
  group?: MemoryGroupRecord;
}

interface ClaimRow {
  ended: number;
  claimed_from: string | null;
  op: (OpRow & { cancel_requested: boolean }) | null;
  vm: (VmRow & { runtime_dir: string | null }) | null;
  host: {
    name: string;
    nodes: { nodeId: number; cpus: number[]; memoryBytes: number; kind: string }[];
    performance: Host['performance'];
    distances: Host['distances'];
  } | null;
  groups: GroupRow[] | null;
  context_key: string | null;
  group: GroupRow | null;
}

// The VM as the engine needs it: no observed devices (the engine observes them itself).
const VM_COLUMNS = `${VM_SPEC_COLUMNS}, v.runtime_dir`;

// One statement ends an operation and/or claims the VM's next one, so a worker running a
// VM's operations back to back needs one round trip between two of them:
// - the end ($3 operation, $4 state ...): the operation's state, error and final steps, its
//   group's observation and the VM's devices, written together;
// - the claim ($13): the VM's oldest unfinished operation other than the one ending, marked
//   RUNNING (an attempt), returned with the VM, its groups (desired state) and its host. The
//   reads see the snapshot the statement started with, which is all committed state (the
//   claim itself is returned by the update). Every group is read only when the digest of the
//   groups' desired state differs from the one the caller has ($2); the operation's own group
//   always is.
const END_AND_CLAIM = `with
  end_group as (
    update memory_groups set state = $6::"GroupObservedState", plugged_bytes = $7, online_blocks = $8, online_zones = $9::jsonb, updated_at = now()
    where id = $5::uuid),
  end_vm as (
    update vms set observed_devices = $11::jsonb, observed_at = now() where id = $10::uuid),
  ended as (
    update operations set state = $4::"OperationState", error = $12::jsonb, ended_at = now(), updated_at = now(),
      steps = coalesce($14::jsonb, steps),
      progress_percent = case when $4 = 'SUCCEEDED' then 100 else coalesce($15::int, progress_percent) end
    where id = $3::uuid and state in ('PENDING', 'RUNNING')
    returning id),
  head as (
    select id, state from operations where $13::boolean and vm_id = $1::uuid and state in ('PENDING', 'RUNNING') and id is distinct from $3::uuid order by seq limit 1),
  claimed as (
    update operations o set state = 'RUNNING', error = null, started_at = coalesce(o.started_at, now()), attempts = o.attempts + 1, updated_at = now()
    from head where o.id = head.id
    returning o.*),
  context as (
    select v.version || ':' || h.version || ':' || v.groups_generation as k
    from vms v join hosts h on h.id = v.host_id where v.id = $1::uuid and exists (select 1 from claimed)),
  changed as (
    select 1 from context where k is distinct from $2::text)
  select
    (select count(*) from ended)::int as ended,
    (select h.state::text from head h join claimed c on c.id = h.id) as claimed_from,
    (select row_to_json(x) from (
      select c.id, c.seq, c.vm_id, v.name as vm, c.group_id, c.group_name, c.kind::text as kind, c.state::text as state, c.steps, c.progress_percent,
        c.attempts, c.error, c.rollback, c.request_id, c.principal, c.created_at, c.updated_at, c.started_at, c.ended_at, c.cancel_requested
      from claimed c join vms v on v.id = c.vm_id) x) as op,
    (select k from context) as context_key,
    (select row_to_json(x) from (select ${VM_COLUMNS} from vms v join hosts h on h.id = v.host_id where v.id = $1::uuid and exists (select 1 from changed)) x) as vm,
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
      from vms v join hosts h on h.id = v.host_id where v.id = $1::uuid and exists (select 1 from changed)) as host,
    case when exists (select 1 from changed) then
      (select coalesce(json_agg(row_to_json(x) order by x.created_at, x.id), '[]'::json) from (${GROUP_SELECT} where g.vm_id = $1::uuid) x) end as groups,
    (select row_to_json(x) from (${GROUP_SELECT} where g.id = (select group_id from claimed)) x) as group`;

/** The hotplug engine's reads and writes that must cost one round trip each. */
export class EngineRepository {
  /**
   * Claims the VM's oldest unfinished operation (the only one that may run: operations on one
   * VM run in order) and returns it with the VM, its groups and its host; undefined when the
   * VM has nothing left to do. The caller holds the VM's advisory lock.
   */
  async claimHead(sql: Sql, vmId: string, knownContextKey?: string): Promise<ClaimedOperation | undefined> {
    return (await this.endAndClaim(sql, vmId, undefined, { claimNext: true, knownContextKey })).next;
  }

  /**
   * Ends an operation (with its group's observation and the VM's devices) and, with
   * `claimNext`, claims the VM's next one in the same statement.
   */
  async endAndClaim(
    sql: Sql,
    vmId: string,
    end: OperationEnd | undefined,
    opts: { claimNext: boolean; knownContextKey?: string | undefined },
  ): Promise<{ ended: boolean; next?: ClaimedOperation }> {
    const g = end?.group;
    const rows = await sql.query<ClaimRow>(END_AND_CLAIM, [
      vmId,
      opts.knownContextKey ?? null,
      end?.operationId ?? null,
      end?.state ?? 'SUCCEEDED',
      g?.id ?? null,
      g?.observation.state ?? 'PENDING',
      g?.observation.pluggedBytes ?? 0,
      g?.observation.onlineBlocks ?? 0,
      JSON.stringify(g?.observation.zones ?? {}),
      end?.devices ? vmId : null,
      JSON.stringify(end?.devices ?? []),
      end?.error ? JSON.stringify(end.error) : null,
      opts.claimNext,
      end?.steps ? JSON.stringify(end.steps.steps) : null,
      end?.steps?.progressPercent ?? null,
    ]);
    const r = rows[0];
    const ended = (r?.ended ?? 0) > 0;
    // Watchers hear of both state changes (this statement has committed).
    if (ended && end) sql.notify(OPERATION_CHANNEL, end.operationId);
    if (r?.op && r.claimed_from !== 'RUNNING') sql.notify(OPERATION_CHANNEL, r.op.id);
    if (!r?.op || !r.context_key) return { ended };
    let context: VmContext | undefined;
    if (r.vm && r.host && r.groups) {
      const runtime =
        r.vm.qemu_pid && r.vm.qmp_socket_path && r.vm.qga_socket_path && r.vm.runtime_dir
          ? { pid: r.vm.qemu_pid, qmpSocketPath: r.vm.qmp_socket_path, qgaSocketPath: r.vm.qga_socket_path, runtimeDir: r.vm.runtime_dir }
          : undefined;
      context = {
        vm: vmRowToRecord(r.vm),
        ...(runtime ? { runtime } : {}),
        host: {
          name: r.host.name,
          nodes: r.host.nodes.map((n) => ({ nodeId: n.nodeId, cpus: n.cpus, memoryBytes: Number(n.memoryBytes), kind: n.kind as NodeKind })),
          performance: r.host.performance,
          distances: r.host.distances,
        },
        groups: r.groups.map(groupRowToRecord),
      };
    }
    return {
      ended,
      next: {
        op: operationRowToRecord(r.op),
        cancelRequested: r.op.cancel_requested,
        contextKey: r.context_key,
        ...(context ? { context } : {}),
        ...(r.group ? { group: groupRowToRecord(r.group) } : {}),
      },
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
