import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { GuestMemoryBlock } from '#hypervisor';
import { Database, VmDriftRepository } from '#persistence';
import { cxlHostBody, recordingExecutorConfig } from '#testing/fixtures';
import { testServices } from '#testing/services';
import { GiB, http, MiB, startTestApi, type TestApi } from '../../api/test/harness';
import { RecordingDriver } from '../../../bench/recording-driver';
import { startWorker, type RunningWorker } from '../src/worker';

/** The bench's in-process hypervisor, whose guest can be made to hold its next answer. */
class HeldDriver extends RecordingDriver {
  hold: { entered: () => void; released: Promise<void> } | undefined;

  override async guestMemoryBlocks(vmId: string): Promise<GuestMemoryBlock[]> {
    const h = this.hold;
    if (h) {
      this.hold = undefined;
      h.entered();
      await h.released;
    }
    return super.guestMemoryBlocks(vmId);
  }
}

/**
 * The drift check takes a VM's operation lock while it observes the VM. A job for an
 * operation that arrives then finds the VM locked and ends, as it does when another
 * operation runs; the check must queue the operation again when it lets go, or it waits
 * for the sweeper (30 s).
 */
describe('an operation that arrives during a drift check', () => {
  let api: TestApi;
  let worker: RunningWorker;
  const runtimeDir = mkdtempSync(join(tmpdir(), 'memplane-drift-lock-'));
  const driver = new HeldDriver();

  before(async () => {
    api = await startTestApi();
    worker = await startWorker({
      databaseUrl: api.databaseUrl,
      redisUrl: testServices().redisUrl,
      prefix: `driftlock${process.pid}`,
      intake: false,
      driver,
      driftCheckIntervalMs: 100,
      executor: recordingExecutorConfig(runtimeDir),
    });
    assert.equal((await http(api, 'POST', '/v1/hosts', { body: cxlHostBody('hv-d', 16 * GiB) })).status, 201);
    assert.equal((await http(api, 'POST', '/v1/pools', { body: { name: 'cxl-d', host: 'hv-d', hostNodeId: 1, capacityBytes: 4 * GiB } })).status, 201);
    const vm = await http(api, 'POST', '/v1/vms', {
      body: { name: 'vm-d', host: 'hv-d', kernelProfile: 'linux-6.12', guestNodes: [{ guestNodeId: 0, vcpus: 1, bootMemoryBytes: 512 * MiB }], memorySlots: 4, maxMemoryBytes: 4 * GiB },
    });
    assert.equal(vm.status, 201, JSON.stringify(vm.body));
  });

  after(async () => {
    await worker?.stop();
    await api?.stop();
    rmSync(runtimeDir, { recursive: true, force: true });
  });

  const operationState = async (name: string) => ((await http(api, 'GET', `/v1/operations/${name}`)).body as { state: string }).state;
  const ended = async (name: string, withinMs: number) => {
    const deadline = Date.now() + withinMs;
    for (;;) {
      const state = await operationState(name);
      if (!['PENDING', 'RUNNING'].includes(state) || Date.now() > deadline) return state;
      await new Promise((r) => setTimeout(r, 20));
    }
  };

  it('runs as soon as the check lets go of the VM', async () => {
    const start = await http(api, 'POST', '/v1/vms/vm-d:start');
    assert.equal(start.status, 202);
    assert.equal(await ended((start.body as { name: string }).name, 10_000), 'SUCCEEDED');

    // The next drift check holds the VM while the guest "answers".
    let release!: () => void;
    const entered = new Promise<void>((entered) => (driver.hold = { entered, released: new Promise<void>((r) => (release = r)) }));
    await entered;
    const plug = await http(api, 'POST', '/v1/vms/vm-d/memory-groups', {
      body: { name: 'g1', pool: 'cxl-d', kind: 'STATIC', sizeBytes: 128 * MiB, onlineType: 'ONLINE_MOVABLE' },
    });
    assert.equal(plug.status, 201, JSON.stringify(plug.body));
    const operation = (plug.body as { operation: string }).operation;
    // Its job comes, finds the VM locked and ends; the operation stays PENDING while the check holds on.
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(await operationState(operation), 'PENDING');
    release();
    assert.equal(await ended(operation, 5_000), 'SUCCEEDED', 'ran within 5 s of the check letting go (the sweeper would take 30 s)');
  });

  it('leaves a VM whose last operation ended recently for a later pass', async () => {
    const db = new Database({ url: api.databaseUrl, poolSize: 1 });
    try {
      const idle = async (quietForMs: number) => (await new VmDriftRepository().idleRunningVms(db.sql, { limit: 10, checkedWithinMs: 0, quietForMs })).map((v) => v.name);
      // The plug above ended moments ago.
      assert.deepEqual(await idle(10 * 60_000), []);
      assert.deepEqual(await idle(0), ['vm-d']);
    } finally {
      await db.close();
    }
  });
});
