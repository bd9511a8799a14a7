import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { ServiceError } from '@grpc/grpc-js';
import { Client } from 'pg';
import { checkLedgerInvariants, holdingBytes, type LedgerExtent } from '#domain';
import { loadConfig } from '#platform';
import { testServices } from '#testing/services';
import {
  CreateMemoryGroupRequest,
  DeleteMemoryGroupRequest,
  GroupOnlineType,
  MemoryGroupKind,
  MemoryGroupServiceClient,
  ResizeMemoryGroupRequest,
} from '#contracts/generated/memplane/v1/memory_group';
import { startMemplane, type RunningMemplane } from '../src/server';
import { call, errorDetails, GiB, grpcMetadata, http, insecure, MiB, sampleHost, startTestApi, type TestApi } from './harness';

/**
 * Many simultaneous conflicting requests, through both transports and two API
 * replicas on one database, against a pool that can satisfy only some of them.
 * The database is then checked directly: Postgres, not the API, is the truth.
 */
const CAPACITY = 10 * GiB;
const GROUP = 384 * MiB; // three 128 MiB granules
const VMS = 20;
const REQUESTS = 240;

type Outcome = { ok: true; transport: string } | { ok: false; transport: string; status: string; reason?: string };

describe('ledger under concurrency (REST and gRPC, two API replicas)', () => {
  let api: TestApi;
  let replica: RunningMemplane;
  let grpcA: MemoryGroupServiceClient;
  let grpcB: MemoryGroupServiceClient;

  const db = async <T = any>(text: string, values: unknown[] = []): Promise<T[]> => {
    const c = new Client({ connectionString: api.databaseUrl });
    await c.connect();
    try {
      return (await c.query(text, values)).rows as T[];
    } finally {
      await c.end();
    }
  };

  /** Every invariant of the pool, read straight from the tables. */
  async function checkPool(pool: string): Promise<{ groups: number; allocated: number }> {
    const [p] = await db(`select id, capacity_bytes, granule_bytes, allocated_bytes from pools where name = $1`, [pool]);
    const extents: LedgerExtent[] = (await db(`select group_id, offset_bytes, size_bytes from pool_extents where pool_id = $1`, [p.id])).map((e) => ({
      groupId: e.group_id,
      offsetBytes: Number(e.offset_bytes),
      sizeBytes: Number(e.size_bytes),
    }));
    const report = checkLedgerInvariants({ capacityBytes: Number(p.capacity_bytes), granuleBytes: Number(p.granule_bytes), extents });
    assert.ok(report.ok, `ledger invariants: ${JSON.stringify(report)}`);
    assert.deepEqual(report.overlaps, [], 'no two extents overlap');
    const sum = extents.reduce((s, e) => s + e.sizeBytes, 0);
    assert.equal(Number(p.allocated_bytes), sum, 'allocated_bytes = Σ extents');
    assert.ok(sum <= Number(p.capacity_bytes), 'Σ extents ≤ capacity');
    const [orphans] = await db(`select count(*) n from pool_extents e left join memory_groups g on g.id = e.group_id where g.id is null or g.pool_id <> e.pool_id`);
    assert.equal(Number(orphans.n), 0, 'no extent without its group');
    const groups = await db(
      `select g.name, g.kind, g.size_bytes, g.requested_bytes, g.held_bytes, (select coalesce(sum(size_bytes), 0) from pool_extents e where e.group_id = g.id) s
       from memory_groups g where g.pool_id = $1`,
      [p.id],
    );
    for (const g of groups) {
      assert.equal(Number(g.held_bytes), Number(g.s), `held_bytes of ${g.name} = Σ its extents`);
      const wanted = g.kind === 'STATIC' ? Number(g.size_bytes) : Number(g.requested_bytes);
      assert.equal(Number(g.held_bytes), holdingBytes(wanted, Number(p.granule_bytes)), `${g.name} holds exactly its size rounded up to the granule`);
    }
    return { groups: groups.length, allocated: sum };
  }

  before(async () => {
    api = await startTestApi();
    // A second API process on the same database: replicas share nothing but Postgres.
    replica = await startMemplane(
      loadConfig({
        DATABASE_URL: api.databaseUrl,
        REDIS_URL: testServices().redisUrl,
        MEMPLANE_HTTP_PORT: '0',
        MEMPLANE_GRPC_PORT: '0',
        MEMPLANE_BOOTSTRAP_KEY: api.adminKey,
        MEMPLANE_LOG_LEVEL: 'error',
      }),
    );
    grpcA = new MemoryGroupServiceClient(api.grpc, insecure());
    grpcB = new MemoryGroupServiceClient(replica.grpcAddress, insecure());
    assert.equal((await http(api, 'POST', '/v1/hosts', { body: sampleHost('hv-c') })).status, 201);
    assert.equal((await http(api, 'POST', '/v1/pools', { body: { name: 'p-c', host: 'hv-c', hostNodeId: 2, capacityBytes: CAPACITY } })).status, 201);
    for (let v = 0; v < VMS; v++) {
      const body = {
        name: `vm-c-${v}`,
        host: 'hv-c',
        kernelProfile: 'linux-6.12',
        guestNodes: [{ guestNodeId: 0, vcpus: 1, bootMemoryBytes: 2 * GiB }],
        memorySlots: 256,
        maxMemoryBytes: 256 * GiB,
      };
      assert.equal((await http(api, 'POST', '/v1/vms', { body })).status, 201);
    }
  });
  after(async () => {
    grpcA?.close();
    grpcB?.close();
    await replica?.stop();
    await api?.stop();
  });

  const md = () => grpcMetadata(api.adminKey);
  const restOn = (i: number) => (i % 2 === 0 ? api.http : replica.httpUrl);
  const grpcOn = (i: number) => (i % 2 === 0 ? grpcA : grpcB);

  async function restCall(i: number, method: string, path: string, body?: unknown): Promise<Outcome> {
    const res = await fetch(`${restOn(i)}${path}`, {
      method,
      headers: { authorization: `Bearer ${api.adminKey}`, ...(body ? { 'content-type': 'application/json' } : {}) },
      ...(body ? { body: JSON.stringify(body) } : {}),
    });
    const text = await res.text();
    if (res.ok) return { ok: true, transport: 'rest' };
    const problem = JSON.parse(text) as { reason: string };
    return { ok: false, transport: 'rest', status: String(res.status), reason: problem.reason };
  }

  async function grpcCall(i: number, method: string, req: unknown): Promise<Outcome> {
    try {
      await call(grpcOn(i), method, req, md());
      return { ok: true, transport: 'grpc' };
    } catch (e) {
      const d = errorDetails(e as ServiceError);
      return { ok: false, transport: 'grpc', status: String(d.code), ...(d.reason ? { reason: d.reason } : {}) };
    }
  }

  function create(i: number, name: string, kind: 'STATIC' | 'DYNAMIC', bytes: number): Promise<Outcome> {
    const vm = `vm-c-${i % VMS}`;
    if (i % 4 < 2) {
      const body = kind === 'STATIC' ? { name, pool: 'p-c', kind, sizeBytes: bytes } : { name, pool: 'p-c', kind, maxSizeBytes: 2 * bytes, requestedBytes: bytes };
      return restCall(i, 'POST', `/v1/vms/${vm}/memory-groups`, body);
    }
    const group =
      kind === 'STATIC'
        ? { name, pool: 'p-c', kind: MemoryGroupKind.MEMORY_GROUP_KIND_STATIC, sizeBytes: BigInt(bytes), onlineType: GroupOnlineType.GROUP_ONLINE_TYPE_ONLINE_MOVABLE }
        : {
            name,
            pool: 'p-c',
            kind: MemoryGroupKind.MEMORY_GROUP_KIND_DYNAMIC,
            maxSizeBytes: BigInt(2 * bytes),
            requestedBytes: BigInt(bytes),
            onlineType: GroupOnlineType.GROUP_ONLINE_TYPE_ONLINE_MOVABLE,
          };
    return grpcCall(i, 'createMemoryGroup', CreateMemoryGroupRequest.fromPartial({ vm, memoryGroup: group }));
  }

  /** The capacity refusal on each transport: 429 / RESOURCE_EXHAUSTED (8), reason POOL_CAPACITY_EXHAUSTED. */
  const isCapacityRefusal = (o: Outcome) => !o.ok && (o.status === '429' || o.status === '8') && o.reason === 'POOL_CAPACITY_EXHAUSTED';

  it(`${REQUESTS} simultaneous creates: exactly floor(capacity / size) succeed, the rest are refused for capacity`, async () => {
    const outcomes = await Promise.all(Array.from({ length: REQUESTS }, (_, i) => create(i, `g-${i}`, i % 3 === 0 ? 'DYNAMIC' : 'STATIC', GROUP)));
    const expected = Math.floor(CAPACITY / GROUP);
    const succeeded = outcomes.filter((o) => o.ok);
    const refused = outcomes.filter(isCapacityRefusal);
    const other = outcomes.filter((o) => !o.ok && !isCapacityRefusal(o));
    assert.deepEqual(other, [], 'every failure is the specific capacity error, never a 500');
    assert.equal(succeeded.length, expected, `exactly ${expected} of ${REQUESTS} fit`);
    assert.equal(refused.length, REQUESTS - expected);
    const { groups, allocated } = await checkPool('p-c');
    assert.equal(groups, expected, 'the database holds exactly the groups that were acknowledged');
    assert.equal(allocated, expected * GROUP);
    assert.ok(allocated <= CAPACITY);
  });

  it('concurrent deletes, creates and resizes keep every invariant', async () => {
    const existing = await db<{ name: string; vm: string; kind: string }>(
      `select g.name, v.name as vm, g.kind::text as kind from memory_groups g join vms v on v.id = g.vm_id order by g.name`,
    );
    const dynamic = existing.filter((g) => g.kind === 'DYNAMIC');
    const statics = existing.filter((g) => g.kind === 'STATIC');
    const work: Promise<Outcome & { op: string }>[] = [];
    // Delete every other STATIC group…
    statics.forEach((g, i) => {
      if (i % 2 !== 0) return;
      const p = i % 4 === 0 ? restCall(i, 'DELETE', `/v1/vms/${g.vm}/memory-groups/${g.name}`) : grpcCall(i, 'deleteMemoryGroup', DeleteMemoryGroupRequest.fromPartial({ vm: g.vm, name: g.name }));
      work.push(p.then((o) => ({ ...o, op: 'delete' })));
    });
    // …grow and shrink the DYNAMIC ones (up to their 768 MiB max)…
    dynamic.forEach((g, i) => {
      const requested = i % 2 === 0 ? 2 * GROUP : 128 * MiB;
      const p =
        i % 4 < 2
          ? restCall(i, 'POST', `/v1/vms/${g.vm}/memory-groups/${g.name}:resize`, { requestedBytes: requested })
          : grpcCall(i, 'resizeMemoryGroup', ResizeMemoryGroupRequest.fromPartial({ vm: g.vm, name: g.name, requestedBytes: BigInt(requested) }));
      work.push(p.then((o) => ({ ...o, op: 'resize' })));
    });
    // …while 120 new groups of 256 MiB compete for whatever is freed.
    for (let i = 0; i < 120; i++) work.push(create(i, `n-${i}`, i % 2 === 0 ? 'STATIC' : 'DYNAMIC', 256 * MiB).then((o) => ({ ...o, op: 'create' })));
    const outcomes = await Promise.all(work);

    const unexpected = outcomes.filter((o) => !o.ok && !isCapacityRefusal(o));
    assert.deepEqual(unexpected, [], 'failures are capacity refusals only');
    assert.ok(outcomes.filter((o) => o.op === 'delete').every((o) => o.ok), 'every delete succeeded');
    const created = outcomes.filter((o) => o.op === 'create' && o.ok).length;
    assert.ok(created > 0, 'the freed capacity was handed out again');
    const { groups } = await checkPool('p-c');
    const [n] = await db(`select count(*) n from memory_groups where name like 'n-%'`);
    assert.equal(Number(n.n), created, 'exactly the acknowledged creates exist');
    assert.equal(groups, existing.length - Math.ceil(statics.length / 2) + created);
  });

  it('VM limits hold under concurrency too: 40 simultaneous DIMMs on a VM with 5 slots', async () => {
    assert.equal((await http(api, 'POST', '/v1/pools', { body: { name: 'p-slots', host: 'hv-c', hostNodeId: 2, capacityBytes: 8 * GiB } })).status, 201);
    const body = { name: 'vm-slots', host: 'hv-c', kernelProfile: 'linux-6.12', guestNodes: [{ guestNodeId: 0, vcpus: 1, bootMemoryBytes: GiB }], memorySlots: 5, maxMemoryBytes: 64 * GiB };
    assert.equal((await http(api, 'POST', '/v1/vms', { body })).status, 201);
    const outcomes = await Promise.all(
      Array.from({ length: 40 }, (_, i) =>
        i % 2 === 0
          ? restCall(i, 'POST', '/v1/vms/vm-slots/memory-groups', { name: `s-${i}`, pool: 'p-slots', kind: 'STATIC', sizeBytes: 128 * MiB })
          : grpcCall(
              i,
              'createMemoryGroup',
              CreateMemoryGroupRequest.fromPartial({
                vm: 'vm-slots',
                memoryGroup: { name: `s-${i}`, pool: 'p-slots', kind: MemoryGroupKind.MEMORY_GROUP_KIND_STATIC, sizeBytes: BigInt(128 * MiB), onlineType: GroupOnlineType.GROUP_ONLINE_TYPE_ONLINE_MOVABLE },
              }),
            ),
      ),
    );
    assert.equal(outcomes.filter((o) => o.ok).length, 5);
    const refused = outcomes.filter((o) => !o.ok);
    assert.ok(refused.every((o) => !o.ok && (o.status === '409' || o.status === '9') && o.reason === 'VM_HOTPLUG_HEADROOM_EXCEEDED'), JSON.stringify(refused));
    const [n] = await db(`select count(*) n from memory_groups g join vms v on v.id = g.vm_id where v.name = 'vm-slots'`);
    assert.equal(Number(n.n), 5);
    assert.deepEqual(await checkPool('p-slots'), { groups: 5, allocated: 5 * 128 * MiB });
  });

  it('releasing everything, concurrently, returns the pool to empty', async () => {
    const all = await db<{ name: string; vm: string }>(`select g.name, v.name as vm from memory_groups g join vms v on v.id = g.vm_id`);
    const outcomes = await Promise.all(
      all.map((g, i) =>
        i % 2 === 0 ? restCall(i, 'DELETE', `/v1/vms/${g.vm}/memory-groups/${g.name}`) : grpcCall(i, 'deleteMemoryGroup', DeleteMemoryGroupRequest.fromPartial({ vm: g.vm, name: g.name })),
      ),
    );
    assert.ok(outcomes.every((o) => o.ok), JSON.stringify(outcomes.filter((o) => !o.ok)));
    assert.deepEqual(await checkPool('p-c'), { groups: 0, allocated: 0 });
    const ledger = await http(api, 'GET', '/v1/pools/p-c/ledger');
    assert.deepEqual(ledger.body.freeExtents, [{ offsetBytes: 0, sizeBytes: CAPACITY }]);
    assert.equal(ledger.body.fragmentationBasisPoints, 0);
  });
});
