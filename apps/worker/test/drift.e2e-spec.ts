import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { Client } from 'pg';
import { DRIFT_VM_LOCKED } from '#application';
import { testServices } from '#testing/services';
import { ensureGuestImages, eventually } from '#testing/guest';
import { MemoryDriftReason, MemoryDriftState } from '#contracts/generated/memplane/v1/drift';
import { GetMemoryGroupRequest, MemoryGroupServiceClient, type MemoryGroup } from '#contracts/generated/memplane/v1/memory_group';
import { GetVmRequest, VmServiceClient, type Vm } from '#contracts/generated/memplane/v1/vm';
import { call, GiB, grpcMetadata, http, insecure, MiB, startTestApi, type TestApi } from '../../api/test/harness';
import { startWorker, type RunningWorker } from '../src/worker';
import { guestExecutorConfig } from './guest-executor';
import { cxlHostBody, cxlVmBody } from '#testing/fixtures';

/**
 * Drift reporting against a real 6.12 guest: memory is changed behind the control plane's
 * back (QMP device_del / device_add / qom-set, blocks offlined through the guest agent), the
 * worker's sweeper reports it on the VM and its groups over REST and gRPC, and the report
 * clears once the memory is back as desired.
 */

async function waitOperation(api: TestApi, name: string, timeoutMs = 180_000): Promise<any> {
  return eventually(`operation ${name} ends`, async () => {
    const r = await http(api, 'GET', `/v1/operations/${name}`);
    return ['SUCCEEDED', 'FAILED', 'CANCELLED'].includes(r.body.state) ? r.body : undefined;
  }, timeoutMs, 250);
}

interface Condition {
  reason: string;
  memoryGroup?: string;
  qemuId?: string;
  expectedBytes?: number;
  observedBytes?: number;
  expectedBlocks?: number;
  observedBlocks?: number;
  expectedZone?: string;
  observedZone?: string;
  message: string;
}

describe('drift between desired and observed memory on a real linux-6.12 guest', () => {
  let api: TestApi;
  let worker: RunningWorker;
  let vmId = '';
  const logs: string[] = [];
  const runtimeDir = mkdtempSync(join(tmpdir(), 'memplane-drift-'));
  let vms: VmServiceClient;
  let groups: MemoryGroupServiceClient;
  const md = () => grpcMetadata(api.adminKey);

  /** The VM's drift once a check newer than `since` reports it; `until` decides when it is the one wanted. */
  async function driftAfter(since: Date, until: (conditions: Condition[]) => boolean, what: string): Promise<{ state: string; conditions: Condition[]; checkTime: string }> {
    return eventually(
      what,
      async () => {
        const vm = await http(api, 'GET', '/v1/vms/vm-drift');
        const d = vm.body.memoryDrift;
        return d && new Date(d.checkTime) > since && until(d.conditions) ? d : undefined;
      },
      60_000,
      200,
    );
  }
  const brief = (c: Condition) => `${c.reason}:${c.memoryGroup ?? '-'}:${c.qemuId ?? '-'}`;
  const dimmBlocks = async (deviceId: string): Promise<number[]> => {
    const bs = await worker.driver.guestMemoryBlockSizeBytes(vmId);
    const d = (await worker.driver.queryMemoryDevices(vmId)).find((x) => x.id === deviceId);
    assert.ok(d && d.kind === 'dimm', `${deviceId} in QEMU`);
    return Array.from({ length: d.sizeBytes / bs }, (_, i) => d.addressBytes / bs + i);
  };
  const guestBlocksPresent = (indexes: number[]) =>
    eventually('the guest adds the blocks', async () => {
      const zones = await worker.driver.guestMemoryBlockZones(vmId, indexes);
      return zones.every((z) => z.present) ? true : undefined;
    });

  before(async () => {
    ensureGuestImages('linux-6.12');
    api = await startTestApi();
    worker = await startWorker({
      databaseUrl: api.databaseUrl,
      redisUrl: testServices().redisUrl,
      prefix: `drift${process.pid}`,
      executor: guestExecutorConfig(runtimeDir),
      driftCheckIntervalMs: 300,
      log: (line) => logs.push(line),
    });
    vms = new VmServiceClient(api.grpc, insecure());
    groups = new MemoryGroupServiceClient(api.grpc, insecure());
    const host = await http(api, 'POST', '/v1/hosts', {
      body: cxlHostBody('hv-drift'),
    });
    assert.equal(host.status, 201, JSON.stringify(host.body));
    assert.equal((await http(api, 'POST', '/v1/pools', { body: { name: 'cxl-drift', host: 'hv-drift', hostNodeId: 1, capacityBytes: 4 * GiB } })).status, 201);
    const vm = await http(api, 'POST', '/v1/vms', {
      body: cxlVmBody('vm-drift', 'hv-drift', 'linux-6.12'),
    });
    assert.equal(vm.status, 201, JSON.stringify(vm.body));
    vmId = vm.body.uid;
    const g = await http(api, 'POST', '/v1/vms/vm-drift/memory-groups', { body: { name: 'dimm-a', pool: 'cxl-drift', kind: 'STATIC', sizeBytes: 256 * MiB, onlineType: 'ONLINE_MOVABLE' } });
    assert.equal(g.status, 201, JSON.stringify(g.body));
  });

  after(async () => {
    vms?.close();
    groups?.close();
    await worker?.driver.stop(vmId, { powerdownTimeoutMs: 0, quitTimeoutMs: 3_000 }).catch(() => undefined);
    await worker?.stop();
    await api?.stop();
    rmSync(runtimeDir, { recursive: true, force: true });
  });

  it('reports a running VM in sync, on the VM and its groups, over REST and gRPC', async () => {
    const start = await http(api, 'POST', '/v1/vms/vm-drift:start');
    assert.equal(start.status, 202, JSON.stringify(start.body));
    const op = await waitOperation(api, start.body.name);
    assert.equal(op.state, 'SUCCEEDED', JSON.stringify(op));
    const d = await driftAfter(new Date(op.endTime), () => true, 'a check after the start');
    assert.equal(d.state, 'IN_SYNC', JSON.stringify(d));
    assert.deepEqual(d.conditions, []);

    const group = await http(api, 'GET', '/v1/vms/vm-drift/memory-groups/dimm-a');
    assert.equal(group.body.memoryDrift.state, 'IN_SYNC');
    const vm = await call<GetVmRequest, Vm>(vms, 'getVm', GetVmRequest.fromPartial({ name: 'vm-drift' }), md());
    assert.equal(vm.memoryDrift?.state, MemoryDriftState.MEMORY_DRIFT_STATE_IN_SYNC);
    assert.ok(vm.memoryDrift?.checkTime instanceof Date);
  });

  it('reports a DIMM block offlined in the guest, and clears once it is online again', async () => {
    const [first] = await dimmBlocks('dimm-dimm-a');
    const since = new Date();
    const res = await worker.driver.offlineGuestMemoryBlocks(vmId, [first!]);
    assert.equal(res[0]?.response, 'success', JSON.stringify(res));
    const d = await driftAfter(since, (c) => c.length > 0, 'the offline block reported');
    assert.equal(d.state, 'DRIFTED');
    assert.deepEqual(
      d.conditions.map((c) => [c.reason, c.memoryGroup, c.qemuId, c.expectedBlocks, c.observedBlocks]),
      [['BLOCKS_NOT_ONLINE', 'dimm-a', 'dimm-dimm-a', 2, 1]],
    );
    // The group shows its own conditions, and gRPC the same numbers.
    const group = await http(api, 'GET', '/v1/vms/vm-drift/memory-groups/dimm-a');
    assert.deepEqual(group.body.memoryDrift.conditions.map(brief), ['BLOCKS_NOT_ONLINE:dimm-a:dimm-dimm-a']);
    const g = await call<GetMemoryGroupRequest, MemoryGroup>(groups, 'getMemoryGroup', GetMemoryGroupRequest.fromPartial({ vm: 'vm-drift', name: 'dimm-a' }), md());
    assert.equal(g.memoryDrift?.state, MemoryDriftState.MEMORY_DRIFT_STATE_DRIFTED);
    const c = g.memoryDrift!.conditions[0]!;
    assert.deepEqual([c.reason, c.expectedBlocks, c.observedBlocks, c.expectedBytes], [MemoryDriftReason.MEMORY_DRIFT_REASON_BLOCKS_NOT_ONLINE, 2, 1, undefined]);
    assert.ok(logs.some((l) => /drift: vm vm-drift: BLOCKS_NOT_ONLINE group dimm-a/.test(l)), logs.join('\n'));

    const on = await worker.driver.onlineGuestMemoryBlocks(vmId, [first!], 'online_movable');
    assert.equal(on[0]?.response, 'success', JSON.stringify(on));
    // The first check after the fix finds nothing.
    assert.equal((await driftAfter(new Date(), () => true, 'a check after onlining')).state, 'IN_SYNC');
    assert.ok(logs.some((l) => l === 'drift: vm vm-drift is back in sync'), logs.join('\n'));
  });

  it('reports a DIMM removed with device_del without touching the ledger, and clears once it is plugged back', async () => {
    const poolBefore = (await http(api, 'GET', '/v1/pools/cxl-drift')).body.allocatedBytes;
    const blocks = await dimmBlocks('dimm-dimm-a');
    const since = new Date();
    // What an operator at the QEMU monitor would do: offline the memory, then unplug the DIMM.
    const off = await worker.driver.offlineGuestMemoryBlocks(vmId, blocks);
    assert.ok(off.every((r) => r.response === 'success'), JSON.stringify(off));
    await worker.driver.deviceDel(vmId, 'dimm-dimm-a', { waitForDeleted: true, deletedTimeoutMs: 20_000 });
    const d = await driftAfter(since, (c) => c.some((x) => x.reason === 'DEVICE_MISSING'), 'the missing DIMM reported');
    assert.deepEqual(
      d.conditions.map((c) => [c.reason, c.memoryGroup, c.qemuId, c.expectedBytes, c.observedBytes]),
      [['DEVICE_MISSING', 'dimm-a', 'dimm-dimm-a', 256 * MiB, 0]],
    );
    const vm = await call<GetVmRequest, Vm>(vms, 'getVm', GetVmRequest.fromPartial({ name: 'vm-drift' }), md());
    const c = vm.memoryDrift!.conditions[0]!;
    assert.deepEqual([c.reason, c.memoryGroup, c.expectedBytes, c.observedBytes], [MemoryDriftReason.MEMORY_DRIFT_REASON_DEVICE_MISSING, 'dimm-a', BigInt(256 * MiB), 0n]);
    // The check refreshed what QEMU lists, and the capacity is still the group's: nothing counted twice or lost.
    assert.deepEqual((await http(api, 'GET', '/v1/vms/vm-drift')).body.observedMemoryDevices, []);
    assert.equal((await http(api, 'GET', '/v1/pools/cxl-drift')).body.allocatedBytes, poolBefore);

    await worker.driver.deviceAdd(vmId, 'pc-dimm', 'dimm-dimm-a', { memdev: 'memgrp-dimm-a', node: 1 });
    const back = await dimmBlocks('dimm-dimm-a');
    await guestBlocksPresent(back);
    const on = await worker.driver.onlineGuestMemoryBlocks(vmId, back, 'online_movable');
    assert.ok(on.every((r) => r.response === 'success'), JSON.stringify(on));
    assert.equal((await driftAfter(new Date(), () => true, 'a check after the DIMM is back')).state, 'IN_SYNC');
  });

  it('reports a memory device nobody asked for, and clears once it is gone', async () => {
    const since = new Date();
    await worker.driver.objectAdd(vmId, 'memory-backend-ram', 'rogue-mem', { size: 128 * MiB });
    await worker.driver.deviceAdd(vmId, 'pc-dimm', 'rogue', { memdev: 'rogue-mem', node: 1 });
    const d = await driftAfter(since, (c) => c.length > 0, 'the unknown DIMM reported');
    assert.deepEqual(
      d.conditions.map((c) => [c.reason, c.memoryGroup, c.qemuId, c.observedBytes]),
      [['UNEXPECTED_DEVICE', undefined, 'rogue', 128 * MiB]],
    );
    // It belongs to no group: the group stays in sync.
    assert.equal((await http(api, 'GET', '/v1/vms/vm-drift/memory-groups/dimm-a')).body.memoryDrift.state, 'IN_SYNC');

    await worker.driver.deviceDel(vmId, 'rogue', { waitForDeleted: true, deletedTimeoutMs: 20_000 });
    await worker.driver.objectDel(vmId, 'rogue-mem');
    assert.equal((await driftAfter(new Date(), () => true, 'a check after the DIMM is gone')).state, 'IN_SYNC');
  });

  it('leaves a VM alone while an operation is pending or holds it', async () => {
    const g = await http(api, 'POST', '/v1/vms/vm-drift/memory-groups', {
      body: { name: 'vmem-b', pool: 'cxl-drift', kind: 'DYNAMIC', maxSizeBytes: 512 * MiB, blockSizeBytes: 2 * MiB, requestedBytes: 256 * MiB, onlineType: 'ONLINE_MOVABLE' },
    });
    assert.equal(g.status, 201, JSON.stringify(g.body));
    assert.equal((await waitOperation(api, g.body.operation)).state, 'SUCCEEDED');
    await driftAfter(new Date(), () => true, 'a check after the plug');

    // An operation's job holds the VM's lock while it runs: the check steps aside.
    const lock = new Client({ connectionString: api.databaseUrl });
    await lock.connect();
    try {
      await lock.query(`select pg_advisory_lock(hashtextextended($1, 727276))`, [vmId]);
      assert.deepEqual(await worker.drift!.checkVm(vmId), { vmId, skipped: DRIFT_VM_LOCKED });
    } finally {
      await lock.query(`select pg_advisory_unlock(hashtextextended($1, 727276))`, [vmId]);
      await lock.end();
    }
    // A recorded operation no worker has taken yet: the desired state is moving, nothing to compare.
    await worker.worker!.pause();
    try {
      const resize = await http(api, 'POST', '/v1/vms/vm-drift/memory-groups/vmem-b:resize', { body: { requestedBytes: 384 * MiB } });
      assert.equal(resize.status, 200, JSON.stringify(resize.body));
      const before = (await http(api, 'GET', '/v1/vms/vm-drift')).body.memoryDrift.checkTime;
      // (A periodic check that began before the resize may still hold the lock for a moment.)
      const outcome = await eventually('a check that gets the lock', async () => {
        const o = await worker.drift!.checkVm(vmId);
        return 'skipped' in o && o.skipped === DRIFT_VM_LOCKED ? undefined : o;
      });
      assert.deepEqual(outcome, { vmId, skipped: 'an operation is pending' });
      assert.equal((await http(api, 'GET', '/v1/vms/vm-drift')).body.memoryDrift.checkTime, before, 'nothing recorded');
      worker.worker!.resume();
      assert.equal((await waitOperation(api, resize.body.operation)).state, 'SUCCEEDED');
    } finally {
      worker.worker!.resume();
    }
  });

  it('reports a virtio-mem requested-size changed with qom-set, and clears once an operation re-drives the group', async () => {
    await driftAfter(new Date(), (c) => c.length === 0, 'in sync after the resize');
    const since = new Date();
    await worker.driver.qomSet(vmId, '/machine/peripheral/vmem-vmem-b', 'requested-size', 128 * MiB);
    // The guest follows the new request within seconds (virtio-mem offlines and removes blocks itself).
    const d = await driftAfter(since, (c) => c.some((x) => x.reason === 'PLUGGED_SIZE_MISMATCH' && x.observedBytes === 128 * MiB), 'the shrink behind our back reported');
    assert.deepEqual(
      d.conditions.filter((c) => c.reason !== 'BLOCKS_NOT_ONLINE').map((c) => [c.reason, c.memoryGroup, c.qemuId, c.expectedBytes, c.observedBytes]),
      [
        ['REQUESTED_SIZE_MISMATCH', 'vmem-b', 'vmem-vmem-b', 384 * MiB, 128 * MiB],
        ['PLUGGED_SIZE_MISMATCH', 'vmem-b', 'vmem-vmem-b', 384 * MiB, 128 * MiB],
      ],
    );
    const dimm = await http(api, 'GET', '/v1/vms/vm-drift/memory-groups/dimm-a');
    assert.equal(dimm.body.memoryDrift.state, 'IN_SYNC', 'the other group is not concerned');

    // The sweeper only reports; an operation asked for through the API brings the group back.
    const resize = await http(api, 'POST', '/v1/vms/vm-drift/memory-groups/vmem-b:resize', { body: { requestedBytes: 256 * MiB } });
    assert.equal(resize.status, 200, JSON.stringify(resize.body));
    const op = await waitOperation(api, resize.body.operation);
    assert.equal(op.state, 'SUCCEEDED', JSON.stringify(op));
    const clear = await driftAfter(new Date(op.endTime), () => true, 'a check after the resize');
    assert.equal(clear.state, 'IN_SYNC', JSON.stringify(clear));
  });

  it('reports a QEMU that died behind our back', async () => {
    const pid = (await http(api, 'GET', '/v1/vms/vm-drift')).body.qemuPid as number;
    assert.ok(pid > 0);
    const since = new Date();
    process.kill(pid, 'SIGKILL');
    const d = await driftAfter(since, (c) => c.length > 0, 'the dead QEMU reported');
    assert.deepEqual(d.conditions.map(brief), ['QEMU_NOT_RUNNING:-:-']);
    assert.match(d.conditions[0]!.message, new RegExp(`its QEMU \\(pid ${pid}\\) is gone`));
  });

  it('forgets the drift report when the VM stops', async () => {
    const stop = await http(api, 'POST', '/v1/vms/vm-drift:stop');
    assert.equal(stop.status, 202, JSON.stringify(stop.body));
    assert.equal((await waitOperation(api, stop.body.name)).state, 'SUCCEEDED');
    const vm = await http(api, 'GET', '/v1/vms/vm-drift');
    assert.equal(vm.body.state, 'STOPPED');
    assert.equal(vm.body.memoryDrift, undefined);
    const g = await call<GetVmRequest, Vm>(vms, 'getVm', GetVmRequest.fromPartial({ name: 'vm-drift' }), md());
    assert.equal(g.memoryDrift, undefined);
  });
});
