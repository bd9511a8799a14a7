import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Client } from 'pg';
import { Database } from '#persistence';
import { freshDatabase } from '#testing/services';
import { SYSTEM_PRINCIPAL, type CallContext } from '../context';
import { HostService } from '../host.service';
import { MemoryGroupService } from '../memory-group.service';
import { Mutations } from '../mutations';
import { PoolService } from '../pool.service';
import { VmService } from '../vm.service';
import { EngineStore } from './engine-store';

const MiB = 1024 ** 2;
const GiB = 1024 ** 3;
const ctx: CallContext = { principal: SYSTEM_PRINCIPAL, transport: 'system', correlationId: 'engine-store-int-spec' };

/**
 * The engine's claim and end statements on a real Postgres: operations of a VM are claimed
 * oldest first; an end is written with its group's observation in the same statement that
 * claims the next operation; the VM context (VM, host, groups) comes back whenever anything
 * it holds changed, and only then.
 */
describe('engine store: claiming and ending operations', () => {
  let db: Database;
  let drop: () => Promise<void>;
  let store: EngineStore;
  let groups: MemoryGroupService;
  let vmId = '';
  let url = '';

  before(async () => {
    const fresh = await freshDatabase();
    drop = fresh.drop;
    url = fresh.url;
    db = new Database({ url: fresh.url, poolSize: 4 });
    store = new EngineStore(db);
    const mutations = new Mutations(db);
    groups = new MemoryGroupService(mutations);
    await new HostService(mutations).create(ctx, {
      name: 'hv-e',
      description: '',
      labels: {},
      state: 'READY',
      nodes: [
        { nodeId: 0, cpus: [0, 1], memoryBytes: 8 * GiB, kind: 'DRAM' },
        { nodeId: 1, cpus: [], memoryBytes: 16 * GiB, kind: 'CXL' },
      ],
      performance: [
        { cpuNodeId: 0, memoryNodeId: 0, readLatencyNs: 100, writeLatencyNs: 100, readBandwidthMBps: 51200, writeBandwidthMBps: 51200 },
        { cpuNodeId: 0, memoryNodeId: 1, readLatencyNs: 250, writeLatencyNs: 250, readBandwidthMBps: 20480, writeBandwidthMBps: 20480 },
      ],
      distances: [],
    });
    await new PoolService(mutations).create(ctx, {
      name: 'cxl-e',
      description: '',
      labels: {},
      host: 'hv-e',
      hostNodeId: 1,
      capacityBytes: 4 * GiB,
      granuleBytes: 128 * MiB,
      memoryType: 'VOLATILE',
      state: 'ACTIVE',
    });
    const vms = new VmService(mutations);
    const vm = await vms.create(ctx, {
      name: 'vm-e',
      description: '',
      labels: {},
      host: 'hv-e',
      kernelProfile: 'linux-6.12',
      guestMemory: {},
      guestNodes: [{ guestNodeId: 0, vcpus: 1, bootMemoryBytes: 1 * GiB }],
      memorySlots: 4,
      maxMemoryBytes: 8 * GiB,
      sparePciePorts: 0,
    });
    vmId = vm.uid;
    await vms.start(ctx, 'vm-e');
  });
  after(async () => {
    await db?.close();
    await drop?.();
  });

  const plug = async (name: string) =>
    (await groups.create(ctx, { name, vm: 'vm-e', pool: 'cxl-e', kind: 'STATIC', sizeBytes: 256 * MiB, onlineType: 'ONLINE_MOVABLE' })).operation!;

  it('claims the oldest operation with the VM context, ends it and claims the next in one statement, and re-sends the context only after a change', async () => {
    const start = await store.claimHead(vmId);
    assert.ok(start?.context, 'a caller without a copy gets the context');
    assert.equal(start.op.kind, 'START');
    assert.equal(start.op.state, 'RUNNING');
    assert.equal(start.op.attempts, 1);
    assert.equal(start.context.host.nodes.length, 2);
    await store.setVmRunning(vmId, { pid: 4242, qmpSocketPath: '/run/q.sock', qgaSocketPath: '/run/g.sock', runtimeDir: '/run' });

    const first = await plug('a');
    const second = await plug('b');
    const afterStart = await store.endAndClaim(vmId, { operationId: start.op.name, state: 'SUCCEEDED' }, true, start.contextKey);
    assert.equal(afterStart.ended, true);
    const a = afterStart.next!;
    assert.equal(a.op.name, first, 'oldest first');
    assert.notEqual(a.contextKey, start.contextKey, 'the VM started and gained groups: a new context');
    assert.ok(a.context);
    assert.equal(a.context.runtime?.pid, 4242);
    assert.deepEqual(a.context.groups.map((g) => g.name), ['a', 'b']);
    assert.equal(a.group?.name, 'a');

    // Ending 'a' with its observation claims 'b'; nothing the context holds changed.
    const afterA = await store.endAndClaim(
      vmId,
      {
        operationId: a.op.name,
        state: 'SUCCEEDED',
        group: { id: a.group!.uid, observation: { state: 'PLUGGED', pluggedBytes: 256 * MiB, onlineBlocks: 2, zones: { Movable: 2 } } },
        devices: [{ kind: 'dimm', id: 'dimm-a' }],
        steps: { steps: [{ name: 'device_add pc-dimm', state: 'DONE' }], progressPercent: 100 },
      },
      true,
      a.contextKey,
    );
    const b = afterA.next!;
    assert.equal(b.op.name, second);
    assert.equal(b.contextKey, a.contextKey);
    assert.equal(b.context, undefined, 'unchanged: the caller keeps its copy');
    assert.equal(b.group?.name, 'b', "the operation's own group is always read");

    const c = new Client({ connectionString: url });
    await c.connect();
    try {
      const op = (await c.query(`select state::text, progress_percent, steps from operations where id = $1`, [a.op.name])).rows[0];
      assert.deepEqual([op.state, op.progress_percent, op.steps], ['SUCCEEDED', 100, [{ name: 'device_add pc-dimm', state: 'DONE' }]]);
      const g = (await c.query(`select state::text, plugged_bytes, online_blocks, online_zones from memory_groups where name = 'a'`)).rows[0];
      assert.deepEqual([g.state, Number(g.plugged_bytes), g.online_blocks, g.online_zones], ['PLUGGED', 256 * MiB, 2, { Movable: 2 }]);
      const vm = (await c.query(`select observed_devices from vms where id = $1`, [vmId])).rows[0];
      assert.deepEqual(vm.observed_devices, [{ kind: 'dimm', id: 'dimm-a' }]);
    } finally {
      await c.end();
    }

    // A change to any group's desired state (here a new group) means a new context.
    await store.requeue(b.op.name, { code: 'UNAVAILABLE', reason: 'TEST', message: 'again' }, { steps: [], progressPercent: 0 });
    await plug('c');
    const again = await store.claimHead(vmId, b.contextKey);
    assert.equal(again?.op.name, second);
    assert.equal(again?.op.attempts, 2);
    assert.notEqual(again?.contextKey, b.contextKey);
    assert.deepEqual(again?.context?.groups.map((g) => g.name), ['a', 'b', 'c']);

    // Ending without claiming leaves the rest PENDING.
    const last = await store.endAndClaim(vmId, { operationId: second, state: 'FAILED', error: { code: 'INTERNAL', reason: 'TEST', message: 'x' } }, false, again!.contextKey);
    assert.deepEqual(last, { ended: true });
    assert.ok(await store.headOperation(vmId), 'the plug of c is still to run');
  });
});
