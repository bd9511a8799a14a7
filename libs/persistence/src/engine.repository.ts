import type { GroupObservedState, Host, NodeKind, OperationError, OperationStep } from '#domain';
import { GROUP_SELECT, groupRowToRecord, type GroupRow, type MemoryGroupRecord } from './memory-group.repository';
import { OPERATION_CHANNEL } from './notifications';
import { operationRowToRecord, type OperationRecord, type OpRow } from './operation.repository';
import type { Sql } from './sql';
import { deviceWrite, type WrittenDevices } from './vm-devices';
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
  /** The VM's memory devices as QEMU last showed them (vm_memory_devices). */
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
  devices_written: number;
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

// One statement ends operations and/or claims their VMs' next ones, for several VMs at once,
// so a worker running VMs' operations back to back needs one round trip between two of
// them, and concurrent VM loops share it (EndAndClaimBatcher): one statement, one commit.
// $1 is a JSON array of items, one per VM (never two for one VM), each with its `n`:
// - the end (op_id, op_state ...): the operation's state, error and final steps, its
//   group's observation and the VM's devices, written together (the devices as the
//   changes from what the caller knows it wrote before, or whole: memplane_put_vm_devices);
// - the claim (claim_next): the VM's oldest unfinished operation other than the one ending,
//   marked RUNNING (an attempt), returned with the VM, its groups (desired state) and its
//   host. The reads see the snapshot the statement started with, which is all committed
//   state (the claim itself is returned by the update). Every group is read only when the
//   digest of the groups' desired state differs from the one the caller has (known_key);
//   the operation's own group always is.
// One row per item, in the order of `n`.
export const END_AND_CLAIM = `with
  input as (select * from memplane_engine_items($1::jsonb)),
  end_group as (
    update memory_groups g set state = i.group_state::"GroupObservedState", plugged_bytes = i.plugged_bytes, online_blocks = i.online_blocks,
      online_zones = i.online_zones, updated_at = now()
    from input i where g.id = i.group_id),
  end_vm as (
    update vms v set observed_at = now() from input i where v.id = i.vm_id and i.devices_put is not null),
  end_devices as (
    select i.n, memplane_put_vm_devices(i.vm_id, i.devices_full, i.devices_put, i.devices_drop) as written from input i where i.devices_put is not null),
  ended as (
    update operations o set state = i.op_state::"OperationState", error = i.error, ended_at = now(), updated_at = now(),
      steps = coalesce(i.steps, o.steps),
      progress_percent = case when i.op_state = 'SUCCEEDED' then 100 else coalesce(i.progress_percent, o.progress_percent) end
    -- state compared as text: the row is found by its key, never through an index of states
    -- (planned once per connection, the plan must not depend on how many are active then)
    from input i where o.id = i.op_id and o.state::text in ('PENDING', 'RUNNING')
    returning o.id),
  head as (
    select i.n, h.id, h.state from input i cross join lateral (
      select id, state from operations where vm_id = i.vm_id and state in ('PENDING', 'RUNNING') and id is distinct from i.op_id order by seq limit 1) h
    where i.claim_next),
  claimed as (
    update operations o set state = 'RUNNING', error = null, started_at = coalesce(o.started_at, now()), attempts = o.attempts + 1, updated_at = now()
    from head where o.id = head.id
    returning head.n, head.state::text as claimed_from, o.*),
  context as (
    select c.n, k.k, k.k is distinct from i.known_key as changed
    from claimed c join input i on i.n = c.n join vms v on v.id = c.vm_id join hosts h on h.id = v.host_id
    cross join lateral (select v.version || ':' || h.version || ':' || v.groups_generation as k) k)
  select
    i.n,
    (select count(*) from ended e where e.id = i.op_id)::int as ended,
    -- referenced so that end_devices runs (a select CTE nothing reads is never evaluated)
    (select count(*) from end_devices w where w.n = i.n)::int as devices_written,
    c.claimed_from,
    case when c.id is not null then (select row_to_json(x) from (
      select c.id, c.seq, c.vm_id, v.name as vm, c.group_id, c.group_name, c.kind::text as kind, c.state::text as state, c.steps, c.progress_percent,
        c.attempts, c.error, c.rollback, c.request_id, c.principal, c.created_at, c.updated_at, c.started_at, c.ended_at, c.cancel_requested
      from vms v where v.id = c.vm_id) x) end as op,
    k.k as context_key,
    case when k.changed then (select row_to_json(x) from (select ${VM_COLUMNS} from vms v join hosts h on h.id = v.host_id where v.id = i.vm_id) x) end as vm,
    case when k.changed then (select json_build_object(
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
      from vms v join hosts h on h.id = v.host_id where v.id = i.vm_id) end as host,
    case when k.changed then
      (select coalesce(json_agg(row_to_json(x) order by x.created_at, x.id), '[]'::json) from (${GROUP_SELECT} where g.vm_id = i.vm_id) x) end as groups,
    case when c.group_id is not null then (select row_to_json(x) from (${GROUP_SELECT} where g.id = c.group_id) x) end as group
  from input i left join claimed c on c.n = i.n left join context k on k.n = i.n
  order by i.n`;

/** One VM's part of an end-and-claim statement. */
export interface EndAndClaimItem {
  vmId: string;
  /** The operation that ended, with what it observed; none to only claim. */
  end?: OperationEnd | undefined;
  /** Claim the VM's next operation too. */
  claimNext: boolean;
  /** The context key of the VM context the caller has (then it is not read again while current). */
  knownContextKey?: string | undefined;
  /**
   * The VM's devices as the caller last wrote them, when nothing else can have written them
   * since (it has held the VM's lock throughout): then only the differences are written.
   */
  writtenDevices?: WrittenDevices | undefined;
}

export interface EndAndClaimResult {
  ended: boolean;
  next?: ClaimedOperation;
  /** The VM's devices as this end wrote them (none when it carried none). */
  writtenDevices?: WrittenDevices;
}

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
  ): Promise<EndAndClaimResult> {
    return (await this.endAndClaimMany(sql, [{ vmId, end, ...opts }]))[0]!;
  }

  /**
   * `endAndClaim` for several VMs in one statement (one round trip, one commit): the results
   * in the order of the items. At most one item per VM. The statement fails or commits
   * whole.
   */
  async endAndClaimMany(sql: Sql, items: readonly EndAndClaimItem[]): Promise<EndAndClaimResult[]> {
    const vms = new Set(items.map((i) => i.vmId));
    if (vms.size !== items.length) throw new Error('endAndClaimMany: two items for one VM');
    const writes = items.map(({ end, writtenDevices }) => (end?.devices ? deviceWrite(end.devices, writtenDevices) : undefined));
    const input = items.map(({ vmId, end, claimNext, knownContextKey }, n) => {
      const g = end?.group;
      const devices = writes[n];
      return {
        n,
        vm_id: vmId,
        known_key: knownContextKey ?? null,
        op_id: end?.operationId ?? null,
        op_state: end?.state ?? null,
        error: end?.error ?? null,
        steps: end?.steps?.steps ?? null,
        progress_percent: end?.steps?.progressPercent ?? null,
        group_id: g?.id ?? null,
        group_state: g?.observation.state ?? null,
        plugged_bytes: g?.observation.pluggedBytes ?? null,
        online_blocks: g?.observation.onlineBlocks ?? null,
        online_zones: g?.observation.zones ?? null,
        devices_full: devices?.full ?? null,
        devices_put: devices?.put ?? null,
        devices_drop: devices?.drop ?? null,
        claim_next: claimNext,
      };
    });
    const rows = await sql.query<ClaimRow>(END_AND_CLAIM, [JSON.stringify(input)]);
    return items.map((item, n) => {
      const result = claimResult(sql, item, rows[n]);
      // Believed written only when the statement says the write ran: otherwise the caller's next end writes the whole list.
      const written = writes[n]?.written;
      return written && rows[n]?.devices_written ? { ...result, writtenDevices: written } : result;
    });
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

/** One item's row: notifies watchers of both state changes (the statement has committed). */
function claimResult(sql: Sql, { end }: EndAndClaimItem, r: ClaimRow | undefined): EndAndClaimResult {
  const ended = (r?.ended ?? 0) > 0;
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
