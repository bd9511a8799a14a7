import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Client } from 'pg';
import { Database, DEDICATED_SQL_OPTIONS, END_AND_CLAIM, EngineRepository } from '#persistence';
import { freshDatabase } from '#testing/services';
import { SYSTEM_PRINCIPAL, type CallContext } from '../context';
import { HostService } from '../host.service';
import { MemoryGroupService } from '../memory-group.service';
import { Mutations } from '../mutations';
import { PoolService } from '../pool.service';
import { VmService } from '../vm.service';
import { EndAndClaimBatcher } from './end-and-claim-batcher';
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
  let vms: VmService;
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
    vms = new VmService(mutations);
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
    assert.deepEqual([...afterA.writtenDevices!.keys()], ['dimm-a'], 'the end says what it wrote');
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
      const devices = (await c.query(`select key, device from vm_memory_devices where vm_id = $1`, [vmId])).rows;
      assert.deepEqual(devices, [{ key: 'dimm-a', device: { kind: 'dimm', id: 'dimm-a' } }]);
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

  const startedVm = async (name: string) => {
    const vm = await vms.create(ctx, {
      name,
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
    await vms.start(ctx, name);
    return vm.uid;
  };

  it('claims for several VMs in one statement, each its own VM\'s operation, and refuses two items for one VM', async () => {
    const f = await startedVm('vm-f');
    const g = await startedVm('vm-g');
    const repo = new EngineRepository();
    const [rf, rg] = await repo.endAndClaimMany(db.sql, [
      { vmId: f, claimNext: true },
      { vmId: g, claimNext: true },
    ]);
    assert.equal(rf?.next?.op.vm, 'vm-f');
    assert.equal(rf?.next?.op.kind, 'START');
    assert.equal(rf?.next?.context?.vm.name, 'vm-f');
    assert.equal(rg?.next?.op.vm, 'vm-g');
    assert.equal(rg?.next?.context?.vm.name, 'vm-g');
    assert.equal(rg?.ended, false);
    // Both end in one statement; neither VM has more to claim.
    const ends = await repo.endAndClaimMany(db.sql, [
      { vmId: g, end: { operationId: rg!.next!.op.name, state: 'SUCCEEDED' }, claimNext: true },
      { vmId: f, end: { operationId: rf!.next!.op.name, state: 'FAILED', error: { code: 'INTERNAL', reason: 'TEST', message: 'f' } }, claimNext: true },
    ]);
    assert.deepEqual(ends, [{ ended: true }, { ended: true }]);
    const states = await db.sql.query<{ id: string; state: string }>(`select id::text, state::text from operations where id = any($1::uuid[]) order by id`, [
      [rf!.next!.op.name, rg!.next!.op.name],
    ]);
    assert.deepEqual(
      Object.fromEntries(states.map((r) => [r.id, r.state])),
      { [rf!.next!.op.name]: 'FAILED', [rg!.next!.op.name]: 'SUCCEEDED' },
    );
    await assert.rejects(
      repo.endAndClaimMany(db.sql, [
        { vmId: f, claimNext: true },
        { vmId: f, claimNext: true },
      ]),
      /two items for one VM/,
    );
  });

  it("writes a VM's devices whole or as changes, rewrites no unchanged device, lists them in address order and drops them when the VM stops", async () => {
    const v = await startedVm('vm-d');
    const repo = new EngineRepository();
    const started = (await repo.endAndClaimMany(db.sql, [{ vmId: v, claimNext: true }]))[0]!.next!;
    const dimm = (id: string, addressBytes: number, sizeBytes = 256 * MiB) => ({ kind: 'dimm', id, addressBytes, sizeBytes, slot: 0, node: 1, memdev: `/objects/mem-${id}`, hotplugged: true, hotpluggable: true });
    const other = { kind: 'other', type: 'sgx-epc', id: undefined, data: { addr: 12 * GiB, size: 64 * MiB } };
    const end = async (devices: unknown[], written?: ReadonlyMap<string, unknown>) =>
      (await repo.endAndClaimMany(db.sql, [{ vmId: v, end: { operationId: started.op.name, state: 'SUCCEEDED', devices }, claimNext: false, writtenDevices: written }]))[0]!;
    const rows = async () =>
      Object.fromEntries(
        (await db.sql.query<{ key: string; xmin: string; size: string }>(`select key, xmin::text, device->>'sizeBytes' as size from vm_memory_devices where vm_id = $1::uuid`, [v])).map((r) => [
          r.key,
          { xmin: r.xmin, size: r.size === null ? null : Number(r.size) },
        ]),
      );
    const shown = async () => (await vms.get(ctx, 'vm-d')).observedMemoryDevices?.map((d) => d['id'] ?? d['kind']);

    // Whole: every device a row, keyed by its id (or kind@address without one), shown by address.
    const first = await end([dimm('dimm-b', 8 * GiB), dimm('dimm-a', 4 * GiB), other]);
    assert.deepEqual([...first.writtenDevices!.keys()], ['dimm-b', 'dimm-a', `other@${12 * GiB}`]);
    const r1 = await rows();
    assert.deepEqual(Object.keys(r1).sort(), ['dimm-a', 'dimm-b', `other@${12 * GiB}`]);
    assert.deepEqual(await shown(), ['dimm-a', 'dimm-b', 'other']);

    // Changes only: dimm-b resized, dimm-c new, the unknown device gone; dimm-a is not rewritten.
    const second = await end([dimm('dimm-a', 4 * GiB), dimm('dimm-b', 8 * GiB, 512 * MiB), dimm('dimm-c', 2 * GiB)], first.writtenDevices);
    assert.deepEqual([...second.writtenDevices!.keys()], ['dimm-a', 'dimm-b', 'dimm-c'], 'what the table holds now, not what changed');
    const r2 = await rows();
    assert.deepEqual(Object.keys(r2).sort(), ['dimm-a', 'dimm-b', 'dimm-c']);
    assert.equal(r2['dimm-a']!.xmin, r1['dimm-a']!.xmin, 'an unchanged device is left as it was');
    assert.notEqual(r2['dimm-b']!.xmin, r1['dimm-b']!.xmin);
    assert.equal(r2['dimm-b']!.size, 512 * MiB);
    assert.deepEqual(await shown(), ['dimm-c', 'dimm-a', 'dimm-b']);

    // Whole again, knowing nothing: the same list rewrites nothing; a shorter one drops the rest.
    await end([dimm('dimm-c', 2 * GiB), dimm('dimm-a', 4 * GiB), dimm('dimm-b', 8 * GiB, 512 * MiB)]);
    assert.deepEqual(await rows(), r2);
    const fourth = await end([dimm('dimm-a', 4 * GiB)]);
    assert.deepEqual(Object.keys(await rows()), ['dimm-a']);
    assert.deepEqual([...fourth.writtenDevices!.keys()], ['dimm-a']);

    // Changes only, each kind on its own: a device added; nothing changed (nothing is
    // written); a device gone and nothing else changed (only it goes).
    const onlyA = await rows();
    const added = await end([dimm('dimm-a', 4 * GiB), dimm('dimm-e', 6 * GiB)], fourth.writtenDevices);
    const withE = await rows();
    assert.deepEqual(Object.keys(withE).sort(), ['dimm-a', 'dimm-e']);
    assert.equal(withE['dimm-a']!.xmin, onlyA['dimm-a']!.xmin);
    const unchanged = await end([dimm('dimm-a', 4 * GiB), dimm('dimm-e', 6 * GiB)], added.writtenDevices);
    assert.deepEqual(await rows(), withE, 'a write with no change touches no row');
    assert.deepEqual([...unchanged.writtenDevices!.keys()], ['dimm-a', 'dimm-e']);
    const dropped = await end([dimm('dimm-a', 4 * GiB)], unchanged.writtenDevices);
    assert.deepEqual(await rows(), onlyA, 'only the device that went is gone; the other is not rewritten');
    assert.deepEqual([...dropped.writtenDevices!.keys()], ['dimm-a']);

    // An end without devices writes none and says so (the caller forgets what it knew).
    const fifth = await end(undefined as unknown as unknown[]);
    assert.equal(fifth.writtenDevices, undefined);
    assert.deepEqual(Object.keys(await rows()), ['dimm-a']);

    await store.setVmStopped(v, 'STOPPED');
    assert.deepEqual(await rows(), {});
    assert.deepEqual(await shown(), []);
  });

  it('batches the VM loops that ask while a statement runs, and splits a batch that fails so only the failing item fails', async () => {
    const h = await startedVm('vm-h');
    const k = await startedVm('vm-k');
    const batcher = new EndAndClaimBatcher(() => db.sql, { maxInFlight: 1 });
    // The first goes at once; the next two wait for it and go together, and the second of
    // them is malformed (not a uuid), which fails their statement as a whole.
    const first = batcher.submit({ vmId: h, claimNext: true });
    const second = batcher.submit({ vmId: k, claimNext: true });
    const bad = batcher.submit({ vmId: 'not-a-uuid', claimNext: true });
    const [r1, r2, r3] = await Promise.allSettled([first, second, bad]);
    assert.equal(r1.status === 'fulfilled' && r1.value.next?.op.vm, 'vm-h');
    assert.equal(r2.status === 'fulfilled' && r2.value.next?.op.vm, 'vm-k', 'the good item of the failed batch ran again alone');
    assert.equal(r3.status, 'rejected');
    assert.match(String((r3 as PromiseRejectedResult).reason), /uuid/);
    // 1 (first) + 1 (second and bad together, failed) + 2 (each alone).
    assert.deepEqual(batcher.stats, { statements: 4, items: 5 });
    const running = await db.sql.query<{ vm: string; attempts: number }>(
      `select v.name as vm, o.attempts from operations o join vms v on v.id = o.vm_id where o.state = 'RUNNING' and v.name in ('vm-h', 'vm-k') order by v.name`,
    );
    assert.deepEqual(running, [
      { vm: 'vm-h', attempts: 1 },
      { vm: 'vm-k', attempts: 1 },
    ], 'the failed statement claimed nothing: one attempt each');
  });

  /**
   * The plans memplane_lock_vm really runs (auto_explain, nested statements). The API locks
   * a VM and reads it with its groups through it in every change to the VM's groups, and the
   * engine in its own transactions. Under plan_cache_mode=auto each connection planned its
   * reads afresh for their first five calls (1.1 ms a plan, bench:ops --pg-statements); the
   * function now plans them generically, once per session, so they must not depend on what
   * the tables held then.
   */
  const lockVmPlans = async (): Promise<string[]> => {
    await db.sql.query('analyze memory_groups, operations, vms, vm_memory_devices, vm_guest_nodes, pools, hosts');
    const c = new Client({ connectionString: url });
    await c.connect();
    const notices: string[] = [];
    c.on('notice', (n) => notices.push(n.message ?? ''));
    try {
      await c.query(`load 'auto_explain'`);
      await c.query(`set auto_explain.log_min_duration = 0; set auto_explain.log_nested_statements = on; set auto_explain.log_level = notice`);
      const vm = (await c.query<{ name: string }>(`select v.name from vms v join memory_groups g on g.vm_id = v.id join operations o on o.group_id = g.id limit 1`)).rows[0]!.name;
      // Seven calls: under plan_cache_mode=auto the sixth is the first that may go generic.
      for (let i = 0; i < 7; i++) {
        await c.query('begin');
        await c.query('select memplane_lock_vm($1)', [vm]);
        await c.query('rollback');
      }
      return notices.filter((n) => /json_build_object|FROM vms WHERE name/.test(n));
    } finally {
      await c.end();
    }
  };
  const assertLockVmLookups = (plans: string[], when: string) => {
    assert.equal(plans.length, 14, `${when}: both statements' plans, at each of the 7 calls`);
    for (const plan of plans) {
      // A generic plan compares with a parameter, a custom one with that call's value; and by key.
      assert.match(plan, /Index Cond: \(\w+ = \$\d+\)/, `${when}: a generic plan that looks rows up by key (an index condition on a parameter):\n${plan}`);
      assert.doesNotMatch(plan, /Seq Scan|Hash Join|Merge Join|Bitmap/, `${when}: nothing scanned, every row looked up by key:\n${plan}`);
      assert.doesNotMatch(plan, /operations_state_idx|operations_vm_id_state_idx/, `${when}: no operation is found through an index of states:\n${plan}`);
    }
    assert.ok(plans.some((p) => /Index Scan using operations_one_active_per_group on operations/.test(p)), `${when}: a group's active operation by its partial index`);
  };

  it('plans end-and-claim and memplane_lock_vm as lookups by key, for a few rows as for a fleet: no scan of memory groups, VMs or operations, the next operation from operations_active_by_vm', async () => {
    // The plan the worker's end-and-claim connections make: generic, under their settings,
    // once per connection, whatever the tables held then; so it must be the same plan
    // shape for the few rows the tests above left as for a fleet.
    const explain = async () => {
      await db.sql.query('analyze memory_groups, operations, vms, vm_memory_devices');
      const lane = new Client({ connectionString: url, options: DEDICATED_SQL_OPTIONS });
      await lane.connect();
      try {
        return (await lane.query<{ 'QUERY PLAN': string }>(`explain (generic_plan) ${END_AND_CLAIM}`)).rows.map((r) => r['QUERY PLAN']).join('\n');
      } finally {
        await lane.end();
      }
    };
    const assertLookups = (plan: string, when: string) => {
      for (const table of ['memory_groups', 'vms', 'operations']) {
        assert.doesNotMatch(plan, new RegExp(`Seq Scan on ${table}\\b`), `${when}: ${table} is looked up by key, not scanned:\n${plan}`);
      }
      assert.doesNotMatch(plan, /operations_state_idx|operations_vm_id_state_idx/, `${when}: no operation is found through an index of states:\n${plan}`);
      assert.match(plan, /Index Scan using operations_active_by_vm on operations/, when);
      assert.match(plan, /Index Scan using memory_groups_pkey on memory_groups/, when);
      assert.match(plan, /Index Scan using operations_pkey on operations/, when);
    };
    assertLookups(await explain(), 'a few rows');
    assertLockVmLookups(await lockVmPlans(), 'a few rows');

    // A fleet's worth of rows: 1,000 more VMs with 3 groups each, 3,000 finished and 3,000
    // pending operations, cloned from rows the tests above made.
    await db.sql.query(`insert into vms select (jsonb_populate_record(null::vms, to_jsonb(v) || jsonb_build_object('id', gen_random_uuid(), 'name', 'clone-' || i))).*
      from (select * from vms limit 1) v, generate_series(1, 1000) i`);
    const clones = `(select array_agg(id) as a from vms where name like 'clone-%') c`;
    await db.sql.query(`insert into memory_groups select (jsonb_populate_record(null::memory_groups, to_jsonb(g) || jsonb_build_object('id', gen_random_uuid(),
        'vm_id', c.a[1 + i % 1000], 'name', 'g-' || i))).*
      from (select * from memory_groups limit 1) g, ${clones}, generate_series(1, 3000) i`);
    await db.sql.query(`insert into operations select (jsonb_populate_record(null::operations, to_jsonb(o) || jsonb_build_object('id', gen_random_uuid(), 'seq', nextval('operations_seq_seq'),
        'vm_id', c.a[1 + i % 1000], 'state', case when i % 2 = 0 then 'SUCCEEDED' else 'PENDING' end, 'group_id', null, 'request_id', null))).*
      from (select * from operations limit 1) o, ${clones}, generate_series(1, 6000) i`);
    assertLookups(await explain(), 'a fleet');
    assertLockVmLookups(await lockVmPlans(), 'a fleet');
  });
});
