import {
  authorize,
  checkCapacityNotBelowAllocated,
  checkCapacityShape,
  checkEtag,
  checkNodeCapacity,
  DomainError,
  formatBytes,
  requirePoolNode,
  resolveUpdateMask,
  validatePoolSpec,
  Violations,
  type Pool,
  type PoolSpec,
  type PoolState,
} from '#domain';
import { HostRepository, LedgerRepository, MemoryGroupRepository, PoolRepository } from '#persistence';
import type { CallContext } from './context';
import type { Mutations } from './mutations';
import { pageToken, parsePageRequest, type Page } from './pagination';

const UPDATABLE = ['description', 'labels', 'state', 'capacityBytes'] as const;
const KNOWN = ['name', 'uid', 'host', 'hostNodeId', 'daxDevicePath', 'granuleBytes', 'memoryType', 'cpuAddressable', 'allocatedBytes', 'freeBytes', 'etag', 'createTime', 'updateTime', ...UPDATABLE];

export class PoolService {
  private readonly hosts = new HostRepository();
  private readonly pools = new PoolRepository();
  private readonly ledger = new LedgerRepository();
  private readonly groups = new MemoryGroupRepository();

  constructor(private readonly mutations: Mutations) {}

  async create(ctx: CallContext, spec: PoolSpec, requestId?: string): Promise<Pool> {
    authorize(ctx.principal, 'inventory.write');
    validatePoolSpec(spec);
    return this.mutations.run(ctx, { method: 'CreatePool', resource: `pools/${spec.name}`, requestId, request: spec }, async (tx) => {
      // The host row lock serialises pool creation per host, so two pools cannot both claim a node's last bytes.
      const host = await this.hosts.lock(tx, spec.host).catch((e: unknown) => {
        if (e instanceof DomainError && e.code === 'NOT_FOUND') {
          throw DomainError.invalid('POOL_HOST_NOT_FOUND', [{ field: 'host', description: `host ${spec.host} does not exist` }]);
        }
        throw e;
      });
      const node = requirePoolNode(host, spec.hostNodeId);
      checkNodeCapacity(node, spec.capacityBytes, await this.pools.onNode(tx, host.uid, spec.hostNodeId));
      return this.pools.create(tx, host.uid, spec);
    });
  }

  async get(ctx: CallContext, name: string): Promise<Pool> {
    authorize(ctx.principal, 'read');
    return this.pools.get(this.mutations.db.prisma, name);
  }

  async list(ctx: CallContext, req: { pageSize?: number; pageToken?: string; host?: string; state?: PoolState }): Promise<Page<Pool>> {
    authorize(ctx.principal, 'read');
    const filterKey = `pools|${req.host ?? ''}|${req.state ?? ''}`;
    const page = parsePageRequest(req.pageSize, req.pageToken, filterKey);
    const { items, total } = await this.pools.list(this.mutations.db.prisma, {
      limit: page.pageSize + 1,
      ...(page.after ? { after: page.after } : {}),
      ...(req.host ? { host: req.host } : {}),
      ...(req.state ? { state: req.state } : {}),
    });
    const more = items.length > page.pageSize;
    const shown = items.slice(0, page.pageSize);
    return { items: shown, totalSize: total, nextPageToken: more ? pageToken(shown[shown.length - 1]!.name, filterKey) : '' };
  }

  async update(ctx: CallContext, name: string, patch: Partial<PoolSpec>, mask: string[], etag: string | undefined, requestId?: string): Promise<Pool> {
    authorize(ctx.principal, 'inventory.write');
    const paths = resolveUpdateMask(mask.length ? mask : Object.keys(patch).filter((k) => k !== 'name'), UPDATABLE, KNOWN);
    return this.mutations.run(ctx, { method: 'UpdatePool', resource: `pools/${name}`, requestId, request: { name, patch, paths, etag } }, async (tx) => {
      const current = await this.pools.lock(tx, name);
      checkEtag('pool', name, etag, current.etag);
      const next: PoolSpec = { ...current };
      for (const p of paths) {
        const value = patch[p as keyof PoolSpec];
        if (value === undefined) throw DomainError.invalid('MISSING_UPDATE_FIELD', [{ field: p, description: 'is named in the update mask but not given' }]);
        (next as unknown as Record<string, unknown>)[p] = value;
      }
      validatePoolSpec(next);
      if (paths.includes('capacityBytes')) {
        const v = new Violations();
        checkCapacityShape(v, next.capacityBytes, next.granuleBytes);
        v.throwIfAny('INVALID_POOL');
        checkCapacityNotBelowAllocated(next.capacityBytes, current.allocatedBytes);
        // Extents are placed anywhere below capacity: the highest one must still fit.
        const end = await this.ledger.highestExtentEnd(tx, current.uid);
        if (next.capacityBytes < end) {
          throw DomainError.precondition(
            'POOL_CAPACITY_BELOW_EXTENTS',
            `capacityBytes ${formatBytes(next.capacityBytes)} would cut through extents that reach ${formatBytes(end)} of the pool; release or move the groups at the end first`,
            { highestExtentEndBytes: String(end) },
          );
        }
        const host = await this.hosts.lock(tx, current.host);
        const node = requirePoolNode(host, current.hostNodeId);
        const others = (await this.pools.onNode(tx, host.uid, current.hostNodeId)).filter((p) => p.name !== name);
        checkNodeCapacity(node, next.capacityBytes, others);
      }
      return this.pools.update(tx, current, next);
    });
  }

  async delete(ctx: CallContext, name: string, etag: string | undefined, requestId?: string): Promise<void> {
    authorize(ctx.principal, 'inventory.write');
    await this.mutations.run(ctx, { method: 'DeletePool', resource: `pools/${name}`, requestId, request: { name, etag } }, async (tx) => {
      const current = await this.pools.lock(tx, name);
      checkEtag('pool', name, etag, current.etag);
      const groups = await this.groups.countOnPool(tx, current.uid);
      if (groups > 0) {
        throw DomainError.precondition('POOL_HAS_MEMORY_GROUPS', `pool ${name} still backs ${groups} memory group(s); delete them first`, { memoryGroups: String(groups) });
      }
      if (current.allocatedBytes > 0) {
        throw DomainError.precondition('POOL_HAS_ALLOCATIONS', `pool ${name} still has ${current.allocatedBytes} bytes allocated to memory groups; delete or move them first`, {
          allocatedBytes: String(current.allocatedBytes),
        });
      }
      await this.pools.delete(tx, current);
      return null;
    });
  }
}
