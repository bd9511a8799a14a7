import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client } from 'pg';
import { recordingExecutorConfig } from '#testing/fixtures';
import { testServices } from '#testing/services';
import { GiB, http, MiB, startTestApi, type TestApi } from '../../api/test/harness';
import { RecordingDriver } from '../../../bench/recording-driver';
import { startWorker, type RunningWorker } from '../src/worker';

/**
 * Two workers (two lock pools, two BullMQ consumers, as two processes would have) take jobs
 * for the same VMs at once. Operations of one VM must still run one at a time and in order:
 * each starts after the previous one ended, none runs twice. The hypervisor is the bench's
 * in-process simulation (bench/recording-driver.ts), shared by both workers as one host's
 * QEMUs would be: it refuses a backend or a device added twice, so two workers running one
 * operation together would fail it.
 */
describe('operations of one VM, two workers', () => {
  let api: TestApi;
  const workers: RunningWorker[] = [];
  const runtimeDir = mkdtempSync(join(tmpdir(), 'memplane-serial-'));
  const driver = new RecordingDriver();
  const VMS = 3;
  const PLUGS_PER_VM = 12;

  before(async () => {
    api = await startTestApi();
    for (let w = 0; w < 2; w++) {
      workers.push(
        await startWorker({
          databaseUrl: api.databaseUrl,
          redisUrl: testServices().redisUrl,
          prefix: `serial${process.pid}`,
          intake: false,
          concurrency: 3,
          driver,
          executor: recordingExecutorConfig(runtimeDir),
        }),
      );
    }
    const host = await http(api, 'POST', '/v1/hosts', {
      body: {
        name: 'hv-s',
        nodes: [
          { nodeId: 0, cpus: [0, 1], memoryBytes: 8 * GiB, kind: 'DRAM' },
          { nodeId: 1, cpus: [], memoryBytes: 64 * GiB, kind: 'CXL' },
        ],
        performance: [
          { cpuNodeId: 0, memoryNodeId: 0, readLatencyNs: 100, writeLatencyNs: 100, readBandwidthMBps: 51200, writeBandwidthMBps: 51200 },
          { cpuNodeId: 0, memoryNodeId: 1, readLatencyNs: 250, writeLatencyNs: 250, readBandwidthMBps: 20480, writeBandwidthMBps: 20480 },
        ],
      },
    });
    assert.equal(host.status, 201, JSON.stringify(host.body));
    assert.equal((await http(api, 'POST', '/v1/pools', { body: { name: 'cxl-s', host: 'hv-s', hostNodeId: 1, capacityBytes: 32 * GiB } })).status, 201);
    for (let v = 0; v < VMS; v++) {
      const vm = await http(api, 'POST', '/v1/vms', {
        body: { name: `vm-s${v}`, host: 'hv-s', kernelProfile: 'linux-6.12', guestNodes: [{ guestNodeId: 0, vcpus: 1, bootMemoryBytes: 512 * MiB }], memorySlots: 32, maxMemoryBytes: 8 * GiB },
      });
      assert.equal(vm.status, 201, JSON.stringify(vm.body));
    }
  });

  /** Records a plug of a 128 MiB static group on vm-s`v` (the API answers 201). */
  const plug = (v: number, name: string) =>
    http(api, 'POST', `/v1/vms/vm-s${v}/memory-groups`, { body: { name, pool: 'cxl-s', kind: 'STATIC', sizeBytes: 128 * MiB, onlineType: 'ONLINE_MOVABLE' } }).then((r) =>
      assert.equal(r.status, 201, JSON.stringify(r.body)),
    );

  after(async () => {
    for (const w of workers) await w.stop();
    await api?.stop();
    rmSync(runtimeDir, { recursive: true, force: true });
  });

  it('runs each VM’s operations one at a time, in order, each once', async () => {
    for (let v = 0; v < VMS; v++) assert.equal((await http(api, 'POST', `/v1/vms/vm-s${v}:start`)).status, 202);
    // Many plugs per VM, recorded in parallel while both workers run.
    const requests: Promise<unknown>[] = [];
    for (let i = 0; i < PLUGS_PER_VM; i++) {
      for (let v = 0; v < VMS; v++) {
        requests.push(plug(v, `g${i}`));
      }
    }
    await Promise.all(requests);

    const db = new Client({ connectionString: api.databaseUrl });
    await db.connect();
    try {
      const deadline = Date.now() + 60_000;
      let rows: { vm: string; seq: string; kind: string; state: string; attempts: number; started: number; ended: number }[] = [];
      for (;;) {
        rows = (
          await db.query(
            `select v.name as vm, o.seq::text as seq, o.kind::text as kind, o.state::text as state, o.attempts,
               extract(epoch from o.started_at) * 1e6 as started, extract(epoch from o.ended_at) * 1e6 as ended
             from operations o join vms v on v.id = o.vm_id order by o.seq`,
          )
        ).rows.map((r) => ({ ...r, started: Number(r.started), ended: Number(r.ended) }));
        if (rows.length === VMS * (PLUGS_PER_VM + 1) && rows.every((r) => !['PENDING', 'RUNNING'].includes(r.state))) break;
        assert.ok(Date.now() < deadline, `not all operations ended: ${JSON.stringify(rows.filter((r) => ['PENDING', 'RUNNING'].includes(r.state)))}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.deepEqual(
        rows.filter((r) => r.state !== 'SUCCEEDED' || r.attempts !== 1),
        [],
        'every operation succeeded at its first attempt',
      );
      for (let v = 0; v < VMS; v++) {
        const ops = rows.filter((r) => r.vm === `vm-s${v}`);
        for (let k = 1; k < ops.length; k++) {
          assert.ok(ops[k]!.started >= ops[k - 1]!.ended, `vm-s${v}: operation ${ops[k]!.seq} started before ${ops[k - 1]!.seq} ended`);
        }
      }
      // And QEMU (here its simulation) has each group's device exactly once.
      for (let v = 0; v < VMS; v++) {
        const vmId = (await db.query(`select id from vms where name = $1`, [`vm-s${v}`])).rows[0].id as string;
        const ids = (await driver.queryMemoryDevices(vmId)).map((d) => d.id).sort();
        assert.deepEqual(ids, Array.from({ length: PLUGS_PER_VM }, (_, i) => `dimm-g${i}`).sort());
      }
    } finally {
      await db.end();
    }
  });

  it('shows each VM’s devices as QEMU has them after loops that plug and unplug one after another', async () => {
    // Unplugs and plugs recorded together, so a VM loop runs several of each back to back:
    // its ends write only what changed since its previous end (a diff that wrote nothing
    // fails this test), and an unplug writes the whole list in its own transaction.
    const requests: Promise<unknown>[] = [];
    for (let i = 0; i < 6; i++) {
      for (let v = 0; v < VMS; v++) {
        requests.push(http(api, 'DELETE', `/v1/vms/vm-s${v}/memory-groups/g${2 * i}`).then((r) => assert.equal(r.status, 202, JSON.stringify(r.body))));
        requests.push(plug(v, `h${i}`));
      }
    }
    await Promise.all(requests);
    const db = new Client({ connectionString: api.databaseUrl });
    await db.connect();
    try {
      const deadline = Date.now() + 60_000;
      for (;;) {
        const active = Number((await db.query(`select count(*) as n from operations where state in ('PENDING', 'RUNNING')`)).rows[0].n);
        if (active === 0) break;
        assert.ok(Date.now() < deadline, `${active} operations did not end`);
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.deepEqual((await db.query(`select state::text, count(*)::int as n from operations where state <> 'SUCCEEDED' group by state`)).rows, []);
      const byId = (list: { id?: unknown }[]) => [...list].sort((a, b) => String(a.id).localeCompare(String(b.id)));
      for (let v = 0; v < VMS; v++) {
        const vm = await http(api, 'GET', `/v1/vms/vm-s${v}`);
        const inQemu = JSON.parse(JSON.stringify(await driver.queryMemoryDevices(vm.body.uid))) as { id?: unknown; addressBytes: number }[];
        assert.deepEqual(
          inQemu.map((d) => d.id).sort(),
          [...Array.from({ length: 6 }, (_, i) => `dimm-g${2 * i + 1}`), ...Array.from({ length: 6 }, (_, i) => `dimm-h${i}`)].sort(),
        );
        assert.deepEqual(byId(vm.body.observedMemoryDevices), byId(inQemu), `vm-s${v}: the API shows what QEMU has`);
        const addresses = (vm.body.observedMemoryDevices as { addressBytes: number }[]).map((d) => d.addressBytes);
        assert.deepEqual(addresses, [...addresses].sort((a, b) => a - b), 'in address order');
      }
    } finally {
      await db.end();
    }
  });
});
