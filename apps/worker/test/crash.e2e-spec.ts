import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Client } from 'pg';
import { probeQemuPid } from '#hypervisor';
import { testServices } from '#testing/services';
import { ensureGuestImages } from '#testing/guest';
import { GiB, http, MiB, startTestApi, type TestApi } from '../../api/test/harness';
import { cxlHostBody } from '#testing/fixtures';

/**
 * Crash safety with real processes: a worker is SIGKILLed while it executes a plug; QEMU
 * keeps running, the operation stays RUNNING in Postgres, and a newly started worker takes
 * the job over (BullMQ stalled-job recovery), re-attaches to QEMU and finishes it.
 */

const MAIN = resolve(__dirname, '../src/main.js');

async function waitOperation(api: TestApi, name: string, until: (op: any) => boolean, timeoutMs = 120_000, stepMs = 250): Promise<any> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await http(api, 'GET', `/v1/operations/${name}`);
    if (until(r.body)) return r.body;
    if (Date.now() > deadline) assert.fail(`operation ${name}: ${JSON.stringify(r.body)}`);
    await new Promise((res) => setTimeout(res, stepMs));
  }
}

describe('a worker killed in the middle of a plug', () => {
  let api: TestApi;
  const dataDir = mkdtempSync(join(tmpdir(), 'memplane-crash-'));
  chmodSync(dataDir, 0o755);
  const workers: ChildProcess[] = [];
  let qemuPid = 0;

  const startWorkerProcess = () => {
    const child = spawn(process.execPath, [MAIN], {
      env: {
        ...process.env,
        DATABASE_URL: api.databaseUrl,
        REDIS_URL: testServices().redisUrl,
        MEMPLANE_QUEUE_PREFIX: `crash${process.pid}`,
        MEMPLANE_DATA_DIR: dataDir,
        MEMPLANE_HOST_NODE_BINDING: 'none',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    (child as ChildProcess & { output: () => string }).output = () => out;
    workers.push(child);
    return child;
  };

  before(async () => {
    ensureGuestImages('linux-6.12');
    api = await startTestApi();
    await http(api, 'POST', '/v1/hosts', {
      body: cxlHostBody('hv-crash'),
    });
    await http(api, 'POST', '/v1/pools', { body: { name: 'cxl-crash', host: 'hv-crash', hostNodeId: 1, capacityBytes: 4 * GiB } });
    const vm = await http(api, 'POST', '/v1/vms', {
      body: { name: 'vm-crash', host: 'hv-crash', kernelProfile: 'linux-6.12', guestNodes: [{ guestNodeId: 0, vcpus: 2, bootMemoryBytes: 512 * MiB }], memorySlots: 8, maxMemoryBytes: 4 * GiB },
    });
    assert.equal(vm.status, 201, JSON.stringify(vm.body));
    // The CXL guest node is declared at launch for the pools the VM's groups use.
    assert.equal((await http(api, 'POST', '/v1/vms/vm-crash/memory-groups', { body: { name: 'first', pool: 'cxl-crash', kind: 'STATIC', sizeBytes: 128 * MiB } })).status, 201);
  });

  after(async () => {
    for (const w of workers) if (w.exitCode === null) w.kill('SIGKILL');
    if (qemuPid) {
      try {
        process.kill(qemuPid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
    await api?.stop();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('leaves QEMU running and the next worker finishes the operation', async () => {
    const first = startWorkerProcess();
    const start = await http(api, 'POST', '/v1/vms/vm-crash:start');
    const started = await waitOperation(api, start.body.name, (op) => ['SUCCEEDED', 'FAILED'].includes(op.state), 180_000);
    assert.equal(started.state, 'SUCCEEDED', `${JSON.stringify(started)}\n${(first as any).output()}`);

    const db = new Client({ connectionString: api.databaseUrl });
    await db.connect();
    qemuPid = (await db.query(`select qemu_pid from vms where name = 'vm-crash'`)).rows[0].qemu_pid;
    await db.end();
    assert.ok(qemuPid > 0);

    const g = await http(api, 'POST', '/v1/vms/vm-crash/memory-groups', { body: { name: 'during-crash', pool: 'cxl-crash', kind: 'STATIC', sizeBytes: 1 * GiB } });
    assert.equal(g.status, 201, JSON.stringify(g.body));
    // Kill the worker as soon as it has taken the first step of the plug.
    const running = await waitOperation(api, g.body.operation, (op) => op.state !== 'PENDING', 60_000, 5);
    first.kill('SIGKILL');
    await new Promise((r) => first.once('exit', r));
    assert.notEqual(running.state, 'SUCCEEDED', 'the kill must land before the plug finished');
    const mid = (await http(api, 'GET', `/v1/operations/${g.body.operation}`)).body;
    assert.equal(mid.state, 'RUNNING', JSON.stringify(mid));

    // QEMU survived the worker.
    assert.equal(probeQemuPid(qemuPid).state, 'running');

    const second = startWorkerProcess();
    const done = await waitOperation(api, g.body.operation, (op) => ['SUCCEEDED', 'FAILED', 'CANCELLED'].includes(op.state), 120_000);
    assert.equal(done.state, 'SUCCEEDED', `${JSON.stringify(done)}\n${(second as any).output()}`);
    assert.ok(done.attempts >= 2, `taken over: attempts ${done.attempts}`);
    const group = (await http(api, 'GET', '/v1/vms/vm-crash/memory-groups/during-crash')).body;
    assert.equal(group.state, 'PLUGGED');
    assert.equal(group.pluggedBytes, 1 * GiB);
    assert.equal(group.onlineBlocks, 8);

    const stop = await http(api, 'POST', '/v1/vms/vm-crash:stop');
    assert.equal((await waitOperation(api, stop.body.name, (op) => ['SUCCEEDED', 'FAILED'].includes(op.state))).state, 'SUCCEEDED');
    // Gone, or a zombie until init reaps the orphan (QEMU outlived the worker that spawned it).
    assert.notEqual(probeQemuPid(qemuPid).state, 'running');
    qemuPid = 0;
    second.kill('SIGTERM');
  });
});
