import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { projectRoot } from '#platform';
import { GiB, http, startTestApi, type TestApi } from './harness';

/**
 * Drives the gRPC API from an independent client: Debian's python3-grpcio,
 * with stubs compiled from proto/ by python3-grpc-tools. The Python script
 * (apps/api/test/python/client.py) runs the whole scenario and reports what it saw as
 * JSON; this file checks every observation.
 *
 * Needs the Debian packages python3-grpcio, python3-grpc-tools,
 * python3-protobuf and python3-pkg-resources, in /usr/bin/python3 (not a
 * pyenv or virtualenv python). Without them the suite fails, never skips.
 */
const PYTHON = '/usr/bin/python3';
// python3-grpc-tools imports pkg_resources (python3-pkg-resources) without declaring it in Debian 12.
const DEBIAN_PACKAGES = 'python3-grpcio python3-grpc-tools python3-protobuf python3-pkg-resources';
const root = projectRoot();
const scriptDir = join(root, 'apps', 'api', 'test', 'python');

/** The environment for Debian's python: nothing from the caller's Python setup may shadow its packages. */
function pythonEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, PYTHONNOUSERSITE: '1', PYTHONDONTWRITEBYTECODE: '1' };
  delete env.PYTHONPATH;
  delete env.PYTHONHOME;
  return env;
}

/** Synchronous, so only for work that needs no answer from the API in this process. */
function python(args: string[], timeout = 120_000): SpawnSyncReturns<string> {
  return spawnSync(PYTHON, args, { cwd: root, env: pythonEnv(), encoding: 'utf8', timeout, maxBuffer: 16 * 1024 * 1024 });
}

function explain(r: SpawnSyncReturns<string>): string {
  return [r.error ? `error: ${r.error.message}` : `exit status ${r.status}${r.signal ? ` (signal ${r.signal})` : ''}`, r.stderr?.trim(), r.stdout?.trim()].filter(Boolean).join('\n');
}

/** Fails (never skips) when Debian's gRPC for Python is not there. */
function requireDebianGrpc(): string {
  const r = python(['-c', 'import os, grpc, pkg_resources, grpc_tools.protoc, google.protobuf; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))']);
  if (r.status !== 0) {
    assert.fail(`${PYTHON} cannot import grpc, grpc_tools, google.protobuf and pkg_resources; install the Debian packages: apt-get install -y ${DEBIAN_PACKAGES}\n${explain(r)}`);
  }
  return r.stdout.trim();
}

/** python -m grpc_tools.protoc over memplane/v1/*.proto, google/rpc/*.proto and the vendored health and reflection protos. */
function compileStubs(wellKnownProtos: string, outDir: string): void {
  const protoDir = join(root, 'proto');
  const ours = ['memplane/v1', 'google/rpc'].flatMap((d) =>
    readdirSync(join(protoDir, d))
      .filter((f) => f.endsWith('.proto'))
      .map((f) => `${d}/${f}`),
  );
  const r = python([
    '-m',
    'grpc_tools.protoc',
    `-I${protoDir}`,
    `-I${join(scriptDir, 'proto')}`,
    `-I${wellKnownProtos}`,
    `--python_out=${outDir}`,
    `--grpc_python_out=${outDir}`,
    ...ours,
    'grpc_health/v1/health.proto',
    'grpc_reflection/v1/reflection.proto',
  ]);
  if (r.status !== 0) assert.fail(`grpc_tools.protoc failed:\n${explain(r)}`);
}

const bytes = (gib: number) => String(gib * GiB);

interface CallError {
  code: string;
  message?: string;
  has_status_details?: boolean;
  status_code?: number;
  status_message?: string;
  detail_types?: string[];
  reason?: string;
  domain?: string;
  metadata?: Record<string, string>;
  violations: { field: string; description: string }[];
  request_id?: string;
}

/** The rich error model every failure carries: ErrorInfo (domain memplane.dev), RequestInfo, and the code repeated in google.rpc.Status. */
function assertRichError(e: CallError, code: string, numeric: number, reason: string): void {
  assert.equal(e.code, code, JSON.stringify(e));
  assert.equal(e.has_status_details, true);
  assert.equal(e.status_code, numeric);
  assert.equal(e.status_message, e.message);
  assert.equal(e.reason, reason);
  assert.equal(e.domain, 'memplane.dev');
  assert.ok(e.request_id, 'RequestInfo.request_id is set');
  assert.ok(e.detail_types?.includes('type.googleapis.com/google.rpc.ErrorInfo'));
  assert.ok(e.detail_types?.includes('type.googleapis.com/google.rpc.RequestInfo'));
}

describe('gRPC API from an independent client (Debian python3-grpcio)', () => {
  let api: TestApi;
  let stubs: string;
  let obs: any;

  before(async () => {
    const wellKnown = requireDebianGrpc();
    stubs = mkdtempSync(join(tmpdir(), 'memplane-pystubs-'));
    compileStubs(wellKnown, stubs);
    api = await startTestApi();
    const operator = await http(api, 'POST', '/v1/api-keys', { body: { name: 'py-operator', role: 'operator' } });
    const viewer = await http(api, 'POST', '/v1/api-keys', { body: { name: 'py-viewer', role: 'viewer' } });
    assert.equal(operator.status, 201);
    assert.equal(viewer.status, 201);
    obs = await runClient(['--target', api.grpc, '--key', operator.body.secret, '--viewer-key', viewer.body.secret, '--out-dir', stubs]);
  });

  after(async () => {
    await api?.stop();
    if (stubs) rmSync(stubs, { recursive: true, force: true });
  });

  it("uses Debian's grpcio and protobuf", () => {
    assert.match(obs.runtime.grpc_file, /^\/usr\/lib\/python3\/dist-packages\/grpc\//);
    assert.match(obs.runtime.protobuf_file, /^\/usr\/lib\/python3\/dist-packages\/google\/protobuf\//);
    assert.match(obs.runtime.grpc_version, /^\d+\.\d+/);
  });

  it('checks health without a key', () => {
    assert.deepEqual(obs.health, { overall: 'SERVING', pool_service: 'SERVING', unknown_service: 'NOT_FOUND' });
  });

  it('lists services and fetches descriptors by server reflection (grpc.reflection.v1)', () => {
    const r = obs.reflection;
    assert.equal(r.error, undefined);
    assert.equal(r.responses, 3);
    assert.ok(r.services.includes('memplane.v1.HostService') && r.services.includes('memplane.v1.PoolService'), r.services.join(','));
    // Reflection serves buf's descriptor set: the real files of proto/ and the imports they name.
    assert.ok(Object.keys(r.files).includes('memplane/v1/pool.proto'), Object.keys(r.files).join(','));
    assert.ok(Object.keys(r.files).includes('google/protobuf/timestamp.proto'), Object.keys(r.files).join(','));
    assert.deepEqual(r.pool_methods, [
      'CreatePool(memplane.v1.CreatePoolRequest) -> memplane.v1.Pool',
      'GetPool(memplane.v1.GetPoolRequest) -> memplane.v1.Pool',
      'ListPools(memplane.v1.ListPoolsRequest) -> memplane.v1.ListPoolsResponse',
      'UpdatePool(memplane.v1.UpdatePoolRequest) -> memplane.v1.Pool',
      'DeletePool(memplane.v1.DeletePoolRequest) -> google.protobuf.Empty',
    ]);
    assert.deepEqual(r.matches_stubs, {
      'memplane.v1.Pool': true,
      'memplane.v1.UpdatePoolRequest': true,
      'memplane.v1.Host': true,
      'memplane.v1.HostNode': true,
      'memplane.v1.NodePerformance': true,
    });
  });

  it('serves reflected descriptors a strict client can load (grpcurl, protobuf DescriptorPool)', () => {
    assert.equal(obs.reflection.strict_load, 'ok');
  });

  it('creates a host with its nodes, performance and distances, and reads it back', () => {
    const h = obs.create_host;
    assert.equal(h.name, 'py-host');
    assert.match(h.uid, /^[0-9a-f-]{36}$/);
    assert.equal(h.description, 'created by the Python client');
    assert.deepEqual(h.labels, { rack: 'r1' });
    assert.equal(h.state, 'HOST_STATE_READY');
    assert.ok(h.etag);
    assert.equal(h.has_create_time, true);
    assert.deepEqual(h.nodes, [
      { node_id: 0, cpus: [0, 1, 2, 3], memory_bytes: bytes(32), kind: 'NODE_KIND_DRAM' },
      { node_id: 1, cpus: [4, 5, 6, 7], memory_bytes: bytes(32), kind: 'NODE_KIND_DRAM' },
      { node_id: 2, cpus: [], memory_bytes: bytes(128), kind: 'NODE_KIND_CXL' },
    ]);
    assert.deepEqual(h.performance, [
      { cpu_node_id: 0, memory_node_id: 0, read_latency_ns: '100', write_latency_ns: '100', read_bandwidth_mbps: '51200', write_bandwidth_mbps: '51200' },
      { cpu_node_id: 0, memory_node_id: 2, read_latency_ns: '250', write_latency_ns: '260', read_bandwidth_mbps: '20480', write_bandwidth_mbps: '18432' },
      { cpu_node_id: 1, memory_node_id: 1, read_latency_ns: '100', write_latency_ns: '100', read_bandwidth_mbps: '51200', write_bandwidth_mbps: '51200' },
      { cpu_node_id: 1, memory_node_id: 2, read_latency_ns: '300', write_latency_ns: '310', read_bandwidth_mbps: '16384', write_bandwidth_mbps: '16384' },
    ]);
    // Every distance comes back; the service orders them by (from, to).
    assert.deepEqual(
      h.distances.map((d: { from: number; to: number; distance: number }) => `${d.from}->${d.to}=${d.distance}`),
      ['0->0=10', '0->1=21', '0->2=24', '1->0=21', '1->1=10', '1->2=28', '2->2=10'],
    );
    assert.deepEqual(obs.create_host_replay, { uid: h.uid, etag: h.etag }, 'the same request_id returns the first result');
    assert.deepEqual(obs.get_host, h);
  });

  it('creates three pools on the CXL node and pages through them two at a time', () => {
    assert.deepEqual(
      obs.create_pools.map((p: any) => [p.name, p.host, p.host_node_id, p.capacity_bytes, p.granule_bytes, p.allocated_bytes, p.free_bytes, p.memory_type, p.state]),
      [
        ['py-pool-a', 'py-host', 2, bytes(16), String(128 * 1024 * 1024), '0', bytes(16), 'POOL_MEMORY_TYPE_VOLATILE', 'POOL_STATE_ACTIVE'],
        ['py-pool-b', 'py-host', 2, bytes(16), String(128 * 1024 * 1024), '0', bytes(16), 'POOL_MEMORY_TYPE_VOLATILE', 'POOL_STATE_ACTIVE'],
        ['py-pool-c', 'py-host', 2, bytes(32), String(128 * 1024 * 1024), '0', bytes(32), 'POOL_MEMORY_TYPE_VOLATILE', 'POOL_STATE_ACTIVE'],
      ],
    );
    for (const p of obs.create_pools) {
      assert.deepEqual(p.labels, { tier: 'cxl' });
      assert.ok(p.uid && p.etag);
    }
    assert.deepEqual(obs.list_pools_pages, [
      { names: ['py-pool-a', 'py-pool-b'], total_size: 3, has_next: true },
      { names: ['py-pool-c'], total_size: 3, has_next: false },
    ]);
  });

  it('updates only the fields in the mask, guarded by the etag', () => {
    const u = obs.update_pool;
    assert.equal(u.name, 'py-pool-a');
    assert.equal(u.capacity_bytes, bytes(24));
    assert.equal(u.free_bytes, bytes(24));
    assert.equal(u.allocated_bytes, '0');
    assert.equal(u.description, '', 'description was sent but is not in the mask');
    assert.deepEqual(u.labels, { tier: 'cxl' }, 'labels were not sent and are not in the mask');
    assert.equal(u.granule_bytes, String(128 * 1024 * 1024));
    assert.notEqual(u.etag, u.old_etag);
    assert.ok(u.etag);
  });

  it('refuses a stale etag with ABORTED ETAG_MISMATCH and changes nothing', () => {
    const e: CallError = obs.stale_update;
    assertRichError(e, 'ABORTED', 10, 'ETAG_MISMATCH');
    assert.equal(e.metadata?.currentEtag, obs.update_pool.etag);
    assert.deepEqual(e.violations, []);
    assert.deepEqual(obs.pool_after_stale_update, { capacity_bytes: bytes(24), etag: obs.update_pool.etag });
  });

  it('names every invalid field in google.rpc.BadRequest, with the caller correlation id in RequestInfo', () => {
    const e: CallError = obs.invalid_host;
    assertRichError(e, 'INVALID_ARGUMENT', 3, 'INVALID_HOST');
    assert.deepEqual(e.detail_types, ['type.googleapis.com/google.rpc.ErrorInfo', 'type.googleapis.com/google.rpc.BadRequest', 'type.googleapis.com/google.rpc.RequestInfo']);
    assert.equal(e.request_id, 'py-invalid-host-1');
    assert.deepEqual(
      e.violations.map((v) => v.field),
      ['name', 'nodes[2].cpus'],
    );
    assert.match(e.violations[0]!.description, /"Bad_Name" is not a valid name/);
    assert.match(e.violations[1]!.description, /a CXL node has no CPUs/);

    const m: CallError = obs.invalid_mask;
    assertRichError(m, 'INVALID_ARGUMENT', 3, 'INVALID_UPDATE_MASK');
    assert.equal(m.violations.length, 1);
    assert.equal(m.violations[0]!.field, 'updateMask');
    assert.match(m.violations[0]!.description, /granuleBytes cannot be changed after creation/);
  });

  it('answers UNAUTHENTICATED without a valid key and PERMISSION_DENIED to a viewer that writes', () => {
    assertRichError(obs.no_key, 'UNAUTHENTICATED', 16, 'INVALID_API_KEY');
    assert.match(obs.no_key.message, /missing credentials/);
    assertRichError(obs.bad_key, 'UNAUTHENTICATED', 16, 'INVALID_API_KEY');
    assert.deepEqual(obs.viewer_read, { code: 'OK', name: 'py-host' });
    const denied: CallError = obs.viewer_write;
    assertRichError(denied, 'PERMISSION_DENIED', 7, 'ROLE_NOT_ALLOWED');
    assert.deepEqual(denied.metadata, { role: 'viewer', permission: 'inventory.write' });
  });

  it('answers NOT_FOUND for a missing host', () => {
    const e: CallError = obs.missing_host;
    assertRichError(e, 'NOT_FOUND', 5, 'HOST_NOT_FOUND');
    assert.deepEqual(e.metadata, { resource: 'host', name: 'no-such-host' });
  });

  it('refuses to delete a host with pools (FAILED_PRECONDITION), then deletes pools and host', async () => {
    const e: CallError = obs.delete_host_with_pools;
    assertRichError(e, 'FAILED_PRECONDITION', 9, 'HOST_HAS_POOLS');
    assert.deepEqual(e.metadata, { pools: '3' });
    assert.deepEqual(obs.delete_pools, { 'py-pool-a': 'OK', 'py-pool-b': 'OK', 'py-pool-c': 'OK' });
    assert.deepEqual(obs.pools_after_delete, { count: 0, total_size: 0 });
    assert.equal(obs.delete_host, 'OK');
    assertRichError(obs.get_deleted_host, 'NOT_FOUND', 5, 'HOST_NOT_FOUND');
    // The other transport agrees: nothing is left, and the viewer's pool was never made.
    assert.equal((await http(api, 'GET', '/v1/hosts/py-host')).status, 404);
    assert.equal((await http(api, 'GET', '/v1/pools/py-pool-v')).status, 404);
  });
});

/**
 * Runs client.py and returns its JSON report. Not spawnSync: the API under
 * test serves from this process's event loop, which must keep turning.
 */
async function runClient(args: string[]): Promise<any> {
  const child = spawn(PYTHON, [join(scriptDir, 'client.py'), ...args], { cwd: root, env: pythonEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
  const status = await new Promise<number | null>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code) => resolve(code));
  });
  clearTimeout(timer);
  if (status !== 0) assert.fail(`client.py exited with ${status}:\n${stderr.trim()}\n${stdout.trim()}`);
  try {
    return JSON.parse(stdout);
  } catch {
    assert.fail(`client.py did not print JSON:\n${stdout}\n${stderr}`);
  }
}
