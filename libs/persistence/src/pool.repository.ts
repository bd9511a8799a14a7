import { DomainError, etagOf, type Pool, type PoolMemoryType, type PoolSpec, type PoolState } from '#domain';
import type { Prisma } from './generated/prisma/client';
import { isUniqueViolation, type Tx } from './database';

const include = { host: { select: { name: true } } } satisfies Prisma.PoolInclude;
type PoolRow = Prisma.PoolGetPayload<{ include: typeof include }>;

function toDomain(row: PoolRow): Pool {
  const capacityBytes = Number(row.capacityBytes);
  const allocatedBytes = Number(row.allocatedBytes);
  return {
    name: row.name,
    uid: row.id,
    description: row.description,
    labels: row.labels as Record<string, string>,
    host: row.host.name,
    hostNodeId: row.hostNodeId,
    ...(row.daxDevicePath ? { daxDevicePath: row.daxDevicePath } : {}),
    capacityBytes,
    granuleBytes: Number(row.granuleBytes),
    memoryType: row.memoryType as PoolMemoryType,
    state: row.state as PoolState,
    cpuAddressable: row.cpuAddressable,
    allocatedBytes,
    freeBytes: capacityBytes - allocatedBytes,
    etag: etagOf(row.version),
    createTime: row.createdAt,
    updateTime: row.updatedAt,
  };
}

export class PoolRepository {
  async create(tx: Tx, hostId: string, spec: PoolSpec): Promise<Pool> {
    try {
      const row = await tx.pool.create({
        data: {
          name: spec.name,
          description: spec.description,
          labels: spec.labels,
          hostId,
          hostNodeId: spec.hostNodeId,
          daxDevicePath: spec.daxDevicePath ?? null,
          capacityBytes: BigInt(spec.capacityBytes),
          granuleBytes: BigInt(spec.granuleBytes),
          memoryType: spec.memoryType,
          state: spec.state,
          cpuAddressable: spec.cpuAddressable ?? true,
        },
        include,
      });
      return toDomain(row);
    } catch (e) {
      if (isUniqueViolation(e)) throw DomainError.exists('POOL_ALREADY_EXISTS', `pool ${spec.name} already exists`, { name: spec.name });
      throw e;
    }
  }

  async find(tx: Tx, name: string): Promise<Pool | undefined> {
    const row = await tx.pool.findUnique({ where: { name }, include });
    return row ? toDomain(row) : undefined;
  }

  async get(tx: Tx, name: string): Promise<Pool> {
    const pool = await this.find(tx, name);
    if (!pool) throw DomainError.notFound('pool', name);
    return pool;
  }

  async lock(tx: Tx, name: string): Promise<Pool> {
    const locked = await tx.$queryRaw<{ id: string }[]>`select id from pools where name = ${name} for update`;
    if (locked.length === 0) throw DomainError.notFound('pool', name);
    return this.get(tx, name);
  }

  async onNode(tx: Tx, hostId: string, hostNodeId: number): Promise<Pool[]> {
    const rows = await tx.pool.findMany({ where: { hostId, hostNodeId }, include, orderBy: { name: 'asc' } });
    return rows.map(toDomain);
  }

  async countOnHost(tx: Tx, hostId: string): Promise<number> {
    return tx.pool.count({ where: { hostId } });
  }

  async list(tx: Tx, opts: { after?: string; limit: number; host?: string; state?: PoolState }): Promise<{ items: Pool[]; total: number }> {
    const where: Prisma.PoolWhereInput = {
      ...(opts.host ? { host: { name: opts.host } } : {}),
      ...(opts.state ? { state: opts.state } : {}),
    };
    const [rows, total] = await Promise.all([
      tx.pool.findMany({ where: opts.after ? { ...where, name: { gt: opts.after } } : where, orderBy: { name: 'asc' }, take: opts.limit, include }),
      tx.pool.count({ where }),
    ]);
    return { items: rows.map(toDomain), total };
  }

  async update(tx: Tx, current: Pool, spec: PoolSpec): Promise<Pool> {
    const row = await tx.pool.update({
      where: { id: current.uid },
      data: {
        description: spec.description,
        labels: spec.labels,
        state: spec.state,
        capacityBytes: BigInt(spec.capacityBytes),
        version: { increment: 1 },
      },
      include,
    });
    return toDomain(row);
  }

  async delete(tx: Tx, pool: Pool): Promise<void> {
    await tx.pool.delete({ where: { id: pool.uid } });
  }
}
