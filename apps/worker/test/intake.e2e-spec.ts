import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Queue, QueueEvents } from 'bullmq';
import { projectRoot } from '#platform';
import { REQUESTS_QUEUE, redisConnection } from '#queue';
import { testServices } from '#testing/services';
import { GiB, http, MiB, startTestApi, type TestApi } from '../../api/test/harness';
import { cachedGuestImages, startWorker, type RunningWorker } from '../src/worker';

/** The automation intake, through real BullMQ on the real Redis, into the same services as the APIs. */
describe('automation intake (memplane-requests)', () => {
  let api: TestApi;
  let worker: RunningWorker;
  let queue: Queue;
  let events: QueueEvents;
  const prefix = `intake${process.pid}`;
  let n = 0;

  const submit = async (data: unknown) => {
    const job = await queue.add('request', data, { jobId: `req-${++n}` });
    return job.waitUntilFinished(events, 20_000);
  };
  const refused = async (data: unknown) => {
    try {
      await submit(data);
    } catch (e) {
      return JSON.parse((e as Error).message) as { code: string; reason: string; message: string; violations: { field: string; description: string }[] };
    }
    assert.fail('the job should have failed');
  };

  before(async () => {
    api = await startTestApi();
    const connection = redisConnection(testServices().redisUrl);
    queue = new Queue(REQUESTS_QUEUE, { connection, prefix });
    events = new QueueEvents(REQUESTS_QUEUE, { connection, prefix });
    await events.waitUntilReady();
    // Intake only: nothing here boots a guest.
    worker = await startWorker({
      databaseUrl: api.databaseUrl,
      redisUrl: testServices().redisUrl,
      prefix,
      executeOperations: false,
      executor: { runtimeDir: '/nonexistent', bootImage: cachedGuestImages(projectRoot()), accel: 'tcg', cpuModel: 'max', hostNodeBinding: 'none', convergeTimeoutMs: 1, deviceDelTimeoutMs: 1, bootTimeoutMs: 1 },
    });
    await http(api, 'POST', '/v1/hosts', {
      body: { name: 'hv-q', nodes: [{ nodeId: 0, cpus: [0, 1], memoryBytes: 8 * GiB, kind: 'DRAM' }, { nodeId: 1, cpus: [], memoryBytes: 16 * GiB, kind: 'CXL' }] },
    });
    await http(api, 'POST', '/v1/pools', { body: { name: 'cxl-q', host: 'hv-q', hostNodeId: 1, capacityBytes: 4 * GiB } });
    const vm = await http(api, 'POST', '/v1/vms', {
      body: { name: 'vm-q', host: 'hv-q', kernelProfile: 'linux-6.12', guestNodes: [{ guestNodeId: 0, vcpus: 2, bootMemoryBytes: 512 * MiB }], memorySlots: 4, maxMemoryBytes: 4 * GiB },
    });
    assert.equal(vm.status, 201, JSON.stringify(vm.body));
  });

  after(async () => {
    await worker?.stop();
    await events?.close();
    await queue?.obliterate({ force: true }).catch(() => undefined);
    await queue?.close();
    await api?.stop();
  });

  it('applies a group on a stopped VM at once, and answers operation ids once it runs', async () => {
    assert.deepEqual(await submit({ version: 1, action: 'group.create', vm: 'vm-q', group: { name: 'g1', pool: 'cxl-q', kind: 'STATIC', sizeBytes: 256 * MiB } }), {
      operation: null,
      applied: true,
    });
    assert.equal((await http(api, 'GET', '/v1/vms/vm-q/memory-groups/g1')).body.heldBytes, 256 * MiB);
    const start = await submit({ version: 1, action: 'vm.start', vm: 'vm-q', requestId: 'auto-start-1' });
    assert.match(start.operation, /^[0-9a-f-]{36}$/);
    const op = await http(api, 'GET', `/v1/operations/${start.operation}`);
    assert.deepEqual([op.body.kind, op.body.state], ['START', 'PENDING']);
    assert.match(op.body.principal, /automation/);
    // The same requestId answers with the same operation.
    assert.deepEqual(await submit({ version: 1, action: 'vm.start', vm: 'vm-q', requestId: 'auto-start-1' }), start);
    const plug = await submit({ version: 1, action: 'group.create', vm: 'vm-q', group: { name: 'g2', pool: 'cxl-q', kind: 'STATIC', sizeBytes: 128 * MiB } });
    assert.equal((await http(api, 'GET', `/v1/operations/${plug.operation}`)).body.kind, 'PLUG');
  });

  it('fails bad requests with the same specific errors as the APIs', async () => {
    const version = await refused({ version: 2, action: 'vm.start', vm: 'vm-q' });
    assert.deepEqual([version.code, version.reason, version.violations[0]!.field], ['INVALID_ARGUMENT', 'UNSUPPORTED_REQUEST_VERSION', 'version']);
    const shape = await refused({ version: 1, action: 'group.create', vm: 'vm-q', group: { name: 'g3', pool: 'cxl-q', kind: 'STATIC', sizeBytes: -1, colour: 'red' } });
    assert.equal(shape.reason, 'INVALID_REQUEST');
    assert.ok(shape.violations.some((v) => v.field === 'group.sizeBytes'), JSON.stringify(shape));
    assert.ok(shape.violations.some((v) => v.field === 'group' && /colour/.test(v.description)), JSON.stringify(shape));
    const rule = await refused({ version: 1, action: 'group.create', vm: 'vm-q', group: { name: 'g3', pool: 'cxl-q', kind: 'STATIC', sizeBytes: 200 * MiB } });
    const viaRest = await http(api, 'POST', '/v1/vms/vm-q/memory-groups', { body: { name: 'g3', pool: 'cxl-q', kind: 'STATIC', sizeBytes: 200 * MiB } });
    assert.equal(viaRest.status, 400);
    assert.deepEqual([rule.code, rule.reason, rule.violations], [viaRest.body.code, viaRest.body.reason, viaRest.body.violations]);
    const missing = await refused({ version: 1, action: 'vm.stop', vm: 'no-such-vm' });
    assert.deepEqual([missing.code, missing.reason], ['NOT_FOUND', 'VM_NOT_FOUND']);
  });
});
