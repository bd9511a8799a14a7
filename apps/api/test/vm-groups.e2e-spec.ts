import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { status, type ServiceError } from '@grpc/grpc-js';
import { Client } from 'pg';
import { OperationRepository, VmRepository } from '#persistence';
import { LedgerServiceClient, GetPoolLedgerRequest, type PoolLedger } from '#contracts/generated/memplane/v1/ledger';
import {
  CreateMemoryGroupRequest,
  DeleteMemoryGroupRequest,
  GetMemoryGroupRequest,
  GroupDesiredState,
  GroupOnlineType,
  GuestUnitMode,
  ListMemoryGroupsRequest,
  MemoryGroupKind,
  MemoryGroupServiceClient,
  MemoryGroupState,
  ResizeMemoryGroupRequest,
  type MemoryGroup,
} from '#contracts/generated/memplane/v1/memory_group';
import {
  CancelOperationRequest,
  GetOperationRequest,
  ListOperationsRequest,
  OperationKind,
  OperationServiceClient,
  OperationState,
  type Operation,
} from '#contracts/generated/memplane/v1/operation';
import { CreateVmRequest, DeleteVmRequest, GetVmRequest, ListVmsRequest, StartVmRequest, StopVmRequest, VmServiceClient, VmState, type Vm } from '#contracts/generated/memplane/v1/vm';
import { call, errorDetails, GiB, grpcMetadata, http, insecure, MiB, sampleHost, startTestApi, type HttpResult, type TestApi } from './harness';

async function sql<T = any>(api: TestApi, text: string, values: unknown[] = []): Promise<T[]> {
  const c = new Client({ connectionString: api.databaseUrl });
  await c.connect();
  try {
    return (await c.query(text, values)).rows as T[];
  } finally {
    await c.end();
  }
}

/** Pool usage straight from the tables: allocated_bytes, Σ extents, and whether they agree. */
async function poolRow(api: TestApi, pool: string): Promise<{ allocated: number; extents: number; sum: number }> {
  const [r] = await sql(
    api,
    `select p.allocated_bytes, (select count(*) from pool_extents e where e.pool_id = p.id) n, (select coalesce(sum(size_bytes), 0) from pool_extents e where e.pool_id = p.id) s
     from pools p where p.name = $1`,
    [pool],
  );
  return { allocated: Number(r.allocated_bytes), extents: Number(r.n), sum: Number(r.s) };
}

/**
 * TEST-ONLY: nothing executes operations yet (a later issue's workers will). To
 * exercise a running VM, the test goes through :start and then records what a
 * worker would: the START operation SUCCEEDED and the VM RUNNING, through the
 * repositories the workers will use.
 */
async function markRunning(api: TestApi, vm: string, startOperation: string): Promise<void> {
  const db = api.running.runtime.db;
  const record = await new VmRepository().get(db.sql, vm);
  await new OperationRepository().setState(db.sql, startOperation, 'RUNNING');
  await new OperationRepository().setState(db.sql, startOperation, 'SUCCEEDED');
  await new VmRepository().setState(db.sql, record.uid, 'RUNNING');
}

function expectProblem(r: HttpResult, statusCode: number, reason: string): any {
  assert.equal(r.status, statusCode, JSON.stringify(r.body));
  assert.equal(r.headers.get('content-type')?.split(';')[0], 'application/problem+json');
  assert.equal(r.body.reason, reason, JSON.stringify(r.body));
  return r.body;
}

const vmBody = (name: string, o: Record<string, unknown> = {}) => ({
  name,
  host: 'hv-1',
  kernelProfile: 'linux-6.12',
  guestNodes: [
    { guestNodeId: 0, vcpus: 2, bootMemoryBytes: 2 * GiB },
    { guestNodeId: 1, vcpus: 2, bootMemoryBytes: 2 * GiB, hostNodeId: 1 },
  ],
  memorySlots: 2,
  maxMemoryBytes: 12 * GiB,
  sparePciePorts: 1,
  ...o,
});
const oneNode = (bootMemoryBytes: number) => [{ guestNodeId: 0, vcpus: 2, bootMemoryBytes }];
const staticGroup = (name: string, sizeBytes: number, pool = 'p-main') => ({ name, pool, kind: 'STATIC', sizeBytes });
const dynamicGroup = (name: string, maxSizeBytes: number, requestedBytes: number, pool = 'p-main', extra: Record<string, unknown> = {}) => ({
  name,
  pool,
  kind: 'DYNAMIC',
  maxSizeBytes,
  requestedBytes,
  ...extra,
});

describe('VMs, memory groups, the ledger and operations over REST', () => {
  let api: TestApi;
  before(async () => {
    api = await startTestApi();
    for (const h of ['hv-1', 'hv-2']) assert.equal((await http(api, 'POST', '/v1/hosts', { body: sampleHost(h) })).status, 201);
    const pools = [
      { name: 'p-main', host: 'hv-1', hostNodeId: 2, capacityBytes: 16 * GiB },
      { name: 'p-small', host: 'hv-1', hostNodeId: 2, capacityBytes: GiB },
      { name: 'p-drain', host: 'hv-1', hostNodeId: 2, capacityBytes: 2 * GiB, state: 'DRAINING' },
      { name: 'p-devmem', host: 'hv-1', hostNodeId: 2, capacityBytes: 2 * GiB, cpuAddressable: false },
      { name: 'p-run', host: 'hv-1', hostNodeId: 2, capacityBytes: 16 * GiB },
      { name: 'p-far', host: 'hv-2', hostNodeId: 2, capacityBytes: 2 * GiB },
    ];
    for (const p of pools) assert.equal((await http(api, 'POST', '/v1/pools', { body: p })).status, 201, p.name);
  });
  after(async () => api?.stop());

  it('creates, reads and lists a VM with its guest memory report', async () => {
    const created = await http(api, 'POST', '/v1/vms', { body: vmBody('vm-a') });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    assert.equal(created.body.state, 'DEFINED');
    assert.deepEqual(created.body.guestNodes[1], { guestNodeId: 1, vcpus: 2, bootMemoryBytes: 2 * GiB, hostNodeId: 1 });
    assert.equal(created.body.memoryReport.memoryBlockSizeBytes, 128 * MiB, 'linux-6.12 guests use 128 MiB memory blocks');
    assert.equal(created.body.memoryReport.bootMemoryBytes, 4 * GiB);
    assert.equal(created.body.memoryReport.autoMovableRatioPercent, 301);
    assert.deepEqual(created.body.memoryReport.warnings, []);
    const got = await http(api, 'GET', '/v1/vms/vm-a');
    assert.equal(got.status, 200);
    assert.equal(got.body.uid, created.body.uid);
    const list = await http(api, 'GET', '/v1/vms?host=hv-1&state=DEFINED');
    assert.deepEqual(list.body.vms.map((v: { name: string }) => v.name), ['vm-a']);
    const openapi = await http(api, 'GET', '/openapi.json', { key: null });
    for (const path of ['/v1/vms', '/v1/vms/{name}:start', '/v1/vms/{vm}/memory-groups', '/v1/vms/{vm}/memory-groups/{group}:resize', '/v1/operations/{name}:cancel', '/v1/pools/{name}/ledger']) {
      assert.ok(openapi.body.paths[path], path);
    }
  });

  it('refuses bad VMs naming the rule and the numbers', async () => {
    const profile = expectProblem(await http(api, 'POST', '/v1/vms', { body: vmBody('vm-bad', { kernelProfile: 'linux-5.4' }) }), 400, 'INVALID_VM');
    assert.deepEqual(profile.violations, [{ field: 'kernelProfile', description: 'unknown guest kernel profile "linux-5.4"; known: linux-6.1, linux-6.12' }]);
    const slots = expectProblem(await http(api, 'POST', '/v1/vms', { body: vmBody('vm-bad', { memorySlots: 257 }) }), 400, 'INVALID_VM');
    assert.deepEqual(slots.violations, [{ field: 'memorySlots', description: 'memorySlots 257 must be an integer between 0 and 256' }]);
    const pin = vmBody('vm-bad');
    pin.guestNodes[1]!.hostNodeId = 2;
    const pinned = expectProblem(await http(api, 'POST', '/v1/vms', { body: pin }), 400, 'INVALID_VM');
    assert.equal(pinned.violations[0].field, 'guestNodes[1].hostNodeId');
    assert.match(pinned.violations[0].description, /node 2 of host hv-1 is CXL with 0 CPUs; a guest CPU node needs a DRAM node with CPUs/);
    expectProblem(await http(api, 'POST', '/v1/vms', { body: vmBody('vm-bad', { host: 'hv-9' }) }), 400, 'VM_HOST_NOT_FOUND');
    expectProblem(await http(api, 'POST', '/v1/vms', { body: vmBody('vm-a') }), 409, 'VM_ALREADY_EXISTS');
    expectProblem(await http(api, 'POST', '/v1/vms', { body: { ...vmBody('vm-bad'), state: 'RUNNING' } }), 400, 'INVALID_BODY');
    expectProblem(await http(api, 'GET', '/v1/vms/vm-none'), 404, 'VM_NOT_FOUND');
    expectProblem(await http(api, 'POST', '/v1/vms/vm-a:reboot'), 404, 'ROUTE_NOT_FOUND');
    assert.equal((await sql(api, `select count(*) n from vms where name = 'vm-bad'`))[0].n, '0');
  });

  it('creates STATIC and DYNAMIC groups, resizes, lists and deletes them, keeping the ledger exact', async () => {
    const s1 = await http(api, 'POST', '/v1/vms/vm-a/memory-groups', { body: staticGroup('s1', GiB) });
    assert.equal(s1.status, 201, JSON.stringify(s1.body));
    assert.equal(s1.body.heldBytes, GiB);
    assert.deepEqual(s1.body.guestUnit, { mode: 'DIMM', unitBytes: GiB, memoryGroupUnitBytes: GiB });
    assert.equal(s1.body.usableBytes, GiB);
    assert.equal(s1.body.effectiveGuestNodeId, 2, 'the first CPU-less guest node after guest nodes 0 and 1');
    assert.equal(s1.body.guestNodeId, undefined);
    assert.deepEqual([s1.body.state, s1.body.desiredState, s1.body.operation, s1.body.hotplugged], ['PENDING', 'PRESENT', undefined, false]);

    const d1 = await http(api, 'POST', '/v1/vms/vm-a/memory-groups', { body: dynamicGroup('d1', 4 * GiB, GiB) });
    assert.equal(d1.status, 201, JSON.stringify(d1.body));
    assert.equal(d1.body.blockSizeBytes, 2 * MiB, 'virtio-mem block-size defaults to 2 MiB');
    assert.deepEqual(d1.body.guestUnit, { mode: 'SBM', unitBytes: 2 * MiB, memoryGroupUnitBytes: 128 * MiB });
    assert.equal(d1.body.heldBytes, GiB);
    const bbm = await http(api, 'POST', '/v1/vms/vm-a/memory-groups', { body: dynamicGroup('d-bbm', GiB, 0, 'p-main', { blockSizeBytes: 256 * MiB, onlineType: 'AUTO' }) });
    assert.equal(bbm.status, 201, JSON.stringify(bbm.body));
    assert.deepEqual(bbm.body.guestUnit, { mode: 'BBM', unitBytes: 256 * MiB, memoryGroupUnitBytes: 256 * MiB });
    assert.equal(bbm.body.heldBytes, 0, 'a DYNAMIC group holds its requested size only');

    let ledger = await http(api, 'GET', '/v1/pools/p-main/ledger');
    assert.equal(ledger.status, 200);
    assert.deepEqual(ledger.body.extents, [
      { vm: 'vm-a', memoryGroup: 's1', offsetBytes: 0, sizeBytes: GiB },
      { vm: 'vm-a', memoryGroup: 'd1', offsetBytes: GiB, sizeBytes: GiB },
    ]);
    assert.deepEqual([ledger.body.allocatedBytes, ledger.body.largestFreeBytes, ledger.body.fragmentationBasisPoints], [2 * GiB, 14 * GiB, 0]);

    const grown = await http(api, 'POST', '/v1/vms/vm-a/memory-groups/d1:resize', { body: { requestedBytes: 2 * GiB } });
    assert.equal(grown.status, 200, JSON.stringify(grown.body));
    assert.deepEqual([grown.body.requestedBytes, grown.body.heldBytes, grown.body.operation], [2 * GiB, 2 * GiB, undefined]);
    assert.notEqual(grown.body.etag, d1.body.etag);
    ledger = await http(api, 'GET', '/v1/pools/p-main/ledger');
    assert.deepEqual(ledger.body.extents[1], { vm: 'vm-a', memoryGroup: 'd1', offsetBytes: GiB, sizeBytes: 2 * GiB }, 'grown in place');
    const shrunk = await http(api, 'POST', '/v1/vms/vm-a/memory-groups/d1:resize', { body: { requestedBytes: 512 * MiB }, headers: { 'if-match': grown.body.etag } });
    assert.equal(shrunk.status, 200, JSON.stringify(shrunk.body));
    assert.equal(shrunk.body.heldBytes, 512 * MiB, 'a VM at rest gives a shrink back at once');
    expectProblem(await http(api, 'POST', '/v1/vms/vm-a/memory-groups/d1:resize', { body: { requestedBytes: GiB }, headers: { 'if-match': grown.body.etag } }), 412, 'ETAG_MISMATCH');
    assert.equal((await http(api, 'GET', '/v1/pools/p-main')).body.allocatedBytes, GiB + 512 * MiB);

    assert.equal((await http(api, 'DELETE', '/v1/vms/vm-a/memory-groups/s1')).status, 204);
    expectProblem(await http(api, 'GET', '/v1/vms/vm-a/memory-groups/s1'), 404, 'MEMORY_GROUP_NOT_FOUND');
    ledger = await http(api, 'GET', '/v1/pools/p-main/ledger');
    assert.deepEqual(ledger.body.extents, [{ vm: 'vm-a', memoryGroup: 'd1', offsetBytes: GiB, sizeBytes: 512 * MiB }]);
    assert.deepEqual(ledger.body.freeExtents, [
      { offsetBytes: 0, sizeBytes: GiB },
      { offsetBytes: GiB + 512 * MiB, sizeBytes: 14 * GiB + 512 * MiB },
    ]);
    // 1 − 14.5 / 15.5, in basis points.
    assert.deepEqual([ledger.body.largestFreeBytes, ledger.body.freeExtentCount, ledger.body.fragmentationBasisPoints], [14 * GiB + 512 * MiB, 2, 645]);
    // The next 1 GiB group takes the best fit: the hole s1 left.
    const s2 = await http(api, 'POST', '/v1/vms/vm-a/memory-groups', { body: staticGroup('s2', GiB) });
    assert.equal(s2.status, 201);
    ledger = await http(api, 'GET', '/v1/pools/p-main/ledger');
    assert.deepEqual(ledger.body.extents[0], { vm: 'vm-a', memoryGroup: 's2', offsetBytes: 0, sizeBytes: GiB });

    const list = await http(api, 'GET', '/v1/vms/vm-a/memory-groups?pageSize=2');
    assert.deepEqual(list.body.memoryGroups.map((g: { name: string }) => g.name), ['d-bbm', 'd1']);
    assert.equal(list.body.totalSize, 3);
    const rest = await http(api, 'GET', `/v1/vms/vm-a/memory-groups?pageSize=2&pageToken=${list.body.nextPageToken}`);
    assert.deepEqual(rest.body.memoryGroups.map((g: { name: string }) => g.name), ['s2']);
    const vm = await http(api, 'GET', '/v1/vms/vm-a');
    assert.deepEqual(vm.body.memoryReport.groups.map((g: { name: string }) => g.name), ['d1', 'd-bbm', 's2'], 'plug (creation) order');
    assert.equal(vm.body.memoryReport.heldBytes, GiB + 512 * MiB);
    assert.equal(vm.body.memoryReport.staticGroupCount, 1);
  });

  it('answers every rule with its name and numbers, and stores nothing', async () => {
    const before = await sql(api, `select (select count(*) from memory_groups) g, (select coalesce(sum(allocated_bytes), 0) from pools) a`);
    const post = (body: unknown) => http(api, 'POST', '/v1/vms/vm-a/memory-groups', { body });
    const odd = expectProblem(await post(staticGroup('bad', 129 * MiB)), 400, 'INVALID_MEMORY_GROUP');
    assert.deepEqual(odd.violations, [
      { field: 'sizeBytes', description: 'sizeBytes 129 MiB is not a multiple of 2 MiB (QEMU pc-dimm backend alignment)' },
      { field: 'sizeBytes', description: 'sizeBytes 129 MiB is not a multiple of the guest memory block size 128 MiB' },
    ]);
    const req = expectProblem(await post(dynamicGroup('bad', 4 * GiB, 3 * MiB)), 400, 'INVALID_MEMORY_GROUP');
    assert.deepEqual(req.violations, [{ field: 'requestedBytes', description: 'requestedBytes 3 MiB is not a multiple of blockSizeBytes 2 MiB' }]);
    const block = expectProblem(await post(dynamicGroup('bad', 3 * GiB, 0, 'p-main', { blockSizeBytes: 3 * MiB })), 400, 'INVALID_MEMORY_GROUP');
    assert.match(block.violations[0].description, /blockSizeBytes 3 MiB must be a power of two of at least 2 MiB/);
    const over = expectProblem(await post(dynamicGroup('bad', GiB, 2 * GiB)), 400, 'INVALID_MEMORY_GROUP');
    assert.deepEqual(over.violations, [{ field: 'requestedBytes', description: 'requestedBytes 2 GiB exceeds maxSizeBytes 1 GiB' }]);
    const node = expectProblem(await post({ ...staticGroup('bad', GiB), guestNodeId: 1 }), 400, 'INVALID_MEMORY_GROUP');
    assert.match(node.violations[0].description, /guestNodeId 1 is a guest CPU node \(0\.\.1\); memory groups go to CPU-less guest nodes \(2 and up\)/);
    expectProblem(await post({ ...staticGroup('bad', GiB), maxSizeBytes: GiB }), 400, 'INVALID_MEMORY_GROUP');
    expectProblem(await post({ ...staticGroup('bad', GiB), colour: 'red' }), 400, 'INVALID_BODY');
    expectProblem(await post(staticGroup('bad', GiB, 'p-none')), 400, 'MEMORY_GROUP_POOL_NOT_FOUND');
    const far = expectProblem(await post(staticGroup('bad', GiB, 'p-far')), 400, 'POOL_ON_OTHER_HOST');
    assert.equal(far.violations[0].description, 'pool p-far is on host hv-2, but the VM runs on host hv-1');
    const dev = expectProblem(await post(staticGroup('bad', GiB, 'p-devmem')), 400, 'POOL_MEMORY_NOT_CPU_ADDRESSABLE');
    assert.match(dev.violations[0].description, /pool p-devmem is device memory the CPU cannot address/);
    const drain = expectProblem(await post(staticGroup('bad', GiB, 'p-drain')), 409, 'POOL_NOT_ACTIVE');
    assert.equal(drain.detail, 'pool p-drain is DRAINING, not ACTIVE: it takes no new guest memory');
    expectProblem(await post(staticGroup('d1', GiB)), 409, 'MEMORY_GROUP_ALREADY_EXISTS');
    expectProblem(await http(api, 'POST', '/v1/vms/vm-none/memory-groups', { body: staticGroup('bad', GiB) }), 404, 'VM_NOT_FOUND');
    const resizeStatic = expectProblem(await http(api, 'POST', '/v1/vms/vm-a/memory-groups/s2:resize', { body: { requestedBytes: 2 * GiB } }), 409, 'GROUP_NOT_RESIZABLE');
    assert.match(resizeStatic.detail, /group vm-a\/s2 is STATIC \(a 1 GiB DIMM\): it is plugged and removed whole/);
    const resizeOdd = expectProblem(await http(api, 'POST', '/v1/vms/vm-a/memory-groups/d1:resize', { body: { requestedBytes: 5 * MiB } }), 400, 'INVALID_MEMORY_GROUP');
    assert.deepEqual(resizeOdd.violations, [{ field: 'requestedBytes', description: 'requestedBytes 5 MiB is not a multiple of blockSizeBytes 2 MiB' }]);
    expectProblem(await http(api, 'POST', '/v1/vms/vm-a/memory-groups/d1:grow', { body: { requestedBytes: GiB } }), 404, 'ROUTE_NOT_FOUND');
    const after = await sql(api, `select (select count(*) from memory_groups) g, (select coalesce(sum(allocated_bytes), 0) from pools) a`);
    assert.deepEqual(after, before);
  });

  it('enforces the VM limits: static groups ≤ slots, boot + groups ≤ maxmem', async () => {
    assert.equal((await http(api, 'POST', '/v1/vms', { body: vmBody('vm-lim', { guestNodes: oneNode(2 * GiB), memorySlots: 1, maxMemoryBytes: 6 * GiB }) })).status, 201);
    assert.equal((await http(api, 'POST', '/v1/vms/vm-lim/memory-groups', { body: staticGroup('l1', GiB) })).status, 201);
    const slots = expectProblem(await http(api, 'POST', '/v1/vms/vm-lim/memory-groups', { body: staticGroup('l2', 128 * MiB) }), 409, 'VM_HOTPLUG_HEADROOM_EXCEEDED');
    assert.deepEqual(slots.violations, [{ field: 'memorySlots', description: '2 static memory groups need 2 memory slots but the VM has 1' }]);
    const maxmem = expectProblem(await http(api, 'POST', '/v1/vms/vm-lim/memory-groups', { body: dynamicGroup('l3', 4 * GiB, 0) }), 409, 'VM_HOTPLUG_HEADROOM_EXCEEDED');
    assert.deepEqual(maxmem.violations, [{ field: 'maxMemoryBytes', description: 'boot memory 2 GiB + memory groups 5 GiB = 7 GiB exceeds maxMemoryBytes 6 GiB' }]);
    assert.equal((await http(api, 'POST', '/v1/vms/vm-lim/memory-groups', { body: dynamicGroup('l3', 3 * GiB, 0) })).status, 201, 'exactly maxmem fits');
  });

  it('never hands out more than a pool has, and growth needs the pool to cover it', async () => {
    assert.equal((await http(api, 'POST', '/v1/vms', { body: vmBody('vm-cap', { memorySlots: 4 }) })).status, 201);
    assert.equal((await http(api, 'POST', '/v1/vms/vm-cap/memory-groups', { body: staticGroup('c1', GiB, 'p-small') })).status, 201);
    const full = expectProblem(await http(api, 'POST', '/v1/vms/vm-cap/memory-groups', { body: staticGroup('c2', 128 * MiB, 'p-small') }), 429, 'POOL_CAPACITY_EXHAUSTED');
    assert.equal(full.code, 'RESOURCE_EXHAUSTED');
    assert.equal(full.detail, 'pool p-small: pool cannot hold 128 MiB more for group vm-cap/c2: needed 128 MiB, free 0 B, largest free extent 0 B');
    assert.deepEqual(full.metadata, { neededBytes: String(128 * MiB), freeBytes: '0', largestFreeBytes: '0', pool: 'p-small', memoryGroup: 'vm-cap/c2' });
    assert.equal((await http(api, 'GET', '/v1/vms/vm-cap/memory-groups/c2')).status, 404, 'a refused group leaves nothing behind');
    const d = await http(api, 'POST', '/v1/vms/vm-cap/memory-groups', { body: dynamicGroup('cd', GiB, 0, 'p-small') });
    assert.equal(d.status, 201, 'requesting 0 bytes holds nothing');
    const grow = expectProblem(await http(api, 'POST', '/v1/vms/vm-cap/memory-groups/cd:resize', { body: { requestedBytes: 2 * MiB } }), 429, 'POOL_CAPACITY_EXHAUSTED');
    assert.match(grow.detail, /needed 128 MiB, free 0 B/, 'a 2 MiB request holds a whole 128 MiB granule');
    assert.equal((await http(api, 'DELETE', '/v1/vms/vm-cap/memory-groups/c1')).status, 204);
    const ok = await http(api, 'POST', '/v1/vms/vm-cap/memory-groups/cd:resize', { body: { requestedBytes: 512 * MiB } });
    assert.deepEqual([ok.status, ok.body.heldBytes], [200, 512 * MiB]);
    // A draining pool keeps what it gave, lets groups shrink, refuses growth.
    assert.equal((await http(api, 'PATCH', '/v1/pools/p-small', { body: { state: 'DRAINING' } })).status, 200);
    assert.equal((await http(api, 'POST', '/v1/vms/vm-cap/memory-groups/cd:resize', { body: { requestedBytes: 256 * MiB } })).status, 200);
    expectProblem(await http(api, 'POST', '/v1/vms/vm-cap/memory-groups/cd:resize', { body: { requestedBytes: 768 * MiB } }), 409, 'POOL_NOT_ACTIVE');
    assert.equal((await http(api, 'PATCH', '/v1/pools/p-small', { body: { state: 'ACTIVE' } })).status, 200);
    // Capacity cannot shrink under an extent.
    const ledger = await http(api, 'GET', '/v1/pools/p-small/ledger');
    assert.deepEqual(ledger.body.extents, [{ vm: 'vm-cap', memoryGroup: 'cd', offsetBytes: 0, sizeBytes: 256 * MiB }]);
    assert.deepEqual(await poolRow(api, 'p-small'), { allocated: 256 * MiB, extents: 1, sum: 256 * MiB });
  });

  it('makes group mutations idempotent with a request id', async () => {
    const body = staticGroup('idem', GiB);
    const before = await poolRow(api, 'p-main');
    const a = await http(api, 'POST', '/v1/vms/vm-cap/memory-groups?requestId=grp-0001', { body });
    const b = await http(api, 'POST', '/v1/vms/vm-cap/memory-groups', { body, headers: { 'idempotency-key': 'grp-0001' } });
    assert.deepEqual([a.status, b.status], [201, 201]);
    assert.equal(b.body.uid, a.body.uid);
    assert.equal((await poolRow(api, 'p-main')).allocated, before.allocated + GiB, 'held once');
    expectProblem(await http(api, 'POST', '/v1/vms/vm-cap/memory-groups?requestId=grp-0001', { body: staticGroup('idem-2', GiB) }), 400, 'REQUEST_ID_REUSED');
    // Twenty concurrent retries of one request create one group and hold its extents once.
    const racing = await Promise.all(Array.from({ length: 20 }, () => http(api, 'POST', '/v1/vms/vm-cap/memory-groups?requestId=grp-race', { body: dynamicGroup('race', 2 * GiB, GiB) })));
    assert.deepEqual(new Set(racing.map((r) => r.status)), new Set([201]), JSON.stringify(racing.map((r) => r.body)));
    assert.equal(new Set(racing.map((r) => r.body.uid)).size, 1);
    assert.equal((await poolRow(api, 'p-main')).allocated, before.allocated + 2 * GiB);
    // Resize and delete replay their first answer too.
    const r1 = await http(api, 'POST', '/v1/vms/vm-cap/memory-groups/race:resize?requestId=rs-1', { body: { requestedBytes: 2 * GiB } });
    const r2 = await http(api, 'POST', '/v1/vms/vm-cap/memory-groups/race:resize?requestId=rs-1', { body: { requestedBytes: 2 * GiB } });
    assert.deepEqual([r1.status, r2.status, r2.body.etag], [200, 200, r1.body.etag]);
    const d1 = await http(api, 'DELETE', '/v1/vms/vm-cap/memory-groups/race?requestId=del-1');
    const d2 = await http(api, 'DELETE', '/v1/vms/vm-cap/memory-groups/race?requestId=del-1');
    assert.deepEqual([d1.status, d2.status], [204, 204]);
    assert.equal((await poolRow(api, 'p-main')).allocated, before.allocated + GiB);
    assert.equal(Number((await sql(api, `select count(*) n from audit_log where method = 'CreateMemoryGroup' and request_id = 'grp-race'`))[0].n), 1, 'replays are not audited twice');
  });

  it('reports usable bytes under memmap_on_memory and the online-zone ratio with warnings', async () => {
    const mm = await http(api, 'POST', '/v1/vms', { body: vmBody('vm-mm', { guestNodes: oneNode(GiB), guestMemory: { memmapOnMemory: true }, maxMemoryBytes: 16 * GiB }) });
    assert.equal(mm.status, 201, JSON.stringify(mm.body));
    const dimm = await http(api, 'POST', '/v1/vms/vm-mm/memory-groups', { body: staticGroup('m1', GiB) });
    // 8 blocks of 128 MiB, each giving 2 MiB of struct pages to its own vmemmap.
    assert.deepEqual([dimm.body.usableBytes, dimm.body.memmapPlacement, dimm.body.vmemmapBytes], [GiB - 16 * MiB, 'SELF_HOSTED', 16 * MiB]);
    const vmem = await http(api, 'POST', '/v1/vms/vm-mm/memory-groups', { body: dynamicGroup('m2', 8 * GiB, 4 * GiB) });
    assert.deepEqual([vmem.body.usableBytes, vmem.body.memmapPlacement], [4 * GiB, 'NOT_REQUESTED_BY_DRIVER'], 'virtio-mem never self-hosts its memmap');
    const report = (await http(api, 'GET', '/v1/vms/vm-mm')).body.memoryReport;
    assert.equal(report.memmapOnMemory, true);
    assert.deepEqual([report.global.movableBytes, report.global.kernelEarlyBytes, report.global.ratioPercent, report.global.exceeds], [5 * GiB, GiB, 500, true]);
    const w = report.warnings.find((x: { code: string; guestNodeId?: number }) => x.code === 'MOVABLE_RATIO_EXCEEDED' && x.guestNodeId === undefined);
    assert.ok(w, JSON.stringify(report.warnings));
    assert.match(w.message, /the whole VM: movable memory 5 GiB is 500 % of early kernel memory 1 GiB, above auto_movable_ratio 301 % \(limit 3156212 KiB\)/);

    // 6.1 carves the memmap only from a hot-added range of exactly one block.
    assert.equal((await http(api, 'POST', '/v1/vms', { body: vmBody('vm-61', { kernelProfile: 'linux-6.1', guestNodes: oneNode(GiB), guestMemory: { memmapOnMemory: true }, memorySlots: 4 }) })).status, 201);
    const big = await http(api, 'POST', '/v1/vms/vm-61/memory-groups', { body: staticGroup('b', GiB) });
    assert.deepEqual([big.body.usableBytes, big.body.memmapPlacement], [GiB, 'RANGE_NOT_ONE_BLOCK']);
    const one = await http(api, 'POST', '/v1/vms/vm-61/memory-groups', { body: staticGroup('o', 128 * MiB) });
    assert.deepEqual([one.body.usableBytes, one.body.memmapPlacement], [126 * MiB, 'SELF_HOSTED']);

    // auto-movable with NUMA awareness never onlines MOVABLE on a node with no boot memory.
    assert.equal((await http(api, 'POST', '/v1/vms', { body: vmBody('vm-auto', { guestNodes: oneNode(4 * GiB), guestMemory: { onlinePolicy: 'AUTO_MOVABLE' } }) })).status, 201);
    assert.equal((await http(api, 'POST', '/v1/vms/vm-auto/memory-groups', { body: dynamicGroup('a1', GiB, 256 * MiB, 'p-main', { onlineType: 'AUTO' }) })).status, 201);
    const auto = (await http(api, 'GET', '/v1/vms/vm-auto')).body.memoryReport;
    assert.deepEqual(
      auto.groups.map((g: { name: string; zone: string; decidedBy: string; kernelBytes: number }) => [g.name, g.zone, g.decidedBy, g.kernelBytes]),
      [['a1', 'KERNEL', 'AUTO_MOVABLE', 256 * MiB]],
    );
    const fallback = auto.warnings.find((x: { code: string }) => x.code === 'AUTO_MOVABLE_FALLS_BACK_TO_KERNEL');
    assert.ok(fallback, JSON.stringify(auto.warnings));
    assert.equal(fallback.groupId, 'a1');
    assert.match(fallback.message, /^group a1: auto-movable onlines 256 MiB to a kernel zone instead of ZONE_MOVABLE: on guest node 1 /);
  });

  it('records operations for a running VM, lists them, and cancelling puts desired state and capacity back', async () => {
    assert.equal((await http(api, 'POST', '/v1/vms', { body: vmBody('vm-run', { guestNodes: oneNode(2 * GiB), memorySlots: 4, maxMemoryBytes: 32 * GiB }) })).status, 201);
    assert.equal((await http(api, 'POST', '/v1/vms/vm-run/memory-groups', { body: staticGroup('r-s', GiB, 'p-run') })).status, 201);
    assert.equal((await http(api, 'POST', '/v1/vms/vm-run/memory-groups', { body: dynamicGroup('r-d', 4 * GiB, 512 * MiB, 'p-run') })).status, 201);
    assert.equal(Number((await sql(api, `select count(*) n from operations`))[0].n), 0, 'changes to a VM at rest need no operation');
    const base = await poolRow(api, 'p-run');
    assert.equal(base.allocated, GiB + 512 * MiB);

    const start = await http(api, 'POST', '/v1/vms/vm-run:start', { body: {} });
    assert.equal(start.status, 202, JSON.stringify(start.body));
    assert.deepEqual([start.body.kind, start.body.state, start.body.vm, start.body.progressPercent], ['START', 'PENDING', 'vm-run', 0]);
    assert.deepEqual(start.body.steps.map((s: { name: string }) => s.name), ['compile-topology', 'launch-qemu', 'wait-guest-agent']);
    assert.equal((await http(api, 'GET', '/v1/vms/vm-run')).body.state, 'STARTING');
    const again = expectProblem(await http(api, 'POST', '/v1/vms/vm-run:start'), 409, 'VM_STATE_CONFLICT');
    assert.equal(again.detail, 'vm vm-run is STARTING; start needs DEFINED or STOPPED or FAILED');
    await markRunning(api, 'vm-run', start.body.name);
    assert.equal((await http(api, 'GET', '/v1/vms/vm-run')).body.state, 'RUNNING');

    // Plug: the group exists at once with its capacity reserved, and a PLUG operation + outbox row record the work.
    const hot = await http(api, 'POST', '/v1/vms/vm-run/memory-groups', { body: dynamicGroup('r-hot', 2 * GiB, 512 * MiB, 'p-run') });
    assert.equal(hot.status, 201, JSON.stringify(hot.body));
    assert.deepEqual([hot.body.heldBytes, hot.body.hotplugged, hot.body.state, typeof hot.body.operation], [512 * MiB, true, 'PENDING', 'string']);
    const plug = await http(api, 'GET', `/v1/operations/${hot.body.operation}`);
    assert.deepEqual([plug.body.kind, plug.body.state, plug.body.memoryGroup], ['PLUG', 'PENDING', 'r-hot']);
    const [box] = await sql(api, `select topic, payload from outbox where key = $1`, [hot.body.operation]);
    assert.deepEqual([box.topic, box.payload], ['operations', { v: 1, operation: hot.body.operation, vm: 'vm-run', kind: 'PLUG', memoryGroup: 'r-hot' }]);
    const pending = await http(api, 'GET', '/v1/operations?vm=vm-run&state=PENDING');
    assert.deepEqual(pending.body.operations.map((o: { kind: string }) => o.kind), ['PLUG']);
    const ports = expectProblem(await http(api, 'POST', '/v1/vms/vm-run/memory-groups', { body: dynamicGroup('r-hot2', GiB, 0, 'p-run') }), 409, 'VM_PCIE_PORTS_EXHAUSTED');
    assert.match(ports.detail, /2 DYNAMIC groups added while vm vm-run runs need 2 spare PCIe root ports but the VM was launched with 1/);
    const busy = expectProblem(await http(api, 'POST', '/v1/vms/vm-run/memory-groups/r-hot:resize', { body: { requestedBytes: GiB } }), 409, 'GROUP_OPERATION_IN_PROGRESS');
    assert.match(busy.detail, /group vm-run\/r-hot has PLUG operation .* PENDING/);
    assert.equal((await poolRow(api, 'p-run')).allocated, base.allocated + 512 * MiB);

    // Cancel the plug: the group goes and its extents return; cancelling again changes nothing.
    const cancelled = await http(api, 'POST', `/v1/operations/${hot.body.operation}:cancel`);
    assert.deepEqual([cancelled.status, cancelled.body.state, typeof cancelled.body.endTime], [200, 'CANCELLED', 'string']);
    expectProblem(await http(api, 'GET', '/v1/vms/vm-run/memory-groups/r-hot'), 404, 'MEMORY_GROUP_NOT_FOUND');
    assert.deepEqual(await poolRow(api, 'p-run'), base);
    assert.equal((await http(api, 'POST', `/v1/operations/${hot.body.operation}:cancel`)).body.state, 'CANCELLED');

    // Grow: reserved now, undone by cancel.
    const grow = await http(api, 'POST', '/v1/vms/vm-run/memory-groups/r-d:resize', { body: { requestedBytes: GiB } });
    assert.deepEqual([grow.status, grow.body.requestedBytes, grow.body.heldBytes, grow.body.state], [200, GiB, GiB, 'RESIZING']);
    assert.equal((await http(api, 'GET', `/v1/operations/${grow.body.operation}`)).body.kind, 'RESIZE');
    assert.equal((await poolRow(api, 'p-run')).allocated, base.allocated + 512 * MiB);
    assert.equal((await http(api, 'POST', `/v1/operations/${grow.body.operation}:cancel`)).status, 200);
    let rd = await http(api, 'GET', '/v1/vms/vm-run/memory-groups/r-d');
    assert.deepEqual([rd.body.requestedBytes, rd.body.heldBytes, rd.body.state, rd.body.operation], [512 * MiB, 512 * MiB, 'PENDING', undefined]);
    assert.deepEqual(await poolRow(api, 'p-run'), base);

    // Shrink: the extents stay until the guest has given the memory back.
    const shrink = await http(api, 'POST', '/v1/vms/vm-run/memory-groups/r-d:resize', { body: { requestedBytes: 256 * MiB } });
    assert.deepEqual([shrink.body.requestedBytes, shrink.body.heldBytes], [256 * MiB, 512 * MiB]);
    assert.equal((await http(api, 'POST', `/v1/operations/${shrink.body.operation}:cancel`)).status, 200);
    rd = await http(api, 'GET', '/v1/vms/vm-run/memory-groups/r-d');
    assert.deepEqual([rd.body.requestedBytes, rd.body.heldBytes], [512 * MiB, 512 * MiB]);

    // Unplug: 202 with the group marked ABSENT; capacity held until done; cancel makes it PRESENT again.
    const unplug = await http(api, 'DELETE', '/v1/vms/vm-run/memory-groups/r-s');
    assert.equal(unplug.status, 202, JSON.stringify(unplug.body));
    assert.deepEqual([unplug.body.desiredState, unplug.body.state, unplug.body.heldBytes], ['ABSENT', 'UNPLUGGING', GiB]);
    assert.equal((await http(api, 'GET', `/v1/operations/${unplug.body.operation}`)).body.kind, 'UNPLUG');
    assert.deepEqual(await poolRow(api, 'p-run'), base);
    assert.equal((await http(api, 'POST', `/v1/operations/${unplug.body.operation}:cancel`)).status, 200);
    const rs = await http(api, 'GET', '/v1/vms/vm-run/memory-groups/r-s');
    assert.deepEqual([rs.body.desiredState, rs.body.state], ['PRESENT', 'PENDING']);

    // A RUNNING unplug is cancelled by asking its worker to stop and compensate: it stays
    // RUNNING until the worker ends it. (TEST-ONLY: a worker would move it to RUNNING.)
    const unplug2 = await http(api, 'DELETE', '/v1/vms/vm-run/memory-groups/r-s');
    await new OperationRepository().setState(api.running.runtime.db.sql, unplug2.body.operation, 'RUNNING');
    const running = await http(api, 'POST', `/v1/operations/${unplug2.body.operation}:cancel`);
    assert.equal(running.status, 200, JSON.stringify(running.body));
    assert.equal(running.body.state, 'RUNNING');
    const flag = await api.running.runtime.db.sql.query<{ c: boolean }>(`select cancel_requested as c from operations where id = $1::uuid`, [unplug2.body.operation]);
    assert.equal(flag[0]!.c, true);
    assert.equal((await http(api, 'GET', `/v1/operations/${unplug2.body.operation}`)).body.attempts, 1);

    // Listing: filtered by VM and state, newest first, paged.
    const cancelledOps = await http(api, 'GET', '/v1/operations?vm=vm-run&state=CANCELLED');
    assert.deepEqual(cancelledOps.body.operations.map((o: { kind: string }) => o.kind), ['UNPLUG', 'RESIZE', 'RESIZE', 'PLUG']);
    const page1 = await http(api, 'GET', '/v1/operations?vm=vm-run&pageSize=2');
    assert.equal(page1.body.totalSize, 6);
    const page2 = await http(api, 'GET', `/v1/operations?vm=vm-run&pageSize=2&pageToken=${page1.body.nextPageToken}`);
    assert.notDeepEqual(page2.body.operations[0].name, page1.body.operations[0].name);
    assert.deepEqual((await http(api, 'GET', '/v1/operations?vm=vm-none')).body.operations, []);
    expectProblem(await http(api, 'GET', '/v1/operations?state=DONE'), 400, 'INVALID_QUERY');
    expectProblem(await http(api, 'GET', '/v1/operations/not-a-uuid'), 404, 'OPERATION_NOT_FOUND');
    expectProblem(await http(api, 'GET', '/v1/operations/6f1d3a52-0000-4000-8000-000000000001'), 404, 'OPERATION_NOT_FOUND');
    expectProblem(await http(api, 'POST', '/v1/operations/6f1d3a52-0000-4000-8000-000000000001:cancel'), 404, 'OPERATION_NOT_FOUND');

    // Roles: a viewer reads, an operator cancels but does not change VMs.
    const viewer = (await http(api, 'POST', '/v1/api-keys', { body: { name: 'ops-viewer', role: 'viewer' } })).body.secret;
    const operator = (await http(api, 'POST', '/v1/api-keys', { body: { name: 'ops-operator', role: 'operator' } })).body.secret;
    assert.equal((await http(api, 'GET', '/v1/operations', { key: viewer })).status, 200);
    expectProblem(await http(api, 'POST', `/v1/operations/${unplug2.body.operation}:cancel`, { key: viewer }), 403, 'ROLE_NOT_ALLOWED');
    expectProblem(await http(api, 'POST', '/v1/vms/vm-run/memory-groups', { key: operator, body: staticGroup('r-x', GiB, 'p-run') }), 403, 'ROLE_NOT_ALLOWED');

    // Stop: STOPPING takes no group changes; cancelling the STOP puts the VM back to RUNNING.
    expectProblem(await http(api, 'DELETE', '/v1/vms/vm-run'), 409, 'VM_STATE_CONFLICT');
    const stop = await http(api, 'POST', '/v1/vms/vm-run:stop');
    assert.deepEqual([stop.status, stop.body.kind], [202, 'STOP']);
    assert.equal((await http(api, 'GET', '/v1/vms/vm-run')).body.state, 'STOPPING');
    expectProblem(await http(api, 'POST', '/v1/vms/vm-run/memory-groups', { body: staticGroup('r-late', GiB, 'p-run') }), 409, 'VM_STATE_CONFLICT');
    const stopCancel = await http(api, 'POST', `/v1/operations/${stop.body.name}:cancel`, { key: operator });
    assert.deepEqual([stopCancel.status, stopCancel.body.state], [200, 'CANCELLED']);
    assert.equal((await http(api, 'GET', '/v1/vms/vm-run')).body.state, 'RUNNING');
    assert.equal(Number((await sql(api, `select count(*) n from outbox o join operations op on op.id::text = o.key join vms v on v.id = op.vm_id where v.name = 'vm-run'`))[0].n), 7, 'one outbox message per operation');
  });

  it('cancelling a START puts the VM back where it was', async () => {
    const start = await http(api, 'POST', '/v1/vms/vm-lim:start');
    assert.equal(start.status, 202);
    assert.equal((await http(api, 'GET', '/v1/vms/vm-lim')).body.state, 'STARTING');
    const cancelled = await http(api, 'POST', `/v1/operations/${start.body.name}:cancel`, { body: {} });
    assert.deepEqual([cancelled.status, cancelled.body.state], [200, 'CANCELLED']);
    assert.equal((await http(api, 'GET', '/v1/vms/vm-lim')).body.state, 'DEFINED');
    expectProblem(await http(api, 'POST', `/v1/operations/${start.body.name}:cancel`, { body: { force: true } }), 400, 'INVALID_BODY');
  });

  it('deleting a VM returns its capacity; hosts and pools in use are kept', async () => {
    expectProblem(await http(api, 'DELETE', '/v1/hosts/hv-1'), 409, 'HOST_HAS_VMS');
    expectProblem(await http(api, 'DELETE', '/v1/pools/p-main'), 409, 'POOL_HAS_MEMORY_GROUPS');
    // Capacity may not shrink below the end of the highest extent, even when the bytes allocated would fit.
    assert.equal((await http(api, 'POST', '/v1/pools', { body: { name: 'p-frag', host: 'hv-1', hostNodeId: 2, capacityBytes: 4 * GiB } })).status, 201);
    assert.equal((await http(api, 'POST', '/v1/vms', { body: vmBody('vm-frag', { memorySlots: 4 }) })).status, 201);
    for (const g of ['f1', 'f2']) assert.equal((await http(api, 'POST', '/v1/vms/vm-frag/memory-groups', { body: staticGroup(g, GiB, 'p-frag') })).status, 201);
    assert.equal((await http(api, 'DELETE', '/v1/vms/vm-frag/memory-groups/f1')).status, 204);
    const shrink = expectProblem(await http(api, 'PATCH', '/v1/pools/p-frag', { body: { capacityBytes: GiB } }), 409, 'POOL_CAPACITY_BELOW_EXTENTS');
    assert.equal(shrink.detail, 'capacityBytes 1 GiB would cut through extents that reach 2 GiB of the pool; release or move the groups at the end first');
    assert.equal((await http(api, 'PATCH', '/v1/pools/p-frag', { body: { capacityBytes: 2 * GiB } })).status, 200);
    const before = await poolRow(api, 'p-main');
    const held = Number((await sql(api, `select coalesce(sum(g.held_bytes), 0) s from memory_groups g join vms v on v.id = g.vm_id join pools p on p.id = g.pool_id where v.name = 'vm-a' and p.name = 'p-main'`))[0].s);
    assert.ok(held > 0);
    assert.equal((await http(api, 'DELETE', '/v1/vms/vm-a')).status, 204);
    expectProblem(await http(api, 'GET', '/v1/vms/vm-a'), 404, 'VM_NOT_FOUND');
    assert.deepEqual(await poolRow(api, 'p-main'), { allocated: before.allocated - held, extents: before.extents - 2, sum: before.sum - held });
    const ledger = await http(api, 'GET', '/v1/pools/p-main/ledger');
    assert.ok(ledger.body.extents.every((e: { vm: string }) => e.vm !== 'vm-a'));
  });
});

describe('VMs, memory groups, the ledger and operations over gRPC', () => {
  let api: TestApi;
  let vms: VmServiceClient;
  let groups: MemoryGroupServiceClient;
  let ops: OperationServiceClient;
  let ledger: LedgerServiceClient;
  const md = () => grpcMetadata(api.adminKey);
  async function expectError(p: Promise<unknown>, code: status, reason?: string): Promise<ReturnType<typeof errorDetails>> {
    try {
      await p;
    } catch (e) {
      const d = errorDetails(e as ServiceError);
      assert.equal(d.code, code, (e as Error).message);
      if (reason) assert.equal(d.reason, reason, (e as Error).message);
      return d;
    }
    assert.fail(`expected gRPC status ${status[code]}`);
  }
  const vmMessage = (name: string, o: Partial<Vm> = {}): Partial<Vm> => ({
    name,
    host: 'g-hv',
    kernelProfile: 'linux-6.12',
    guestNodes: [{ guestNodeId: 0, vcpus: 2, bootMemoryBytes: BigInt(2 * GiB) }],
    memorySlots: 2,
    maxMemoryBytes: BigInt(16 * GiB),
    sparePciePorts: 1,
    ...o,
  });
  const dimm = (name: string, size: number, pool = 'g-pool'): Partial<MemoryGroup> => ({
    name,
    pool,
    kind: MemoryGroupKind.MEMORY_GROUP_KIND_STATIC,
    sizeBytes: BigInt(size),
    onlineType: GroupOnlineType.GROUP_ONLINE_TYPE_ONLINE_MOVABLE,
  });
  const vmem = (name: string, max: number, requested: number, pool = 'g-pool'): Partial<MemoryGroup> => ({
    name,
    pool,
    kind: MemoryGroupKind.MEMORY_GROUP_KIND_DYNAMIC,
    maxSizeBytes: BigInt(max),
    requestedBytes: BigInt(requested),
    onlineType: GroupOnlineType.GROUP_ONLINE_TYPE_ONLINE_MOVABLE,
  });
  const createGroup = (vm: string, g: Partial<MemoryGroup>, requestId = '') =>
    call<unknown, MemoryGroup>(groups, 'createMemoryGroup', CreateMemoryGroupRequest.fromPartial({ vm, memoryGroup: g, requestId }), md());

  before(async () => {
    api = await startTestApi();
    vms = new VmServiceClient(api.grpc, insecure());
    groups = new MemoryGroupServiceClient(api.grpc, insecure());
    ops = new OperationServiceClient(api.grpc, insecure());
    ledger = new LedgerServiceClient(api.grpc, insecure());
    assert.equal((await http(api, 'POST', '/v1/hosts', { body: sampleHost('g-hv') })).status, 201);
    for (const p of [
      { name: 'g-pool', host: 'g-hv', hostNodeId: 2, capacityBytes: 8 * GiB },
      { name: 'g-drain', host: 'g-hv', hostNodeId: 2, capacityBytes: 2 * GiB, state: 'DRAINING' },
      { name: 'g-tiny', host: 'g-hv', hostNodeId: 2, capacityBytes: GiB },
    ]) {
      assert.equal((await http(api, 'POST', '/v1/pools', { body: p })).status, 201);
    }
  });
  after(async () => {
    for (const c of [vms, groups, ops, ledger]) c?.close();
    await api?.stop();
  });

  it('creates a VM and its groups, resizes, lists, reads the ledger and deletes', async () => {
    const vm = await call<unknown, Vm>(vms, 'createVm', CreateVmRequest.fromPartial({ vm: vmMessage('g-vm'), requestId: 'gvm-1' }), md());
    assert.equal(vm.state, VmState.VM_STATE_DEFINED);
    assert.equal(vm.memoryReport?.memoryBlockSizeBytes, BigInt(128 * MiB));
    const again = await call<unknown, Vm>(vms, 'createVm', CreateVmRequest.fromPartial({ vm: vmMessage('g-vm'), requestId: 'gvm-1' }), md());
    assert.equal(again.uid, vm.uid, 'a retried request_id answers with the first result');

    const s = await createGroup('g-vm', dimm('gs', GiB), 'gs-1');
    assert.equal(s.heldBytes, BigInt(GiB));
    assert.deepEqual(s.guestUnit, { mode: GuestUnitMode.GUEST_UNIT_MODE_DIMM, unitBytes: BigInt(GiB), memoryGroupUnitBytes: BigInt(GiB) });
    assert.equal(s.state, MemoryGroupState.MEMORY_GROUP_STATE_PENDING);
    assert.equal(s.effectiveGuestNodeId, 1);
    assert.equal((await createGroup('g-vm', dimm('gs', GiB), 'gs-1')).uid, s.uid, 'idempotent');
    const d = await createGroup('g-vm', vmem('gd', 4 * GiB, GiB));
    assert.equal(d.guestUnit?.mode, GuestUnitMode.GUEST_UNIT_MODE_SBM);
    const grown = await call<unknown, MemoryGroup>(groups, 'resizeMemoryGroup', ResizeMemoryGroupRequest.fromPartial({ vm: 'g-vm', name: 'gd', requestedBytes: BigInt(3 * GiB) }), md());
    assert.equal(grown.heldBytes, BigInt(3 * GiB));
    const got = await call<unknown, MemoryGroup>(groups, 'getMemoryGroup', GetMemoryGroupRequest.fromPartial({ vm: 'g-vm', name: 'gd' }), md());
    assert.equal(got.requestedBytes, BigInt(3 * GiB));
    const list = await call<unknown, { memoryGroups: MemoryGroup[]; totalSize: number }>(groups, 'listMemoryGroups', ListMemoryGroupsRequest.fromPartial({ vm: 'g-vm' }), md());
    assert.deepEqual(list.memoryGroups.map((g) => g.name), ['gd', 'gs']);
    const l = await call<unknown, PoolLedger>(ledger, 'getPoolLedger', GetPoolLedgerRequest.fromPartial({ pool: 'g-pool' }), md());
    assert.deepEqual(
      l.extents.map((e) => [e.memoryGroup, Number(e.offsetBytes) / GiB, Number(e.sizeBytes) / GiB]),
      [
        ['gs', 0, 1],
        ['gd', 1, 3],
      ],
    );
    assert.deepEqual([l.allocatedBytes, l.largestFreeBytes, l.fragmentationBasisPoints], [BigInt(4 * GiB), BigInt(4 * GiB), 0]);
    const report = (await call<unknown, Vm>(vms, 'getVm', GetVmRequest.fromPartial({ name: 'g-vm' }), md())).memoryReport!;
    assert.deepEqual(report.groups.map((g) => g.memoryGroup), ['gs', 'gd']);
    assert.equal(report.global?.guestNodeId, undefined, 'the global ratio has no node');
    assert.equal(report.global?.ratioPercent, 200);
    const listed = await call<unknown, { vms: Vm[] }>(vms, 'listVms', ListVmsRequest.fromPartial({ host: 'g-hv' }), md());
    assert.deepEqual(listed.vms.map((v) => v.name), ['g-vm']);

    const gone = await call<unknown, MemoryGroup>(groups, 'deleteMemoryGroup', DeleteMemoryGroupRequest.fromPartial({ vm: 'g-vm', name: 'gs' }), md());
    assert.deepEqual([gone.desiredState, gone.operation], [GroupDesiredState.GROUP_DESIRED_STATE_ABSENT, ''], 'deleted at once: no operation');
    await expectError(call(groups, 'getMemoryGroup', GetMemoryGroupRequest.fromPartial({ vm: 'g-vm', name: 'gs' }), md()), status.NOT_FOUND, 'MEMORY_GROUP_NOT_FOUND');
  });

  it('answers rule violations with precise codes, reasons and field violations', async () => {
    await call(vms, 'createVm', CreateVmRequest.fromPartial({ vm: vmMessage('g-lim', { memorySlots: 1, maxMemoryBytes: BigInt(4 * GiB) }) }), md());
    const odd = await expectError(createGroup('g-lim', dimm('x', 100 * MiB)), status.INVALID_ARGUMENT, 'INVALID_MEMORY_GROUP');
    assert.deepEqual(odd.violations, [{ field: 'sizeBytes', description: 'sizeBytes 100 MiB is not a multiple of the guest memory block size 128 MiB' }]);
    const range = await expectError(createGroup('g-lim', { ...dimm('x', GiB), sizeBytes: 2n ** 62n }), status.INVALID_ARGUMENT);
    assert.deepEqual(range.violations.map((v) => v.field), ['memoryGroup.sizeBytes']);
    await expectError(createGroup('g-lim', { ...dimm('x', GiB), kind: MemoryGroupKind.MEMORY_GROUP_KIND_UNSPECIFIED }), status.INVALID_ARGUMENT);
    await expectError(createGroup('g-lim', dimm('x', GiB, 'g-drain')), status.FAILED_PRECONDITION, 'POOL_NOT_ACTIVE');
    await createGroup('g-lim', dimm('l1', GiB));
    const slots = await expectError(createGroup('g-lim', dimm('l2', 128 * MiB)), status.FAILED_PRECONDITION, 'VM_HOTPLUG_HEADROOM_EXCEEDED');
    assert.deepEqual(slots.violations, [{ field: 'memorySlots', description: '2 static memory groups need 2 memory slots but the VM has 1' }]);
    const maxmem = await expectError(createGroup('g-lim', vmem('l3', 2 * GiB, 0)), status.FAILED_PRECONDITION, 'VM_HOTPLUG_HEADROOM_EXCEEDED');
    assert.deepEqual(maxmem.violations, [{ field: 'maxMemoryBytes', description: 'boot memory 2 GiB + memory groups 3 GiB = 5 GiB exceeds maxMemoryBytes 4 GiB' }]);
    await createGroup('g-lim', vmem('l4', GiB, 0, 'g-tiny'));
    const tooBig = await expectError(
      call(groups, 'resizeMemoryGroup', ResizeMemoryGroupRequest.fromPartial({ vm: 'g-lim', name: 'l4', requestedBytes: BigInt(2 * GiB) }), md()),
      status.INVALID_ARGUMENT,
      'INVALID_MEMORY_GROUP',
    );
    assert.deepEqual(tooBig.violations, [{ field: 'requestedBytes', description: 'requestedBytes 2 GiB exceeds maxSizeBytes 1 GiB' }]);
    const l4 = await call<unknown, MemoryGroup>(groups, 'resizeMemoryGroup', ResizeMemoryGroupRequest.fromPartial({ vm: 'g-lim', name: 'l4', requestedBytes: BigInt(GiB) }), md());
    assert.equal(l4.heldBytes, BigInt(GiB), 'g-tiny is now full');
    await expectError(call(vms, 'getVm', GetVmRequest.fromPartial({ name: 'g-none' }), md()), status.NOT_FOUND, 'VM_NOT_FOUND');
    await expectError(call(ops, 'getOperation', GetOperationRequest.fromPartial({ name: 'nope' }), md()), status.NOT_FOUND, 'OPERATION_NOT_FOUND');
  });

  it('refuses growth the pool cannot cover with RESOURCE_EXHAUSTED', async () => {
    await call(vms, 'createVm', CreateVmRequest.fromPartial({ vm: vmMessage('g-cap') }), md());
    await createGroup('g-cap', vmem('c1', 2 * GiB, 0, 'g-tiny'));
    const e = await expectError(
      call(groups, 'resizeMemoryGroup', ResizeMemoryGroupRequest.fromPartial({ vm: 'g-cap', name: 'c1', requestedBytes: BigInt(512 * MiB) }), md()),
      status.RESOURCE_EXHAUSTED,
      'POOL_CAPACITY_EXHAUSTED',
    );
    assert.equal(e.code, status.RESOURCE_EXHAUSTED);
  });

  it('starts and stops a VM through operations, lists and cancels them', async () => {
    await call(vms, 'createVm', CreateVmRequest.fromPartial({ vm: vmMessage('g-run', { memorySlots: 4 }) }), md());
    const start = await call<unknown, Operation>(vms, 'startVm', StartVmRequest.fromPartial({ name: 'g-run', requestId: 'start-1' }), md());
    assert.deepEqual([start.kind, start.state, start.requestId], [OperationKind.OPERATION_KIND_START, OperationState.OPERATION_STATE_PENDING, 'start-1']);
    const replay = await call<unknown, Operation>(vms, 'startVm', StartVmRequest.fromPartial({ name: 'g-run', requestId: 'start-1' }), md());
    assert.equal(replay.name, start.name);
    await expectError(call(vms, 'startVm', StartVmRequest.fromPartial({ name: 'g-run' }), md()), status.FAILED_PRECONDITION, 'VM_STATE_CONFLICT');
    await expectError(call(vms, 'stopVm', StopVmRequest.fromPartial({ name: 'g-run' }), md()), status.FAILED_PRECONDITION, 'VM_STATE_CONFLICT');

    // Changes while STARTING queue behind the launch as operations.
    const plugged = await createGroup('g-run', dimm('rs', GiB));
    assert.notEqual(plugged.operation, '');
    const listed = await call<unknown, { operations: Operation[]; totalSize: number }>(
      ops,
      'listOperations',
      ListOperationsRequest.fromPartial({ vm: 'g-run', state: OperationState.OPERATION_STATE_PENDING }),
      md(),
    );
    assert.deepEqual(listed.operations.map((o) => o.kind), [OperationKind.OPERATION_KIND_PLUG, OperationKind.OPERATION_KIND_START]);
    const dependents = await expectError(call(ops, 'cancelOperation', CancelOperationRequest.fromPartial({ name: start.name }), md()), status.FAILED_PRECONDITION, 'OPERATION_HAS_DEPENDENTS');
    assert.equal(dependents.code, status.FAILED_PRECONDITION);
    const cancelled = await call<unknown, Operation>(ops, 'cancelOperation', CancelOperationRequest.fromPartial({ name: plugged.operation }), md());
    assert.equal(cancelled.state, OperationState.OPERATION_STATE_CANCELLED);
    const l = await call<unknown, PoolLedger>(ledger, 'getPoolLedger', GetPoolLedgerRequest.fromPartial({ pool: 'g-pool' }), md());
    assert.ok(l.extents.every((e) => e.vm !== 'g-run'), 'the cancelled plug released its extents');

    await markRunning(api, 'g-run', start.name);
    const stop = await call<unknown, Operation>(vms, 'stopVm', StopVmRequest.fromPartial({ name: 'g-run' }), md());
    assert.equal(stop.kind, OperationKind.OPERATION_KIND_STOP);
    assert.equal((await call<unknown, Vm>(vms, 'getVm', GetVmRequest.fromPartial({ name: 'g-run' }), md())).state, VmState.VM_STATE_STOPPING);
    const got = await call<unknown, Operation>(ops, 'getOperation', GetOperationRequest.fromPartial({ name: stop.name }), md());
    assert.equal(got.state, OperationState.OPERATION_STATE_PENDING);
    await call(ops, 'cancelOperation', CancelOperationRequest.fromPartial({ name: stop.name }), md());
    assert.equal((await call<unknown, Vm>(vms, 'getVm', GetVmRequest.fromPartial({ name: 'g-run' }), md())).state, VmState.VM_STATE_RUNNING);
    await expectError(call(vms, 'deleteVm', DeleteVmRequest.fromPartial({ name: 'g-run' }), md()), status.FAILED_PRECONDITION, 'VM_STATE_CONFLICT');
    await call(vms, 'deleteVm', DeleteVmRequest.fromPartial({ name: 'g-cap' }), md());
    await expectError(call(vms, 'getVm', GetVmRequest.fromPartial({ name: 'g-cap' }), md()), status.NOT_FOUND, 'VM_NOT_FOUND');
  });
});
