import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Queue } from 'bullmq';
import { Client } from 'pg';
import { freePort } from '#platform';
import { OPERATIONS_QUEUE, operationJob, operationJobId, redisConnection, type ExecuteOperationJob } from '#queue';
import { cxlHostBody, cxlVmBody } from '#testing/fixtures';
import { testServices } from '#testing/services';
import { GiB, http, MiB, startTestApi, type TestApi } from './harness';

/** Creates a host, a pool and a VM, starts the VM and returns its START operation's id and the VM's uid. */
async function startVm(api: TestApi, suffix: string): Promise<{ operationId: string; vmId: string }> {
  assert.equal((await http(api, 'POST', '/v1/hosts', { body: cxlHostBody(`hv-${suffix}`, 16 * GiB) })).status, 201);
  const vm = await http(api, 'POST', '/v1/vms', { body: cxlVmBody(`vm-${suffix}`, `hv-${suffix}`, 'linux-6.12') });
  assert.equal(vm.status, 201, JSON.stringify(vm.body));
  const started = await http(api, 'POST', `/v1/vms/vm-${suffix}:start`);
  assert.equal(started.status, 202, JSON.stringify(started.body));
  return { operationId: String(started.body.name).split('/').pop()!, vmId: vm.body.uid };
}

async function outboxDispatchedAt(databaseUrl: string, operationId: string): Promise<(Date | null)[]> {
  const c = new Client({ connectionString: databaseUrl });
  await c.connect();
  try {
    return (await c.query<{ dispatched_at: Date | null }>(`select dispatched_at from outbox where key = $1`, [operationId])).rows.map((r) => r.dispatched_at);
  } finally {
    await c.end();
  }
}

/**
 * The API's fast path (OperationRelay): an operation it records is queued by the API itself
 * once the transaction commits, with no outbox dispatcher running; the outbox row stays for
 * the dispatchers, whose add of the same job changes nothing. And with Redis away the API
 * still answers and records the operation for the dispatchers.
 */
describe('the API queues the operations it records', () => {
  const prefix = `relay${process.pid}`;
  let api: TestApi;
  let queue: Queue<ExecuteOperationJob>;

  before(async () => {
    api = await startTestApi({ MEMPLANE_QUEUE_PREFIX: prefix });
    queue = new Queue<ExecuteOperationJob>(OPERATIONS_QUEUE, { connection: redisConnection(testServices().redisUrl), prefix });
  });

  after(async () => {
    await queue?.obliterate({ force: true }).catch(() => undefined);
    await queue?.close();
    await api?.stop();
  });

  it("adds the operation's job under the workers' prefix, without a dispatcher, and leaves the outbox row for the dispatchers", async () => {
    const { operationId, vmId } = await startVm(api, 'r1');
    const deadline = Date.now() + 5_000;
    let job = await queue.getJob(operationJobId(operationId));
    while (!job && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 10));
      job = await queue.getJob(operationJobId(operationId));
    }
    assert.ok(job, `job ${operationJobId(operationId)} queued by the API`);
    assert.deepEqual(job.data, { operationId, vmId });
    assert.equal(job.name, 'execute-operation');
    assert.equal(job.opts.attempts, operationJob(operationId, vmId).opts.attempts);
    assert.equal(await job.getState(), 'waiting', 'no worker runs here');
    assert.deepEqual(await outboxDispatchedAt(api.databaseUrl, operationId), [null], 'the outbox row is still pending: no dispatcher marked it');

    // A dispatcher's add of the same operation (same job id) changes nothing.
    const again = operationJob(operationId, vmId);
    await queue.addBulk([again]);
    assert.equal(await queue.getWaitingCount(), 1);

    // Two plugs recorded on the STARTING VM: its waiting job runs all three operations, so
    // the API adds no more jobs for it (deduplicated by VM).
    assert.equal((await http(api, 'POST', '/v1/pools', { body: { name: 'cxl-r1', host: 'hv-r1', hostNodeId: 1, capacityBytes: 4 * GiB } })).status, 201);
    const plugs: string[] = [];
    for (const name of ['a', 'b']) {
      const g = await http(api, 'POST', '/v1/vms/vm-r1/memory-groups', { body: { name, pool: 'cxl-r1', kind: 'STATIC', sizeBytes: 256 * MiB, onlineType: 'ONLINE_MOVABLE' } });
      assert.equal(g.status, 201, JSON.stringify(g.body));
      plugs.push(String(g.body.operation).split('/').pop()!);
    }
    const relay = api.running.runtime.relay!;
    const settled = Date.now() + 5_000;
    while (relay.stats.added < 3 && Date.now() < settled) await new Promise((r) => setTimeout(r, 10));
    assert.equal(relay.stats.added, 3, 'the API asked for a job for each of the three operations');
    const waiting = await queue.getWaiting();
    assert.deepEqual(
      waiting.map((j) => j.id),
      [operationJobId(operationId)],
      "one job waits for the VM: the first one's",
    );
    for (const p of plugs) assert.equal(await queue.getJob(operationJobId(p)), undefined);
    assert.deepEqual(await outboxDispatchedAt(api.databaseUrl, plugs[1]!), [null], 'their outbox rows wait for the dispatchers');
  });
});

describe('with Redis away, the API still answers and leaves the operation to the dispatchers', () => {
  let api: TestApi;

  before(async () => {
    // A port nothing listens on: every add fails or waits for a Redis that never comes.
    api = await startTestApi({ REDIS_URL: `redis://127.0.0.1:${await freePort()}`, MEMPLANE_QUEUE_PREFIX: `relay-away${process.pid}` });
  });

  after(async () => {
    const t = Date.now();
    await api?.stop();
    // The relay's close does not wait for the Redis that never came (bounded at 2 s).
    assert.ok(Date.now() - t < 10_000, `stopped in ${Date.now() - t} ms`);
  });

  it('records the operation and its pending outbox row', async () => {
    const { operationId } = await startVm(api, 'r2');
    const op = await http(api, 'GET', `/v1/operations/${operationId}`);
    assert.equal(op.status, 200);
    assert.equal(op.body.state, 'PENDING');
    assert.deepEqual(await outboxDispatchedAt(api.databaseUrl, operationId), [null]);
  });
});
