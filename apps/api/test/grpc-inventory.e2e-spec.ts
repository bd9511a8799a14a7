import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { status, type ServiceError } from '@grpc/grpc-js';
import { CreateHostRequest, DeleteHostRequest, GetHostRequest, HostServiceClient, HostState, ListHostsRequest, NodeKind, UpdateHostRequest, type Host } from '#contracts/generated/memplane/v1/host';
import { CreatePoolRequest, DeletePoolRequest, GetPoolRequest, ListPoolsRequest, PoolServiceClient, PoolState, UpdatePoolRequest, type Pool } from '#contracts/generated/memplane/v1/pool';
import { call, errorDetails, GiB, grpcMetadata, http, insecure, startTestApi, type TestApi } from './harness';

const hostMessage = (name: string): Partial<Host> => ({
  name,
  nodes: [
    { nodeId: 0, cpus: [0, 1], memoryBytes: BigInt(16 * GiB), kind: NodeKind.NODE_KIND_DRAM },
    { nodeId: 1, cpus: [], memoryBytes: BigInt(64 * GiB), kind: NodeKind.NODE_KIND_CXL },
  ],
  performance: [
    { cpuNodeId: 0, memoryNodeId: 0, readLatencyNs: 100n, writeLatencyNs: 100n, readBandwidthMbps: 51200n, writeBandwidthMbps: 51200n },
    { cpuNodeId: 0, memoryNodeId: 1, readLatencyNs: 250n, writeLatencyNs: 250n, readBandwidthMbps: 20480n, writeBandwidthMbps: 20480n },
  ],
  distances: [{ fromNodeId: 0, toNodeId: 1, distance: 24 }],
  labels: { rack: 'r1' },
});

async function expectError(p: Promise<unknown>, code: status, reason?: string): Promise<ReturnType<typeof errorDetails>> {
  try {
    await p;
  } catch (e) {
    const d = errorDetails(e as ServiceError);
    assert.equal(d.code, code, `${(e as Error).message}`);
    if (reason) assert.equal(d.reason, reason);
    return d;
  }
  assert.fail(`expected gRPC status ${status[code]}`);
}

describe('gRPC inventory over a real socket', () => {
  let api: TestApi;
  let hosts: HostServiceClient;
  let pools: PoolServiceClient;
  before(async () => {
    api = await startTestApi();
    hosts = new HostServiceClient(api.grpc, insecure());
    pools = new PoolServiceClient(api.grpc, insecure());
  });
  after(async () => {
    hosts?.close();
    pools?.close();
    await api?.stop();
  });
  const md = () => grpcMetadata(api.adminKey);

  it('creates, gets, pages, updates and deletes', async () => {
    const created = await call<unknown, Host>(hosts, 'createHost', CreateHostRequest.fromPartial({ host: hostMessage('g-host'), requestId: 'g-1' }), md());
    assert.equal(created.name, 'g-host');
    assert.equal(created.state, HostState.HOST_STATE_READY);
    assert.equal(created.nodes[1]!.memoryBytes, BigInt(64 * GiB));
    assert.equal(created.performance[1]!.readLatencyNs, 250n);
    const again = await call<unknown, Host>(hosts, 'createHost', CreateHostRequest.fromPartial({ host: hostMessage('g-host'), requestId: 'g-1' }), md());
    assert.equal(again.uid, created.uid, 'a retried request_id answers with the first result');
    await expectError(call(hosts, 'createHost', CreateHostRequest.fromPartial({ host: hostMessage('g-host') }), md()), status.ALREADY_EXISTS, 'HOST_ALREADY_EXISTS');

    for (const n of [1, 2, 3]) {
      const p = await call<unknown, Pool>(pools, 'createPool', CreatePoolRequest.fromPartial({ pool: { name: `g-pool-${n}`, host: 'g-host', hostNodeId: 1, capacityBytes: BigInt(8 * GiB) } }), md());
      assert.equal(p.granuleBytes, 128n * 1024n * 1024n);
      assert.equal(p.state, PoolState.POOL_STATE_ACTIVE);
      assert.equal(p.freeBytes, BigInt(8 * GiB));
    }
    const names: string[] = [];
    let pageToken = '';
    let pages = 0;
    do {
      const page = await call<unknown, { pools: Pool[]; nextPageToken: string; totalSize: number }>(pools, 'listPools', ListPoolsRequest.fromPartial({ pageSize: 2, pageToken, host: 'g-host' }), md());
      names.push(...page.pools.map((p) => p.name));
      assert.equal(page.totalSize, 3);
      pageToken = page.nextPageToken;
      pages++;
    } while (pageToken);
    assert.equal(pages, 2);
    assert.deepEqual(names, ['g-pool-1', 'g-pool-2', 'g-pool-3']);

    const current = await call<unknown, Pool>(pools, 'getPool', GetPoolRequest.fromPartial({ name: 'g-pool-1' }), md());
    const updated = await call<unknown, Pool>(
      pools,
      'updatePool',
      UpdatePoolRequest.fromPartial({ pool: { name: 'g-pool-1', capacityBytes: BigInt(4 * GiB), description: 'not in mask', etag: current.etag }, updateMask: ['capacity_bytes'] }),
      md(),
    );
    assert.equal(updated.capacityBytes, BigInt(4 * GiB));
    assert.equal(updated.description, '');
    await expectError(
      call(pools, 'updatePool', UpdatePoolRequest.fromPartial({ pool: { name: 'g-pool-1', capacityBytes: BigInt(2 * GiB), etag: current.etag }, updateMask: ['capacity_bytes'] }), md()),
      status.ABORTED,
      'ETAG_MISMATCH',
    );
    await expectError(call(pools, 'updatePool', UpdatePoolRequest.fromPartial({ pool: { name: 'g-pool-1' }, updateMask: ['host_node_id'] }), md()), status.INVALID_ARGUMENT, 'INVALID_UPDATE_MASK');
    const maint = await call<unknown, Host>(hosts, 'updateHost', UpdateHostRequest.fromPartial({ host: { name: 'g-host', state: HostState.HOST_STATE_MAINTENANCE }, updateMask: [] }), md());
    assert.equal(maint.state, HostState.HOST_STATE_MAINTENANCE);
    assert.equal(maint.nodes.length, 2, 'fields not set are not cleared');
    assert.deepEqual(maint.labels, { rack: 'r1' });

    await expectError(call(hosts, 'deleteHost', DeleteHostRequest.fromPartial({ name: 'g-host' }), md()), status.FAILED_PRECONDITION, 'HOST_HAS_POOLS');
    for (const n of [1, 2, 3]) await call(pools, 'deletePool', DeletePoolRequest.fromPartial({ name: `g-pool-${n}` }), md());
    await call(hosts, 'deleteHost', DeleteHostRequest.fromPartial({ name: 'g-host' }), md());
    await expectError(call(hosts, 'getHost', GetHostRequest.fromPartial({ name: 'g-host' }), md()), status.NOT_FOUND, 'HOST_NOT_FOUND');
  });

  it('answers bad input with INVALID_ARGUMENT and field violations, storing nothing', async () => {
    const bad = hostMessage('g-bad');
    bad.nodes![1]!.cpus = [5];
    bad.performance![0]!.readLatencyNs = -5n;
    bad.nodes![0]!.memoryBytes = 2n ** 62n;
    const d = await expectError(call(hosts, 'createHost', CreateHostRequest.fromPartial({ host: bad }), md()), status.INVALID_ARGUMENT);
    assert.deepEqual(d.violations.map((v) => v.field).sort(), ['host.nodes[0].memoryBytes']);
    bad.nodes![0]!.memoryBytes = BigInt(GiB);
    const d2 = await expectError(call(hosts, 'createHost', CreateHostRequest.fromPartial({ host: bad }), md()), status.INVALID_ARGUMENT, 'INVALID_HOST');
    assert.deepEqual(d2.violations.map((v) => v.field).sort(), ['nodes[1].cpus', 'performance[0].readLatencyNs']);
    await expectError(call(hosts, 'createHost', CreateHostRequest.fromPartial({}), md()), status.INVALID_ARGUMENT);
    await expectError(call(hosts, 'createHost', CreateHostRequest.fromPartial({ host: { ...hostMessage('g-bad'), nodes: [{ nodeId: 0, cpus: [0], memoryBytes: BigInt(GiB), kind: NodeKind.NODE_KIND_UNSPECIFIED }] } }), md()), status.INVALID_ARGUMENT);
    await expectError(call(hosts, 'listHosts', ListHostsRequest.fromPartial({ pageSize: -1 }), md()), status.INVALID_ARGUMENT, 'INVALID_PAGE_SIZE');
    await expectError(call(pools, 'createPool', CreatePoolRequest.fromPartial({ pool: { name: 'g-p', host: 'nowhere', hostNodeId: 1, capacityBytes: BigInt(GiB) } }), md()), status.INVALID_ARGUMENT, 'POOL_HOST_NOT_FOUND');
    const list = await call<unknown, { hosts: Host[] }>(hosts, 'listHosts', ListHostsRequest.fromPartial({}), md());
    assert.equal(list.hosts.filter((h) => h.name === 'g-bad').length, 0);
  });

  it('refuses missing keys with UNAUTHENTICATED and wrong roles with PERMISSION_DENIED', async () => {
    await expectError(call(hosts, 'listHosts', ListHostsRequest.fromPartial({}), grpcMetadata(null)), status.UNAUTHENTICATED, 'INVALID_API_KEY');
    await expectError(call(hosts, 'listHosts', ListHostsRequest.fromPartial({}), grpcMetadata('mp_AAAAAAAA_' + 'y'.repeat(43))), status.UNAUTHENTICATED, 'INVALID_API_KEY');
    const viewer = await http(api, 'POST', '/v1/api-keys', { body: { name: 'grpc-viewer', role: 'viewer' } });
    await call(hosts, 'listHosts', ListHostsRequest.fromPartial({}), grpcMetadata(viewer.body.secret));
    await expectError(call(hosts, 'createHost', CreateHostRequest.fromPartial({ host: hostMessage('g-viewer') }), grpcMetadata(viewer.body.secret)), status.PERMISSION_DENIED, 'ROLE_NOT_ALLOWED');
  });
});
