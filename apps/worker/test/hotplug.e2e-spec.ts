import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { testServices } from '#testing/services';
import { ensureGuestImages } from '#testing/guest';
import { GiB, http, MiB, startTestApi, type TestApi } from '../../api/test/harness';
import { startWorker, type RunningWorker } from '../src/worker';
import { guestExecutorConfig } from './guest-executor';
import { cxlHostBody, cxlVmBody } from '#testing/fixtures';

/**
 * The hotplug engine end to end, through the public REST API only, against a real QEMU and
 * real Debian 6.1 and 6.12 guests: a worker executes every Operation the API records.
 */

async function waitOperation(api: TestApi, name: string, timeoutMs = 120_000): Promise<any> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await http(api, 'GET', `/v1/operations/${name}`);
    assert.equal(r.status, 200, JSON.stringify(r.body));
    if (['SUCCEEDED', 'FAILED', 'CANCELLED'].includes(r.body.state)) return r.body;
    if (Date.now() > deadline) assert.fail(`operation ${name} still ${r.body.state} after ${timeoutMs} ms: ${JSON.stringify(r.body)}`);
    await new Promise((res) => setTimeout(res, 250));
  }
}

for (const kernel of ['linux-6.1', 'linux-6.12'] as const) {
describe(`hotplug engine on a real ${kernel} guest, driven through the API`, () => {
  let api: TestApi;
  let worker: RunningWorker;
  let vmId = '';
  const runtimeDir = mkdtempSync(join(tmpdir(), 'memplane-vms-'));

  const guestCat = async (path: string) => {
    const qga = await worker.driver.qga(vmId);
    const r = await (qga as any).exec('cat', [path]);
    return r.stdout.toString() as string;
  };
  const nodeTotalBytes = async (node: number) => Number(/MemTotal:\s+(\d+) kB/.exec(await guestCat(`/sys/devices/system/node/node${node}/meminfo`))![1]) * 1024;

  before(async () => {
    ensureGuestImages(kernel);
    api = await startTestApi();
    worker = await startWorker({
      databaseUrl: api.databaseUrl,
      redisUrl: testServices().redisUrl,
      prefix: `t${process.pid}${kernel.replace(".", "")}`,
      executor: guestExecutorConfig(runtimeDir),
    });
    const host = await http(api, 'POST', '/v1/hosts', {
      body: cxlHostBody('hv-e2e'),
    });
    assert.equal(host.status, 201, JSON.stringify(host.body));
    const pool = await http(api, 'POST', '/v1/pools', { body: { name: 'cxl-e2e', host: 'hv-e2e', hostNodeId: 1, capacityBytes: 4 * GiB } });
    assert.equal(pool.status, 201, JSON.stringify(pool.body));
    const vm = await http(api, 'POST', '/v1/vms', {
      body: cxlVmBody('vm-e2e', 'hv-e2e', kernel),
    });
    assert.equal(vm.status, 201, JSON.stringify(vm.body));
    vmId = vm.body.uid;
  });

  after(async () => {
    await http(api, 'POST', '/v1/vms/vm-e2e:stop').catch(() => undefined);
    await worker?.driver.stop(vmId, { powerdownTimeoutMs: 0, quitTimeoutMs: 3_000 }).catch(() => undefined);
    await worker?.stop();
    await api?.stop();
    rmSync(runtimeDir, { recursive: true, force: true });
  });

  it('starts the VM and plugs its static group after boot, in the movable zone', async () => {
    const g = await http(api, 'POST', '/v1/vms/vm-e2e/memory-groups', { body: { name: 'dimm-a', pool: 'cxl-e2e', kind: 'STATIC', sizeBytes: 256 * MiB, onlineType: 'ONLINE_MOVABLE' } });
    assert.equal(g.status, 201, JSON.stringify(g.body));
    const start = await http(api, 'POST', '/v1/vms/vm-e2e:start');
    assert.equal(start.status, 202, JSON.stringify(start.body));
    const op = await waitOperation(api, start.body.name, 180_000);
    assert.equal(op.state, 'SUCCEEDED', JSON.stringify(op));
    const vm = await http(api, 'GET', '/v1/vms/vm-e2e');
    assert.equal(vm.body.state, 'RUNNING');
    // Operator visibility: where QEMU runs and what it last showed.
    assert.ok(vm.body.qemuPid > 0, JSON.stringify(vm.body));
    assert.match(vm.body.qmpSocketPath, /qmp\.sock$/);
    assert.match(vm.body.qgaSocketPath, /qga\.sock$/);
    assert.deepEqual(
      vm.body.observedMemoryDevices.map((d: { kind: string; id: string; sizeBytes: number; node: number }) => [d.kind, d.id, d.sizeBytes, d.node]),
      [['dimm', 'dimm-dimm-a', 256 * MiB, 1]],
    );
    const group = await http(api, 'GET', '/v1/vms/vm-e2e/memory-groups/dimm-a');
    assert.equal(group.body.state, 'PLUGGED', JSON.stringify(group.body));
    assert.equal(group.body.pluggedBytes, 256 * MiB);
    assert.equal(group.body.onlineBlocks, 2);
    assert.deepEqual(group.body.onlineZones, { Movable: 2 });
    assert.equal(await nodeTotalBytes(1), 256 * MiB);
  });

  it('plugs a second static group on the running guest: node 1 grows by exactly its size, movable', async () => {
    const before = await nodeTotalBytes(1);
    const g = await http(api, 'POST', '/v1/vms/vm-e2e/memory-groups', { body: { name: 'dimm-b', pool: 'cxl-e2e', kind: 'STATIC', sizeBytes: 512 * MiB, onlineType: 'ONLINE_MOVABLE' } });
    assert.equal(g.status, 201, JSON.stringify(g.body));
    assert.ok(g.body.operation, 'a running VM gets an operation');
    const op = await waitOperation(api, g.body.operation);
    assert.equal(op.state, 'SUCCEEDED', JSON.stringify(op));
    assert.ok(op.steps.some((s: { name: string }) => s.name.startsWith('device_add pc-dimm')), JSON.stringify(op.steps));
    assert.equal(op.progressPercent, 100);
    assert.equal(await nodeTotalBytes(1), before + 512 * MiB);
    const group = await http(api, 'GET', '/v1/vms/vm-e2e/memory-groups/dimm-b');
    assert.equal(group.body.pluggedBytes, 512 * MiB);
    assert.equal(group.body.onlineBlocks, 4);
  });

  it('grows and shrinks a dynamic (virtio-mem) group: QMP and the guest agree with the request', async () => {
    const g = await http(api, 'POST', '/v1/vms/vm-e2e/memory-groups', {
      body: { name: 'vmem-c', pool: 'cxl-e2e', kind: 'DYNAMIC', maxSizeBytes: 1 * GiB, blockSizeBytes: 2 * MiB, requestedBytes: 512 * MiB, onlineType: 'ONLINE_MOVABLE' },
    });
    assert.equal(g.status, 201, JSON.stringify(g.body));
    let op = await waitOperation(api, g.body.operation);
    assert.equal(op.state, 'SUCCEEDED', JSON.stringify(op));
    const qmp = worker.driver.qmp(vmId);
    const device = async () => ((await qmp.execute<any[]>('query-memory-devices')).find((d) => d.data.id === 'vmem-vmem-c')?.data ?? {}) as { size: number; 'requested-size': number };
    assert.equal((await device()).size, 512 * MiB);
    let group = await http(api, 'GET', '/v1/vms/vm-e2e/memory-groups/vmem-c');
    assert.equal(group.body.pluggedBytes, 512 * MiB);

    const poolBefore = await http(api, 'GET', '/v1/pools/cxl-e2e');
    const shrink = await http(api, 'POST', '/v1/vms/vm-e2e/memory-groups/vmem-c:resize', { body: { requestedBytes: 128 * MiB } });
    assert.equal(shrink.status, 200, JSON.stringify(shrink.body));
    assert.equal(shrink.body.heldBytes, 512 * MiB, 'a running shrink holds its extent until the guest has given the memory back');
    op = await waitOperation(api, shrink.body.operation);
    assert.equal(op.state, 'SUCCEEDED', JSON.stringify(op));
    assert.deepEqual([(await device()).size, (await device())['requested-size']], [128 * MiB, 128 * MiB]);
    group = await http(api, 'GET', '/v1/vms/vm-e2e/memory-groups/vmem-c');
    assert.deepEqual([group.body.pluggedBytes, group.body.heldBytes], [128 * MiB, 128 * MiB]);
    assert.equal((await http(api, 'GET', '/v1/pools/cxl-e2e')).body.allocatedBytes, poolBefore.body.allocatedBytes - 384 * MiB);
  });

  it('unplugs a static group: blocks gone, QEMU objects removed, capacity back in the pool', async () => {
    const poolBefore = await http(api, 'GET', '/v1/pools/cxl-e2e');
    const nodeBefore = await nodeTotalBytes(1);
    const del = await http(api, 'DELETE', '/v1/vms/vm-e2e/memory-groups/dimm-b');
    assert.equal(del.status, 202, JSON.stringify(del.body));
    const op = await waitOperation(api, del.body.operation);
    assert.equal(op.state, 'SUCCEEDED', JSON.stringify(op));
    assert.equal((await http(api, 'GET', '/v1/vms/vm-e2e/memory-groups/dimm-b')).status, 404);
    assert.equal(await nodeTotalBytes(1), nodeBefore - 512 * MiB);
    const qmp = worker.driver.qmp(vmId);
    const devices = await qmp.execute<any[]>('query-memory-devices');
    assert.ok(!devices.some((d) => d.data.id === 'dimm-dimm-b'));
    const objects = await qmp.execute<{ name: string }[]>('qom-list', { path: '/objects' });
    assert.ok(!objects.some((o) => o.name === 'memgrp-dimm-b'));
    const poolAfter = await http(api, 'GET', '/v1/pools/cxl-e2e');
    assert.equal(poolAfter.body.allocatedBytes, poolBefore.body.allocatedBytes - 512 * MiB);
  });

  it('stops the VM', async () => {
    const stop = await http(api, 'POST', '/v1/vms/vm-e2e:stop');
    assert.equal(stop.status, 202, JSON.stringify(stop.body));
    const op = await waitOperation(api, stop.body.name);
    assert.equal(op.state, 'SUCCEEDED', JSON.stringify(op));
    assert.equal((await http(api, 'GET', '/v1/vms/vm-e2e')).body.state, 'STOPPED');
  });
});
}
