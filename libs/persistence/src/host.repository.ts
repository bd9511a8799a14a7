import { DomainError, etagOf, type Host, type HostSpec, type HostState, type NodeKind } from '#domain';
import type { Prisma } from './generated/prisma/client';
import { isUniqueViolation, type Tx } from './database';

const include = {
  nodes: { orderBy: { nodeId: 'asc' } },
  performance: { orderBy: [{ cpuNodeId: 'asc' }, { memoryNodeId: 'asc' }] },
  distances: { orderBy: [{ fromNodeId: 'asc' }, { toNodeId: 'asc' }] },
} satisfies Prisma.HostInclude;

type HostRow = Prisma.HostGetPayload<{ include: typeof include }>;

function toDomain(row: HostRow): Host {
  return {
    name: row.name,
    uid: row.id,
    description: row.description,
    labels: row.labels as Record<string, string>,
    state: row.state as HostState,
    nodes: row.nodes.map((n) => ({ nodeId: n.nodeId, cpus: n.cpus, memoryBytes: Number(n.memoryBytes), kind: n.kind as NodeKind })),
    performance: row.performance.map((p) => ({
      cpuNodeId: p.cpuNodeId,
      memoryNodeId: p.memoryNodeId,
      readLatencyNs: p.readLatencyNs,
      writeLatencyNs: p.writeLatencyNs,
      readBandwidthMBps: p.readBandwidthMBps,
      writeBandwidthMBps: p.writeBandwidthMBps,
    })),
    distances: row.distances.map((d) => ({ fromNodeId: d.fromNodeId, toNodeId: d.toNodeId, distance: d.distance })),
    etag: etagOf(row.version),
    createTime: row.createdAt,
    updateTime: row.updatedAt,
  };
}

function childRows(spec: HostSpec) {
  return {
    nodes: { create: spec.nodes.map((n) => ({ nodeId: n.nodeId, cpus: n.cpus, memoryBytes: BigInt(n.memoryBytes), kind: n.kind })) },
    performance: { create: spec.performance.map((p) => ({ ...p })) },
    distances: { create: spec.distances.map((d) => ({ ...d })) },
  };
}

export class HostRepository {
  async create(tx: Tx, spec: HostSpec): Promise<Host> {
    try {
      const row = await tx.host.create({
        data: { name: spec.name, description: spec.description, labels: spec.labels, state: spec.state, ...childRows(spec) },
        include,
      });
      return toDomain(row);
    } catch (e) {
      if (isUniqueViolation(e)) throw DomainError.exists('HOST_ALREADY_EXISTS', `host ${spec.name} already exists`, { name: spec.name });
      throw e;
    }
  }

  async find(tx: Tx, name: string): Promise<Host | undefined> {
    const row = await tx.host.findUnique({ where: { name }, include });
    return row ? toDomain(row) : undefined;
  }

  async get(tx: Tx, name: string): Promise<Host> {
    const host = await this.find(tx, name);
    if (!host) throw DomainError.notFound('host', name);
    return host;
  }

  /** Locks the host row until the transaction ends: pools on it, and its own updates, serialise here. */
  async lock(tx: Tx, name: string): Promise<Host> {
    const locked = await tx.$queryRaw<{ id: string }[]>`select id from hosts where name = ${name} for update`;
    if (locked.length === 0) throw DomainError.notFound('host', name);
    return this.get(tx, name);
  }

  async list(tx: Tx, opts: { after?: string; limit: number; state?: HostState }): Promise<{ items: Host[]; total: number }> {
    const where: Prisma.HostWhereInput = opts.state ? { state: opts.state } : {};
    const [rows, total] = await Promise.all([
      tx.host.findMany({
        where: opts.after ? { ...where, name: { gt: opts.after } } : where,
        orderBy: { name: 'asc' },
        take: opts.limit,
        include,
      }),
      tx.host.count({ where }),
    ]);
    return { items: rows.map(toDomain), total };
  }

  /** Replaces the host's description wholesale; the caller holds the row lock. */
  async replace(tx: Tx, current: Host, spec: HostSpec): Promise<Host> {
    const id = current.uid;
    await tx.hostNode.deleteMany({ where: { hostId: id } });
    await tx.hostPerformance.deleteMany({ where: { hostId: id } });
    await tx.hostDistance.deleteMany({ where: { hostId: id } });
    const row = await tx.host.update({
      where: { id },
      data: { description: spec.description, labels: spec.labels, state: spec.state, version: { increment: 1 }, ...childRows(spec) },
      include,
    });
    return toDomain(row);
  }

  async delete(tx: Tx, host: Host): Promise<void> {
    await tx.host.delete({ where: { id: host.uid } });
  }
}
