import { DomainError, driftRecord, etagOf, type GuestMemoryOverrides, type MemoryDriftCondition, type GuestNodeSpec, type HostNode, type HostState, type NodeKind, type Vm, type VmSpec, type VmState } from '#domain';
import type { Tx } from './database';
import { isUniqueViolation } from './database';
import type { Sql } from './sql';
import { OBSERVED_DEVICES_SELECT } from './vm-devices';

/** A VM row as read with its host; `hostId` and `hostState` are what the services need besides the resource. */
export interface VmRecord extends Vm {
  hostId: string;
  hostState: HostState;
  version: number;
}

export interface VmRow {
  id: string;
  name: string;
  description: string;
  labels: unknown;
  host_id: string;
  host: string;
  host_state: string;
  kernel_profile: string;
  guest_memory: unknown;
  memory_slots: number;
  max_memory_bytes: string | number;
  spare_pcie_ports: number;
  state: string;
  version: number;
  created_at: Date | string;
  updated_at: Date | string;
  guest_nodes: { guestNodeId: number; vcpus: number; bootMemoryBytes: number; hostNodeId: number | null }[];
  qemu_pid?: number | null;
  qmp_socket_path?: string | null;
  qga_socket_path?: string | null;
  observed_devices?: unknown;
  observed_at?: Date | string | null;
  memory_drift?: unknown;
  memory_drift_checked_at?: Date | string | null;
}

/** Rows as selected below, or as JSON from memplane_lock_vm (timestamps then arrive as strings). */
export function vmRowToRecord(r: VmRow): VmRecord {
  return {
    name: r.name,
    uid: r.id,
    description: r.description,
    labels: r.labels as Record<string, string>,
    host: r.host,
    hostId: r.host_id,
    hostState: r.host_state as HostState,
    kernelProfile: r.kernel_profile,
    guestMemory: r.guest_memory as GuestMemoryOverrides,
    guestNodes: r.guest_nodes.map(
      (n): GuestNodeSpec => ({
        guestNodeId: n.guestNodeId,
        vcpus: n.vcpus,
        bootMemoryBytes: Number(n.bootMemoryBytes),
        ...(n.hostNodeId === null ? {} : { hostNodeId: n.hostNodeId }),
      }),
    ),
    memorySlots: r.memory_slots,
    maxMemoryBytes: Number(r.max_memory_bytes),
    sparePciePorts: r.spare_pcie_ports,
    state: r.state as VmState,
    version: r.version,
    etag: etagOf(r.version),
    createTime: new Date(r.created_at),
    updateTime: new Date(r.updated_at),
    ...(r.qemu_pid ? { qemuPid: r.qemu_pid } : {}),
    ...(r.qemu_pid && r.qmp_socket_path ? { qmpSocketPath: r.qmp_socket_path } : {}),
    ...(r.qemu_pid && r.qga_socket_path ? { qgaSocketPath: r.qga_socket_path } : {}),
    observedMemoryDevices: Array.isArray(r.observed_devices) ? (r.observed_devices as Record<string, unknown>[]) : [],
    ...(r.observed_at ? { observeTime: new Date(r.observed_at) } : {}),
    ...(Array.isArray(r.memory_drift) && r.memory_drift_checked_at
      ? { memoryDrift: driftRecord(r.memory_drift as MemoryDriftCondition[], new Date(r.memory_drift_checked_at)) }
      : {}),
  };
}

// The VM's spec, state and where its QEMU is (from `vms v join hosts h`). Guest nodes
// never change after creation, so reading them in the statement that locks the VM row
// (with that statement's snapshot) is safe.
export const VM_SPEC_COLUMNS = `v.id, v.name, v.description, v.labels, v.host_id, h.name as host, h.state::text as host_state, v.kernel_profile, v.guest_memory,
  v.memory_slots, v.max_memory_bytes, v.spare_pcie_ports, v.state::text as state, v.version, v.created_at, v.updated_at,
  v.qemu_pid, v.qmp_socket_path, v.qga_socket_path,
  (select coalesce(json_agg(json_build_object('guestNodeId', n.guest_node_id, 'vcpus', n.vcpus, 'bootMemoryBytes', n.boot_memory_bytes, 'hostNodeId', n.host_node_id)
     order by n.guest_node_id), '[]'::json) from vm_guest_nodes n where n.vm_id = v.id) as guest_nodes`;

// What the API shows besides: the last observation and drift report.
const COLUMNS = `${VM_SPEC_COLUMNS}, ${OBSERVED_DEVICES_SELECT} as observed_devices, v.observed_at, v.memory_drift, v.memory_drift_checked_at`;

export class VmRepository {
  async create(sql: Sql, hostId: string, spec: VmSpec): Promise<VmRecord> {
    let id: string;
    try {
      const rows = await sql.query<{ id: string }>(
        `insert into vms (id, name, description, labels, host_id, kernel_profile, guest_memory, memory_slots, max_memory_bytes, spare_pcie_ports)
         values (gen_random_uuid(), $1, $2, $3::jsonb, $4::uuid, $5, $6::jsonb, $7, $8, $9) returning id`,
        [spec.name, spec.description, JSON.stringify(spec.labels), hostId, spec.kernelProfile, JSON.stringify(spec.guestMemory), spec.memorySlots, spec.maxMemoryBytes, spec.sparePciePorts],
      );
      id = rows[0]!.id;
    } catch (e) {
      if (isUniqueViolation(e)) throw DomainError.exists('VM_ALREADY_EXISTS', `vm ${spec.name} already exists`, { name: spec.name });
      throw e;
    }
    await sql.query(
      `insert into vm_guest_nodes (vm_id, guest_node_id, vcpus, boot_memory_bytes, host_node_id)
       select $1::uuid, n.id, n.vcpus, n.boot, n.host from unnest($2::int[], $3::int[], $4::bigint[], $5::int[]) as n(id, vcpus, boot, host)`,
      [
        id,
        spec.guestNodes.map((n) => n.guestNodeId),
        spec.guestNodes.map((n) => n.vcpus),
        spec.guestNodes.map((n) => n.bootMemoryBytes),
        spec.guestNodes.map((n) => n.hostNodeId ?? null),
      ],
    );
    return this.getById(sql, id);
  }

  async find(sql: Sql, name: string): Promise<VmRecord | undefined> {
    const rows = await sql.query<VmRow>(`select ${COLUMNS} from vms v join hosts h on h.id = v.host_id where v.name = $1`, [name]);
    return rows[0] ? vmRowToRecord(rows[0]) : undefined;
  }

  async get(sql: Sql, name: string): Promise<VmRecord> {
    const vm = await this.find(sql, name);
    if (!vm) throw DomainError.notFound('vm', name);
    return vm;
  }

  async getById(sql: Sql, id: string): Promise<VmRecord> {
    const rows = await sql.query<VmRow>(`select ${COLUMNS} from vms v join hosts h on h.id = v.host_id where v.id = $1::uuid`, [id]);
    if (!rows[0]) throw DomainError.notFound('vm', id);
    return vmRowToRecord(rows[0]);
  }

  /**
   * Locks the VM row until the transaction ends. Every change to a VM, its
   * groups or its operations takes this lock first (then pool locks), so VM
   * limits are checked against a stable set of groups. NO KEY UPDATE: rows
   * that reference the VM can still be inserted by the lock holder's peers.
   */
  async lock(sql: Sql, name: string): Promise<VmRecord> {
    const rows = await sql.query<VmRow>(`select ${COLUMNS} from vms v join hosts h on h.id = v.host_id where v.name = $1 for no key update of v`, [name]);
    if (!rows[0]) throw DomainError.notFound('vm', name);
    return vmRowToRecord(rows[0]);
  }

  async lockById(sql: Sql, id: string): Promise<VmRecord> {
    const rows = await sql.query<VmRow>(`select ${COLUMNS} from vms v join hosts h on h.id = v.host_id where v.id = $1::uuid for no key update of v`, [id]);
    if (!rows[0]) throw DomainError.notFound('vm', id);
    return vmRowToRecord(rows[0]);
  }

  async list(sql: Sql, opts: { after?: string; limit: number; host?: string; state?: VmState }): Promise<{ items: VmRecord[]; total: number }> {
    const where: string[] = [];
    const args: unknown[] = [];
    if (opts.host) {
      args.push(opts.host);
      where.push(`h.name = $${args.length}`);
    }
    if (opts.state) {
      args.push(opts.state);
      where.push(`v.state = $${args.length}::"VmState"`);
    }
    const filter = where.length ? `where ${where.join(' and ')}` : '';
    const pageArgs = [...args];
    let pageFilter = filter;
    if (opts.after) {
      pageArgs.push(opts.after);
      pageFilter = `${filter ? `${filter} and` : 'where'} v.name > $${pageArgs.length}`;
    }
    pageArgs.push(opts.limit);
    const [rows, count] = await Promise.all([
      sql.query<VmRow>(`select ${COLUMNS} from vms v join hosts h on h.id = v.host_id ${pageFilter} order by v.name limit $${pageArgs.length}`, pageArgs),
      sql.query<{ n: string }>(`select count(*) as n from vms v join hosts h on h.id = v.host_id ${filter}`, args),
    ]);
    return { items: rows.map(vmRowToRecord), total: Number(count[0]?.n ?? 0) };
  }

  /** The host a new VM goes on, locked against deletion (KEY SHARE) until the transaction ends. */
  async hostFor(sql: Sql, name: string): Promise<{ uid: string; name: string; state: HostState; nodes: HostNode[] } | undefined> {
    const rows = await sql.query<{ id: string; name: string; state: string; nodes: { nodeId: number; cpus: number[]; memoryBytes: number; kind: NodeKind }[] }>(
      `select h.id, h.name, h.state::text as state,
         (select coalesce(json_agg(json_build_object('nodeId', n.node_id, 'cpus', n.cpus, 'memoryBytes', n.memory_bytes, 'kind', n.kind) order by n.node_id), '[]'::json)
          from host_nodes n where n.host_id = h.id) as nodes
       from hosts h where h.name = $1 for key share of h`,
      [name],
    );
    const r = rows[0];
    return r ? { uid: r.id, name: r.name, state: r.state as HostState, nodes: r.nodes.map((n) => ({ ...n, memoryBytes: Number(n.memoryBytes) })) } : undefined;
  }

  /** For HostService (Prisma transactions). */
  async countOnHost(tx: Tx, hostId: string): Promise<number> {
    return tx.vm.count({ where: { hostId } });
  }

  /** State is output only: this is for the transition methods and (later) the workers. */
  async setState(sql: Sql, id: string, state: VmState): Promise<void> {
    // Drift is reported while the VM runs: leaving RUNNING forgets the last report.
    await sql.query(
      `update vms set state = $2::"VmState", version = version + 1, updated_at = now(),
         memory_drift = case when $2 = 'RUNNING' then memory_drift end,
         memory_drift_checked_at = case when $2 = 'RUNNING' then memory_drift_checked_at end
       where id = $1::uuid`,
      [id, state],
    );
  }

  async delete(sql: Sql, id: string): Promise<void> {
    await sql.query(`delete from vms where id = $1::uuid`, [id]);
  }
}
