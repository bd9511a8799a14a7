import { authorize, checkEtag, DomainError, resolveUpdateMask, validateHostSpec, type Host, type HostSpec, type HostState } from '#domain';
import { HostRepository, PoolRepository, VmRepository } from '#persistence';
import type { CallContext } from './context';
import type { Mutations } from './mutations';
import { pageToken, parsePageRequest, type Page } from './pagination';

const UPDATABLE = ['description', 'labels', 'state', 'nodes', 'performance', 'distances'] as const;
const KNOWN = ['name', 'uid', 'etag', 'createTime', 'updateTime', ...UPDATABLE];

export class HostService {
  private readonly hosts = new HostRepository();
  private readonly pools = new PoolRepository();
  private readonly vms = new VmRepository();

  constructor(private readonly mutations: Mutations) {}

  async create(ctx: CallContext, spec: HostSpec, requestId?: string): Promise<Host> {
    authorize(ctx.principal, 'inventory.write');
    validateHostSpec(spec);
    return this.mutations.run(ctx, { method: 'CreateHost', resource: `hosts/${spec.name}`, requestId, request: spec }, (tx) => this.hosts.create(tx, spec));
  }

  async get(ctx: CallContext, name: string): Promise<Host> {
    authorize(ctx.principal, 'read');
    return this.hosts.get(this.mutations.db.prisma, name);
  }

  async list(ctx: CallContext, req: { pageSize?: number; pageToken?: string; state?: HostState }): Promise<Page<Host>> {
    authorize(ctx.principal, 'read');
    const filterKey = `hosts|${req.state ?? ''}`;
    const page = parsePageRequest(req.pageSize, req.pageToken, filterKey);
    const { items, total } = await this.hosts.list(this.mutations.db.prisma, {
      limit: page.pageSize + 1,
      ...(page.after ? { after: page.after } : {}),
      ...(req.state ? { state: req.state } : {}),
    });
    const more = items.length > page.pageSize;
    const shown = items.slice(0, page.pageSize);
    return { items: shown, totalSize: total, nextPageToken: more ? pageToken(shown[shown.length - 1]!.name, filterKey) : '' };
  }

  async update(ctx: CallContext, name: string, patch: Partial<HostSpec>, mask: string[], etag: string | undefined, requestId?: string): Promise<Host> {
    authorize(ctx.principal, 'inventory.write');
    const paths = resolveUpdateMask(mask.length ? mask : Object.keys(patch).filter((k) => k !== 'name'), UPDATABLE, KNOWN);
    return this.mutations.run(ctx, { method: 'UpdateHost', resource: `hosts/${name}`, requestId, request: { name, patch, paths, etag } }, async (tx) => {
      const current = await this.hosts.lock(tx, name);
      checkEtag('host', name, etag, current.etag);
      const next: HostSpec = { ...current };
      for (const p of paths) {
        const value = patch[p as keyof HostSpec];
        if (value === undefined) throw DomainError.invalid('MISSING_UPDATE_FIELD', [{ field: p, description: 'is named in the update mask but not given' }]);
        (next as unknown as Record<string, unknown>)[p] = value;
      }
      validateHostSpec(next);
      await this.checkPoolsStillFit(tx, current, next);
      return this.hosts.replace(tx, current, next);
    });
  }

  async delete(ctx: CallContext, name: string, etag: string | undefined, requestId?: string): Promise<void> {
    authorize(ctx.principal, 'inventory.write');
    await this.mutations.run(ctx, { method: 'DeleteHost', resource: `hosts/${name}`, requestId, request: { name, etag } }, async (tx) => {
      const current = await this.hosts.lock(tx, name);
      checkEtag('host', name, etag, current.etag);
      const vms = await this.vms.countOnHost(tx, current.uid);
      if (vms > 0) {
        throw DomainError.precondition('HOST_HAS_VMS', `host ${name} still has ${vms} VM(s); delete them first`, { vms: String(vms) });
      }
      const pools = await this.pools.countOnHost(tx, current.uid);
      if (pools > 0) {
        throw DomainError.precondition('HOST_HAS_POOLS', `host ${name} still has ${pools} pool(s); delete them first`, { pools: String(pools) });
      }
      await this.hosts.delete(tx, current);
      return null;
    });
  }

  /** A host's nodes may change only if every pool still sits on a CPU-less node with room for it. */
  private async checkPoolsStillFit(tx: Parameters<HostRepository['lock']>[0], current: Host, next: HostSpec): Promise<void> {
    const byNode = new Map<number, { name: string; capacityBytes: number }[]>();
    const { items } = await this.pools.list(tx, { host: current.name, limit: 100_000 });
    for (const p of items) byNode.set(p.hostNodeId, [...(byNode.get(p.hostNodeId) ?? []), p]);
    for (const [nodeId, pools] of byNode) {
      const node = next.nodes.find((n) => n.nodeId === nodeId);
      const names = pools.map((p) => p.name).join(', ');
      if (!node) throw DomainError.precondition('HOST_NODE_IN_USE', `node ${nodeId} backs pool(s) ${names} and cannot be removed`);
      if (node.cpus.length > 0) throw DomainError.precondition('HOST_NODE_IN_USE', `node ${nodeId} backs pool(s) ${names} and must stay CPU-less`);
      const total = pools.reduce((s, p) => s + p.capacityBytes, 0);
      if (total > node.memoryBytes) {
        throw DomainError.precondition('HOST_NODE_IN_USE', `node ${nodeId} backs pool(s) ${names} holding ${total} bytes; memoryBytes ${node.memoryBytes} is too small`);
      }
    }
  }
}
