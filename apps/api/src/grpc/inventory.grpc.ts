import type { Host as DomainHost, HostSpec, HostState as DomainHostState, NodeKind as DomainNodeKind, Pool as DomainPool, PoolMemoryType as DomainMemoryType, PoolSpec, PoolState as DomainPoolState } from '#domain';
import { Empty } from '#contracts/generated/google/protobuf/empty';
import {
  HostServiceService,
  HostState,
  NodeKind,
  type CreateHostRequest,
  type DeleteHostRequest,
  type GetHostRequest,
  type Host,
  type HostServiceServer,
  type ListHostsRequest,
  type ListHostsResponse,
  type UpdateHostRequest,
} from '#contracts/generated/memplane/v1/host';
import {
  PoolMemoryType,
  PoolServiceService,
  PoolState,
  type CreatePoolRequest,
  type DeletePoolRequest,
  type GetPoolRequest,
  type ListPoolsRequest,
  type ListPoolsResponse,
  type Pool,
  type PoolServiceServer,
  type UpdatePoolRequest,
} from '#contracts/generated/memplane/v1/pool';
import type { Runtime } from '../runtime';
import { big, Converter, invert, requireMessage, snakeToCamel } from './convert';
import type { GrpcRegistry } from './server';

const NODE_KIND: Record<number, DomainNodeKind> = { [NodeKind.NODE_KIND_DRAM]: 'DRAM', [NodeKind.NODE_KIND_CXL]: 'CXL' };
const HOST_STATE: Record<number, DomainHostState> = {
  [HostState.HOST_STATE_READY]: 'READY',
  [HostState.HOST_STATE_MAINTENANCE]: 'MAINTENANCE',
  [HostState.HOST_STATE_DOWN]: 'DOWN',
};
const MEMORY_TYPE: Record<number, DomainMemoryType> = { [PoolMemoryType.POOL_MEMORY_TYPE_VOLATILE]: 'VOLATILE', [PoolMemoryType.POOL_MEMORY_TYPE_PERSISTENT]: 'PERSISTENT' };
const POOL_STATE: Record<number, DomainPoolState> = {
  [PoolState.POOL_STATE_ACTIVE]: 'ACTIVE',
  [PoolState.POOL_STATE_DRAINING]: 'DRAINING',
  [PoolState.POOL_STATE_DISABLED]: 'DISABLED',
};
const NODE_KIND_OUT = invert(NODE_KIND);
const HOST_STATE_OUT = invert(HOST_STATE);
const MEMORY_TYPE_OUT = invert(MEMORY_TYPE);
const POOL_STATE_OUT = invert(POOL_STATE);

function hostSpecFrom(c: Converter, h: Host, prefix: string): HostSpec {
  return {
    name: h.name,
    description: h.description,
    labels: { ...h.labels },
    state: c.enumValue(`${prefix}.state`, h.state, HOST_STATE, 'READY'),
    nodes: h.nodes.map((n, i) => ({
      nodeId: n.nodeId,
      cpus: [...n.cpus],
      memoryBytes: c.num(`${prefix}.nodes[${i}].memoryBytes`, n.memoryBytes),
      kind: c.enumValue(`${prefix}.nodes[${i}].kind`, n.kind, NODE_KIND),
    })),
    performance: h.performance.map((p, i) => ({
      cpuNodeId: p.cpuNodeId,
      memoryNodeId: p.memoryNodeId,
      readLatencyNs: c.num(`${prefix}.performance[${i}].readLatencyNs`, p.readLatencyNs),
      writeLatencyNs: c.num(`${prefix}.performance[${i}].writeLatencyNs`, p.writeLatencyNs),
      readBandwidthMBps: c.num(`${prefix}.performance[${i}].readBandwidthMBps`, p.readBandwidthMbps),
      writeBandwidthMBps: c.num(`${prefix}.performance[${i}].writeBandwidthMBps`, p.writeBandwidthMbps),
    })),
    distances: h.distances.map((d) => ({ ...d })),
  };
}

export function hostToProto(h: DomainHost): Host {
  return {
    name: h.name,
    uid: h.uid,
    description: h.description,
    labels: h.labels,
    nodes: h.nodes.map((n) => ({ nodeId: n.nodeId, cpus: n.cpus, memoryBytes: big(n.memoryBytes), kind: NODE_KIND_OUT[n.kind] })),
    performance: h.performance.map((p) => ({
      cpuNodeId: p.cpuNodeId,
      memoryNodeId: p.memoryNodeId,
      readLatencyNs: big(p.readLatencyNs),
      writeLatencyNs: big(p.writeLatencyNs),
      readBandwidthMbps: big(p.readBandwidthMBps),
      writeBandwidthMbps: big(p.writeBandwidthMBps),
    })),
    distances: h.distances,
    state: HOST_STATE_OUT[h.state],
    etag: h.etag,
    createTime: h.createTime,
    updateTime: h.updateTime,
  };
}

function poolSpecFrom(c: Converter, p: Pool, prefix: string): PoolSpec {
  return {
    name: p.name,
    description: p.description,
    labels: { ...p.labels },
    host: p.host,
    hostNodeId: p.hostNodeId,
    ...(p.daxDevicePath ? { daxDevicePath: p.daxDevicePath } : {}),
    capacityBytes: c.num(`${prefix}.capacityBytes`, p.capacityBytes),
    granuleBytes: p.granuleBytes === 0n ? 128 * 1024 * 1024 : c.num(`${prefix}.granuleBytes`, p.granuleBytes),
    memoryType: c.enumValue(`${prefix}.memoryType`, p.memoryType, MEMORY_TYPE, 'VOLATILE'),
    state: c.enumValue(`${prefix}.state`, p.state, POOL_STATE, 'ACTIVE'),
    ...(p.cpuAddressable !== undefined ? { cpuAddressable: p.cpuAddressable } : {}),
  };
}

export function poolToProto(p: DomainPool): Pool {
  return {
    name: p.name,
    uid: p.uid,
    description: p.description,
    labels: p.labels,
    host: p.host,
    hostNodeId: p.hostNodeId,
    daxDevicePath: p.daxDevicePath ?? '',
    capacityBytes: big(p.capacityBytes),
    granuleBytes: big(p.granuleBytes),
    memoryType: MEMORY_TYPE_OUT[p.memoryType],
    state: POOL_STATE_OUT[p.state],
    allocatedBytes: big(p.allocatedBytes),
    freeBytes: big(p.freeBytes),
    cpuAddressable: p.cpuAddressable ?? true,
    etag: p.etag,
    createTime: p.createTime,
    updateTime: p.updateTime,
  };
}

/** AIP-134 over proto3: without a mask, the fields that were set (non-default) are the ones to change. */
function patchFrom<T extends object>(spec: T, mask: string[] | undefined, isSet: (k: keyof T) => boolean): { patch: Partial<T>; paths: string[] } {
  const paths = (mask ?? []).map(snakeToCamel);
  const keys = (paths.length ? paths : (Object.keys(spec) as (keyof T & string)[]).filter((k) => k !== 'name' && isSet(k as keyof T))) as (keyof T & string)[];
  const patch: Partial<T> = {};
  for (const k of keys) if (k in spec) patch[k] = spec[k];
  return { patch, paths: keys };
}

export function registerInventory(registry: GrpcRegistry, rt: Runtime): void {
  const hosts: HostServiceServer = {
    createHost: registry.unary(async (ctx, req: CreateHostRequest) => {
      const c = new Converter();
      const spec = hostSpecFrom(c, requireMessage('host', req.host), 'host');
      c.done();
      return hostToProto(await rt.hosts.create(ctx, spec, req.requestId || undefined));
    }),
    getHost: registry.unary(async (ctx, req: GetHostRequest) => hostToProto(await rt.hosts.get(ctx, req.name))),
    listHosts: registry.unary(async (ctx, req: ListHostsRequest): Promise<ListHostsResponse> => {
      const c = new Converter();
      const state = req.state ? c.enumValue('state', req.state, HOST_STATE) : undefined;
      c.done();
      const page = await rt.hosts.list(ctx, { pageSize: req.pageSize, pageToken: req.pageToken, ...(state ? { state } : {}) });
      return { hosts: page.items.map(hostToProto), nextPageToken: page.nextPageToken, totalSize: page.totalSize };
    }),
    updateHost: registry.unary(async (ctx, req: UpdateHostRequest) => {
      const host = requireMessage('host', req.host);
      const c = new Converter();
      const spec = hostSpecFrom(c, host, 'host');
      c.done();
      const { patch, paths } = patchFrom(spec, req.updateMask, (k) => {
        const v = spec[k];
        return Array.isArray(v) ? v.length > 0 : typeof v === 'object' ? Object.keys(v as object).length > 0 : k === 'state' ? host.state !== 0 : Boolean(v);
      });
      return hostToProto(await rt.hosts.update(ctx, host.name, patch, paths, host.etag || undefined, req.requestId || undefined));
    }),
    deleteHost: registry.unary(async (ctx, req: DeleteHostRequest) => {
      await rt.hosts.delete(ctx, req.name, req.etag || undefined, req.requestId || undefined);
      return Empty.create();
    }),
  };
  registry.add(HostServiceService, hosts);

  const pools: PoolServiceServer = {
    createPool: registry.unary(async (ctx, req: CreatePoolRequest) => {
      const c = new Converter();
      const spec = poolSpecFrom(c, requireMessage('pool', req.pool), 'pool');
      c.done();
      return poolToProto(await rt.pools.create(ctx, spec, req.requestId || undefined));
    }),
    getPool: registry.unary(async (ctx, req: GetPoolRequest) => poolToProto(await rt.pools.get(ctx, req.name))),
    listPools: registry.unary(async (ctx, req: ListPoolsRequest): Promise<ListPoolsResponse> => {
      const c = new Converter();
      const state = req.state ? c.enumValue('state', req.state, POOL_STATE) : undefined;
      c.done();
      const page = await rt.pools.list(ctx, { pageSize: req.pageSize, pageToken: req.pageToken, ...(req.host ? { host: req.host } : {}), ...(state ? { state } : {}) });
      return { pools: page.items.map(poolToProto), nextPageToken: page.nextPageToken, totalSize: page.totalSize };
    }),
    updatePool: registry.unary(async (ctx, req: UpdatePoolRequest) => {
      const pool = requireMessage('pool', req.pool);
      const c = new Converter();
      const spec = poolSpecFrom(c, { ...pool, host: pool.host || 'unset' }, 'pool');
      c.done();
      const { patch, paths } = patchFrom(
        { description: spec.description, labels: spec.labels, state: spec.state, capacityBytes: spec.capacityBytes },
        req.updateMask,
        (k) => (k === 'state' ? pool.state !== 0 : k === 'labels' ? Object.keys(spec.labels).length > 0 : k === 'capacityBytes' ? pool.capacityBytes !== 0n : Boolean(spec.description)),
      );
      return poolToProto(await rt.pools.update(ctx, pool.name, patch, paths, pool.etag || undefined, req.requestId || undefined));
    }),
    deletePool: registry.unary(async (ctx, req: DeletePoolRequest) => {
      await rt.pools.delete(ctx, req.name, req.etag || undefined, req.requestId || undefined);
      return Empty.create();
    }),
  };
  registry.add(PoolServiceService, pools);
}
