import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cxlHostBody, recordingExecutorConfig } from '#testing/fixtures';
import { testServices } from '#testing/services';
import { GiB, http, MiB, startTestApi, type TestApi } from '../../api/test/harness';
import { RecordingDriver } from '../../../bench/recording-driver';
import { startWorker, type RunningWorker } from '../src/worker';

/**
 * Operations reach the worker through the outbox hint their transaction sends once it
 * commits (PgHints): here the dispatcher's own outbox read is ten minutes apart and the
 * sweeper and drift checks are off, so an operation that runs within seconds was queued by
 * its hint. Both kinds of writer: a VM's :start (OperationRepository.create in a
 * transaction of its own) and group changes to a running VM (recorded by the batch's
 * closing statement, memplane_close_group_changes).
 */
describe('operations are queued by the hint sent after they commit', () => {
  let api: TestApi;
  let worker: RunningWorker;
  const runtimeDir = mkdtempSync(join(tmpdir(), 'memplane-hints-'));

  before(async () => {
    api = await startTestApi();
    worker = await startWorker({
      databaseUrl: api.databaseUrl,
      redisUrl: testServices().redisUrl,
      prefix: `hints${process.pid}`,
      intake: false,
      driver: new RecordingDriver(),
      dispatchIntervalMs: 600_000,
      sweepIntervalMs: 600_000,
      driftCheckIntervalMs: 0,
      executor: recordingExecutorConfig(runtimeDir),
    });
    assert.equal((await http(api, 'POST', '/v1/hosts', { body: cxlHostBody('hv-h', 16 * GiB) })).status, 201);
    assert.equal((await http(api, 'POST', '/v1/pools', { body: { name: 'cxl-h', host: 'hv-h', hostNodeId: 1, capacityBytes: 4 * GiB } })).status, 201);
    const vm = await http(api, 'POST', '/v1/vms', {
      body: { name: 'vm-h', host: 'hv-h', kernelProfile: 'linux-6.12', guestNodes: [{ guestNodeId: 0, vcpus: 1, bootMemoryBytes: 512 * MiB }], memorySlots: 4, maxMemoryBytes: 4 * GiB, sparePciePorts: 1 },
    });
    assert.equal(vm.status, 201, JSON.stringify(vm.body));
  });

  after(async () => {
    await worker?.stop();
    await api?.stop();
    rmSync(runtimeDir, { recursive: true, force: true });
  });

  const ended = async (name: string) => {
    const deadline = Date.now() + 5_000;
    for (;;) {
      const state = ((await http(api, 'GET', `/v1/operations/${name}`)).body as { state: string }).state;
      if (!['PENDING', 'RUNNING'].includes(state) || Date.now() > deadline) return state;
      await new Promise((r) => setTimeout(r, 20));
    }
  };

  it('runs a start, then plugs, a resize and an unplug recorded by group-change batches, each within 5 s', async () => {
    const start = await http(api, 'POST', '/v1/vms/vm-h:start');
    assert.equal(start.status, 202, JSON.stringify(start.body));
    assert.equal(await ended((start.body as { name: string }).name), 'SUCCEEDED');

    const plug = await http(api, 'POST', '/v1/vms/vm-h/memory-groups', { body: { name: 'v1', pool: 'cxl-h', kind: 'DYNAMIC', maxSizeBytes: 1 * GiB, blockSizeBytes: 2 * MiB, requestedBytes: 256 * MiB, onlineType: 'ONLINE_MOVABLE' } });
    assert.equal(plug.status, 201, JSON.stringify(plug.body));
    assert.equal(await ended((plug.body as { operation: string }).operation), 'SUCCEEDED');

    const resize = await http(api, 'POST', '/v1/vms/vm-h/memory-groups/v1:resize', { body: { requestedBytes: 512 * MiB } });
    assert.equal(resize.status, 200, JSON.stringify(resize.body));
    assert.equal(await ended((resize.body as { operation: string }).operation), 'SUCCEEDED');

    // (A static group to unplug: the recorded QEMU answers no query-version, which a virtio-mem removal asks first.)
    const dimm = await http(api, 'POST', '/v1/vms/vm-h/memory-groups', { body: { name: 'd1', pool: 'cxl-h', kind: 'STATIC', sizeBytes: 128 * MiB, onlineType: 'ONLINE_MOVABLE' } });
    assert.equal(dimm.status, 201, JSON.stringify(dimm.body));
    assert.equal(await ended((dimm.body as { operation: string }).operation), 'SUCCEEDED');
    const unplug = await http(api, 'DELETE', '/v1/vms/vm-h/memory-groups/d1');
    assert.equal(unplug.status, 202, JSON.stringify(unplug.body));
    assert.equal(await ended((unplug.body as { operation: string }).operation), 'SUCCEEDED');
  });
});
