import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Client } from 'pg';
import { GiB, http, MiB, sampleHost, startTestApi, type TestApi } from './harness';

async function count(api: TestApi, sql: string): Promise<number> {
  const c = new Client({ connectionString: api.databaseUrl });
  await c.connect();
  try {
    return Number((await c.query(sql)).rows[0].n);
  } finally {
    await c.end();
  }
}

describe('REST inventory over a real socket', () => {
  let api: TestApi;
  before(async () => {
    api = await startTestApi();
  });
  after(async () => api?.stop());

  it('serves health, readiness and the OpenAPI document without a key', async () => {
    assert.equal((await http(api, 'GET', '/healthz', { key: null })).status, 200);
    const ready = await http(api, 'GET', '/readyz', { key: null });
    assert.deepEqual(ready.body, { status: 'ok', postgres: 'ok', redis: 'ok' });
    const doc = await http(api, 'GET', '/openapi.json', { key: null });
    assert.equal(doc.status, 200);
    assert.equal(doc.body.openapi, '3.1.0');
    assert.ok(doc.body.paths['/v1/hosts'].post);
    assert.ok(doc.body.paths['/v1/pools/{name}'].patch);
    const page = await fetch(`${api.http}/docs`);
    assert.match(await page.text(), /swagger-ui-bundle\.js/);
    const asset = await fetch(`${api.http}/docs/assets/swagger-ui-bundle.js`);
    assert.equal(asset.status, 200);
  });

  it('refuses calls without a valid key (401) and with the wrong role (403)', async () => {
    const none = await http(api, 'GET', '/v1/hosts', { key: null });
    assert.equal(none.status, 401);
    assert.equal(none.headers.get('content-type'), 'application/problem+json; charset=utf-8');
    assert.equal(none.headers.get('www-authenticate'), 'Bearer realm="memplane"');
    assert.equal(none.body.code, 'UNAUTHENTICATED');
    const bogus = await http(api, 'GET', '/v1/hosts', { key: 'mp_AAAAAAAA_' + 'x'.repeat(43) });
    assert.equal(bogus.status, 401);
    const viewer = await http(api, 'POST', '/v1/api-keys', { body: { name: 'watcher', role: 'viewer' } });
    assert.equal(viewer.status, 201);
    assert.match(viewer.body.secret, /^mp_[A-Za-z0-9]{8}_/);
    assert.equal(viewer.body.secretHash, undefined);
    assert.equal((await http(api, 'GET', '/v1/hosts', { key: viewer.body.secret })).status, 200);
    const denied = await http(api, 'POST', '/v1/hosts', { key: viewer.body.secret, body: sampleHost('hv-denied') });
    assert.equal(denied.status, 403);
    assert.equal(denied.body.reason, 'ROLE_NOT_ALLOWED');
    assert.equal((await http(api, 'GET', '/v1/hosts/hv-denied')).status, 404);
    const revoke = await http(api, 'DELETE', `/v1/api-keys/${viewer.body.id}`);
    assert.equal(revoke.status, 204);
    // Verified keys are cached for at most 5 s; the revocation is effective after that.
    await new Promise((r) => setTimeout(r, 5_100));
    assert.equal((await http(api, 'GET', '/v1/hosts', { key: viewer.body.secret })).status, 401);
  });

  it('creates, reads, pages, updates and deletes hosts and pools', async () => {
    const created = await http(api, 'POST', '/v1/hosts', { body: sampleHost('hv-crud') });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    assert.equal(created.body.name, 'hv-crud');
    assert.equal(created.body.state, 'READY');
    assert.equal(created.body.nodes[2].memoryBytes, 128 * GiB);
    assert.deepEqual(created.body.nodes[2].cpus, []);
    assert.equal(created.body.performance.length, 4);

    for (const n of [1, 2, 3, 4, 5]) {
      const pool = await http(api, 'POST', '/v1/pools', { body: { name: `crud-pool-${n}`, host: 'hv-crud', hostNodeId: 2, capacityBytes: 16 * GiB } });
      assert.equal(pool.status, 201, JSON.stringify(pool.body));
      assert.equal(pool.body.freeBytes, 16 * GiB);
      assert.equal(pool.body.granuleBytes, 128 * MiB);
    }
    // Page through with pageSize 2: 3 pages, every pool once, in name order.
    const seen: string[] = [];
    let token = '';
    let pages = 0;
    do {
      const page = await http(api, 'GET', `/v1/pools?host=hv-crud&pageSize=2${token ? `&pageToken=${token}` : ''}`);
      assert.equal(page.status, 200);
      assert.equal(page.body.totalSize, 5);
      seen.push(...page.body.pools.map((p: { name: string }) => p.name));
      token = page.body.nextPageToken;
      pages++;
    } while (token);
    assert.equal(pages, 3);
    assert.deepEqual(seen, [1, 2, 3, 4, 5].map((n) => `crud-pool-${n}`));
    // A token issued for one filter is refused for another.
    const first = await http(api, 'GET', '/v1/pools?host=hv-crud&pageSize=2');
    const misuse = await http(api, 'GET', `/v1/pools?pageSize=2&pageToken=${first.body.nextPageToken}`);
    assert.equal(misuse.status, 400);
    assert.equal(misuse.body.reason, 'INVALID_PAGE_TOKEN');

    // Update with a field mask and the etag; a stale etag is refused with 412.
    const pool = await http(api, 'GET', '/v1/pools/crud-pool-1');
    const updated = await http(api, 'PATCH', '/v1/pools/crud-pool-1?updateMask=capacityBytes,state', {
      body: { capacityBytes: 8 * GiB, state: 'DRAINING', description: 'ignored: not in the mask' },
      headers: { 'if-match': pool.body.etag },
    });
    assert.equal(updated.status, 200, JSON.stringify(updated.body));
    assert.equal(updated.body.capacityBytes, 8 * GiB);
    assert.equal(updated.body.state, 'DRAINING');
    assert.equal(updated.body.description, '');
    assert.notEqual(updated.body.etag, pool.body.etag);
    const stale = await http(api, 'PATCH', '/v1/pools/crud-pool-1', { body: { description: 'late' }, headers: { 'if-match': pool.body.etag } });
    assert.equal(stale.status, 412);
    assert.equal(stale.body.reason, 'ETAG_MISMATCH');
    const immutable = await http(api, 'PATCH', '/v1/pools/crud-pool-1?updateMask=granuleBytes', { body: {} });
    assert.equal(immutable.status, 400);
    assert.match(immutable.body.violations[0].description, /cannot be changed/);

    // Host update: maintenance, and a node change that would strand a pool is refused.
    const maint = await http(api, 'PATCH', '/v1/hosts/hv-crud', { body: { state: 'MAINTENANCE' } });
    assert.equal(maint.status, 200);
    assert.equal(maint.body.state, 'MAINTENANCE');
    assert.equal(maint.body.nodes.length, 3);
    const nodes = sampleHost('x').nodes;
    nodes[2] = { nodeId: 2, cpus: [8, 9], memoryBytes: 128 * GiB, kind: 'DRAM' };
    const strand = await http(api, 'PATCH', '/v1/hosts/hv-crud?updateMask=nodes', { body: { nodes } });
    assert.equal(strand.status, 409);
    assert.equal(strand.body.reason, 'HOST_NODE_IN_USE');

    // Deleting a host with pools is refused; after its pools go, it goes.
    const refused = await http(api, 'DELETE', '/v1/hosts/hv-crud');
    assert.equal(refused.status, 409);
    assert.equal(refused.body.code, 'FAILED_PRECONDITION');
    assert.equal(refused.body.reason, 'HOST_HAS_POOLS');
    for (const n of [1, 2, 3, 4, 5]) assert.equal((await http(api, 'DELETE', `/v1/pools/crud-pool-${n}`)).status, 204);
    assert.equal((await http(api, 'DELETE', '/v1/hosts/hv-crud')).status, 204);
    assert.equal((await http(api, 'GET', '/v1/hosts/hv-crud')).status, 404);
    // Every mutation left an audit record with who, what and when.
    assert.equal(await count(api, `select count(*) n from audit_log where resource = 'hosts/hv-crud'`), 3);
    assert.equal(await count(api, `select count(*) n from audit_log where resource like 'pools/crud-pool-%' and principal like 'bootstrap-admin%'`), 5 + 5 + 1);
  });

  it('makes creates idempotent with a request id', async () => {
    const body = sampleHost('hv-idem');
    const a = await http(api, 'POST', '/v1/hosts?requestId=req-0001', { body });
    const b = await http(api, 'POST', '/v1/hosts', { body, headers: { 'idempotency-key': 'req-0001' } });
    assert.equal(a.status, 201);
    assert.equal(b.status, 201);
    assert.equal(b.body.uid, a.body.uid);
    assert.equal(b.body.createTime, a.body.createTime);
    const reused = await http(api, 'POST', '/v1/hosts?requestId=req-0001', { body: sampleHost('hv-other') });
    assert.equal(reused.status, 400);
    assert.equal(reused.body.reason, 'REQUEST_ID_REUSED');
    assert.equal((await http(api, 'GET', '/v1/hosts/hv-other')).status, 404);
    // Twenty concurrent retries of one request create exactly one host.
    const racing = await Promise.all(Array.from({ length: 20 }, () => http(api, 'POST', '/v1/hosts?requestId=req-race', { body: sampleHost('hv-race') })));
    assert.deepEqual(new Set(racing.map((r) => r.status)), new Set([201]));
    assert.equal(new Set(racing.map((r) => r.body.uid)).size, 1);
    assert.equal(await count(api, `select count(*) n from hosts where name = 'hv-race'`), 1);
  });

  it('answers every bad input with a specific 4xx problem and stores nothing', async () => {
    const before = await count(api, 'select (select count(*) from hosts) + (select count(*) from pools) as n');
    const bad = async (method: string, path: string, opts: Parameters<typeof http>[3], status: number, reason: string, field?: RegExp) => {
      const r = await http(api, method, path, opts);
      assert.equal(r.status, status, `${method} ${path}: ${JSON.stringify(r.body)}`);
      assert.equal(r.headers.get('content-type')?.split(';')[0], 'application/problem+json');
      assert.equal(r.body.reason, reason, JSON.stringify(r.body));
      if (field) assert.ok(r.body.violations?.some((v: { field: string }) => field.test(v.field)), JSON.stringify(r.body.violations));
      return r.body;
    };
    await bad('POST', '/v1/hosts', { rawBody: '{"name": "x",', headers: { 'content-type': 'application/json' } }, 400, 'MALFORMED_JSON', /^body$/);
    await bad('POST', '/v1/hosts', { rawBody: 'name=x', headers: { 'content-type': 'text/plain' } }, 415, 'UNSUPPORTED_MEDIA_TYPE');
    await bad('POST', '/v1/hosts', { rawBody: '[1,2]', headers: { 'content-type': 'application/json' } }, 400, 'INVALID_BODY');
    await bad('POST', '/v1/hosts', { body: { ...sampleHost('hv-bad'), colour: 'blue' } }, 400, 'INVALID_BODY', /^colour$/);
    await bad('POST', '/v1/hosts', { body: { ...sampleHost('hv-bad'), nodes: [{ nodeId: 0, cpus: [0], memoryBytes: 'lots', kind: 'DRAM' }] } }, 400, 'INVALID_BODY', /^nodes\[0\]\.memoryBytes$/);
    await bad('POST', '/v1/hosts', { body: { ...sampleHost('hv-bad'), nodes: [{ nodeId: 0, cpus: [0], memoryBytes: 1.5, kind: 'DRAM' }] } }, 400, 'INVALID_BODY', /^nodes\[0\]\.memoryBytes$/);
    await bad('POST', '/v1/hosts', { body: { ...sampleHost('hv-bad'), nodes: [{ nodeId: 0, cpus: [0], memoryBytes: 1e30, kind: 'DRAM' }] } }, 400, 'INVALID_BODY', /^nodes\[0\]\.memoryBytes$/);
    await bad('POST', '/v1/hosts', { body: { ...sampleHost('hv-bad'), nodes: [{ nodeId: 0, cpus: [0], memoryBytes: -4096, kind: 'DRAM' }], performance: [], distances: [] } }, 400, 'INVALID_HOST', /^nodes\[0\]\.memoryBytes$/);
    await bad('POST', '/v1/hosts', { body: { ...sampleHost('hv-bad'), nodes: [{ nodeId: 0, cpus: [0], memoryBytes: 2 ** 62, kind: 'DRAM' }], performance: [], distances: [] } }, 400, 'INVALID_BODY', /^nodes\[0\]\.memoryBytes$/);
    await bad('POST', '/v1/hosts', { body: { ...sampleHost('Not_A_Name') } }, 400, 'INVALID_HOST', /^name$/);
    const cxlCpus = sampleHost('hv-bad');
    cxlCpus.nodes[2]!.cpus = [8];
    const p1 = await bad('POST', '/v1/hosts', { body: cxlCpus }, 400, 'INVALID_HOST', /^nodes\[2\]\.cpus$/);
    assert.match(p1.violations[0].description, /CXL node has no CPUs/);
    const perf = sampleHost('hv-bad');
    perf.performance.push({ cpuNodeId: 2, memoryNodeId: 7, readLatencyNs: 0, writeLatencyNs: 5, readBandwidthMBps: 1, writeBandwidthMBps: 1 });
    const p2 = await bad('POST', '/v1/hosts', { body: perf }, 400, 'INVALID_HOST', /^performance\[4\]\.cpuNodeId$/);
    assert.ok(p2.violations.some((v: { field: string }) => v.field === 'performance[4].memoryNodeId'));
    assert.ok(p2.violations.some((v: { field: string }) => v.field === 'performance[4].readLatencyNs'));
    const dist = sampleHost('hv-bad');
    dist.distances[0]!.distance = 12;
    dist.distances[1]!.distance = 10;
    const p3 = await bad('POST', '/v1/hosts', { body: dist }, 400, 'INVALID_HOST', /^distances\[0\]\.distance$/);
    assert.ok(p3.violations.some((v: { field: string }) => v.field === 'distances[1].distance'));
    const huge = JSON.stringify({ ...sampleHost('hv-bad'), description: 'x'.repeat(2 * 1024 * 1024) });
    await bad('POST', '/v1/hosts', { rawBody: huge, headers: { 'content-type': 'application/json' } }, 413, 'BODY_TOO_LARGE');
    await bad('GET', '/v1/hosts?pageSize=-1', {}, 400, 'INVALID_BODY', /^pageSize$/);
    await bad('GET', '/v1/hosts?pageToken=garbage', {}, 400, 'INVALID_PAGE_TOKEN');
    await bad('GET', '/v1/hosts?colour=blue', {}, 400, 'INVALID_BODY', /^colour$/);
    await bad('GET', '/v1/hosts/nope', {}, 404, 'HOST_NOT_FOUND');
    await bad('GET', '/v1/nothing-here', {}, 404, 'ROUTE_NOT_FOUND');

    // Pools: the node must be a CPU-less node of the host, with room.
    assert.equal((await http(api, 'POST', '/v1/hosts', { body: sampleHost('hv-pools') })).status, 201);
    const pool = (extra: Record<string, unknown>) => ({ body: { name: 'p-bad', host: 'hv-pools', hostNodeId: 2, capacityBytes: 16 * GiB, ...extra } });
    await bad('POST', '/v1/pools', pool({ hostNodeId: 0 }), 400, 'POOL_NODE_HAS_CPUS', /^hostNodeId$/);
    await bad('POST', '/v1/pools', pool({ hostNodeId: 9 }), 400, 'POOL_NODE_NOT_FOUND', /^hostNodeId$/);
    await bad('POST', '/v1/pools', pool({ host: 'hv-missing' }), 400, 'POOL_HOST_NOT_FOUND', /^host$/);
    await bad('POST', '/v1/pools', pool({ capacityBytes: 129 * GiB }), 400, 'POOL_EXCEEDS_NODE_MEMORY', /^capacityBytes$/);
    await bad('POST', '/v1/pools', pool({ capacityBytes: 100 * MiB }), 400, 'INVALID_POOL', /^capacityBytes$/);
    await bad('POST', '/v1/pools', pool({ granuleBytes: 3 * MiB }), 400, 'INVALID_POOL', /^granuleBytes$/);
    await bad('POST', '/v1/pools', pool({ capacityBytes: -1 }), 400, 'INVALID_POOL', /^capacityBytes$/);
    await bad('POST', '/v1/pools', pool({ memoryType: 'DEVICE' }), 400, 'INVALID_BODY', /^memoryType$/);
    await bad('POST', '/v1/pools', pool({ daxDevicePath: '/etc/passwd' }), 400, 'INVALID_POOL', /^daxDevicePath$/);
    // Two pools may not promise the same node memory twice.
    assert.equal((await http(api, 'POST', '/v1/pools', pool({ name: 'p-half', capacityBytes: 100 * GiB }))).status, 201);
    await bad('POST', '/v1/pools', pool({ capacityBytes: 29 * GiB }), 400, 'POOL_EXCEEDS_NODE_MEMORY', /^capacityBytes$/);
    await bad('PATCH', '/v1/pools/p-half', { body: { capacityBytes: 129 * GiB } }, 400, 'POOL_EXCEEDS_NODE_MEMORY');
    assert.equal((await http(api, 'DELETE', '/v1/pools/p-half')).status, 204);
    assert.equal((await http(api, 'DELETE', '/v1/hosts/hv-pools')).status, 204);

    const afterCount = await count(api, 'select (select count(*) from hosts) + (select count(*) from pools) as n');
    assert.equal(afterCount, before);
  });
});
