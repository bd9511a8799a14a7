import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { DomainError, GiB, MiB, type LedgerChange } from '#domain';
import { Database } from '#persistence';
import { freshDatabase } from '#testing/services';
import type { CallContext } from './context';
import { GroupChangeBatcher, type PendingGroupChange } from './group-change-batcher';
import { MemoryGroupService } from './memory-group.service';
import { Mutations } from './mutations';

const ctx: CallContext = { principal: { keyId: 'k1', keyName: 'tester', role: 'admin' }, transport: 'system', correlationId: 'c1' };
const audit = { principal: 'tester (k1)', role: 'admin', method: 'Test', resource: 'test', transport: 'system', details: {} };

/**
 * Group commit of memory-group changes on a real Postgres: changes that
 * arrive together share a transaction and decide one after another on the
 * ledger their predecessors left; a refusal changes nothing, even statements
 * it ran itself; a batch that fails as a whole is split so one change never
 * fails another.
 */
describe('memory-group changes in batches (Postgres)', () => {
  let drop: () => Promise<void>;
  let db: Database;
  let poolId: string;

  before(async () => {
    const fresh = await freshDatabase();
    drop = fresh.drop;
    db = new Database({ url: fresh.url, poolSize: 8 });
    const one = async (text: string, values: unknown[] = []) => (await db.sql.query<{ id: string }>(text, values))[0]!.id;
    const host = await one(`insert into hosts (id, name, updated_at) values (gen_random_uuid(), 'h', now()) returning id`);
    poolId = await one(
      `insert into pools (id, name, host_id, host_node_id, capacity_bytes, granule_bytes, memory_type, updated_at)
       values (gen_random_uuid(), 'p', $1, 2, $2, $3, 'VOLATILE', now()) returning id`,
      [host, GiB, 128 * MiB],
    );
    for (let i = 0; i < 10; i++) {
      const vm = await one(
        `insert into vms (id, name, host_id, kernel_profile, memory_slots, max_memory_bytes, spare_pcie_ports) values (gen_random_uuid(), $1, $2, 'linux-6.12', 8, $3, 0) returning id`,
        [`v${i}`, host, 16 * GiB],
      );
      await db.sql.query(`insert into vm_guest_nodes (vm_id, guest_node_id, vcpus, boot_memory_bytes) values ($1, 0, 1, $2)`, [vm, GiB]);
    }
  });
  after(async () => {
    await db?.close();
    await drop?.();
  });

  it('commits changes that arrive together in one batch, each on the ledger its predecessors left', async () => {
    const mutations = new Mutations(db);
    const groups = new MemoryGroupService(mutations);
    const create = (vm: string) => groups.create(ctx, { vm, name: 'g', pool: 'p', kind: 'STATIC', sizeBytes: 256 * MiB, onlineType: 'ONLINE_MOVABLE' });
    const results = await Promise.allSettled(Array.from({ length: 10 }, (_, i) => create(`v${i}`)));
    const ok = results.filter((r) => r.status === 'fulfilled');
    const refused = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    // 1 GiB in 256 MiB groups: exactly four fit.
    assert.equal(ok.length, 4);
    assert.deepEqual(new Set(refused.map((r) => (r.reason as DomainError).reason)), new Set(['POOL_CAPACITY_EXHAUSTED']));
    assert.ok(mutations.groupChanges.stats.batches < 10, `10 changes in ${mutations.groupChanges.stats.batches} batches`);
    const extents = await db.sql.query<{ o: string; s: string }>(`select offset_bytes as o, size_bytes as s from pool_extents where pool_id = $1 order by offset_bytes`, [poolId]);
    assert.deepEqual(
      extents.map((e) => [Number(e.o), Number(e.s)]),
      [0, 1, 2, 3].map((k) => [k * 256 * MiB, 256 * MiB]),
    );
    const [pool] = await db.sql.query<{ allocated_bytes: string }>(`select allocated_bytes from pools where id = $1`, [poolId]);
    assert.equal(Number(pool!.allocated_bytes), GiB);
    const audited = await db.sql.query<{ n: string }>(`select count(*) as n from audit_log where method = 'CreateMemoryGroup'`);
    assert.equal(Number(audited[0]!.n), 4, 'refused changes leave no audit record');
    // Release them again for the next test.
    for (let i = 0; i < 10; i++) await groups.delete(ctx, `v${i}`, 'g').catch(() => undefined);
  });

  it("rolls a refused change's own statements back and keeps its batch-mates", async () => {
    const batcher = new GroupChangeBatcher(db, { maxInFlight: 1 });
    const change = (vm: string, decide: PendingGroupChange['decide']): Promise<unknown> =>
      batcher.submit({ target: { vm, group: 'x' }, audit: { ...audit, resource: vm }, answer: () => undefined, replay: () => undefined, decide });
    // The first change starts a batch at once; the next two queue and go together.
    const first = change('v0', async () => ({ result: 'first', writes: {} }));
    const refused = change('v1', async (_locked, sql) => {
      await sql.query(`update vms set description = 'touched' where name = 'v1'`);
      throw DomainError.invalid('TEST_REFUSAL', [{ field: 'x', description: 'refused after a statement' }]);
    });
    const kept = change('v2', async (_locked, sql) => {
      await sql.query(`update vms set description = 'kept' where name = 'v2'`);
      return { result: 'kept', writes: {} };
    });
    assert.equal(await first, 'first');
    await assert.rejects(refused, (e: DomainError) => e.reason === 'TEST_REFUSAL');
    assert.equal(await kept, 'kept');
    assert.deepEqual(batcher.stats, { batches: 2, changes: 3 });
    const rows = await db.sql.query<{ name: string; description: string }>(`select name, description from vms where name in ('v1', 'v2') order by name`);
    assert.deepEqual(rows.map((r) => [r.name, r.description]), [['v1', ''], ['v2', 'kept']]);
    const audited = await db.sql.query<{ resource: string }>(`select resource from audit_log where method = 'Test' order by id`);
    assert.deepEqual(audited.map((r) => r.resource), ['v0', 'v2']);
  });

  it('splits a batch that fails as a whole, so one change never fails another', async () => {
    const batcher = new GroupChangeBatcher(db, { maxInFlight: 1 });
    const change = (vm: string, decide: PendingGroupChange['decide']): Promise<unknown> =>
      batcher.submit({ target: { vm, group: 'x' }, audit: { ...audit, method: 'Split', resource: vm }, answer: () => undefined, replay: () => undefined, decide });
    const first = change('v0', async () => ({ result: 'first', writes: {} }));
    // A ledger change that removes an extent the table does not have: the write refuses the whole batch.
    const misread: LedgerChange = {
      state: { capacityBytes: GiB, granuleBytes: 128 * MiB, extents: [] },
      groupId: '00000000-0000-4000-8000-000000000000',
      heldBytes: 0,
      groupExtents: [],
      added: [],
      removed: [{ groupId: '00000000-0000-4000-8000-000000000000', offsetBytes: 0, sizeBytes: 128 * MiB }],
    };
    const broken = change('v1', async () => ({ result: 'broken', writes: { ledger: { poolId, change: misread } } }));
    const innocent = change('v2', async () => ({ result: 'innocent', writes: {} }));
    assert.equal(await first, 'first');
    await assert.rejects(broken, (e: DomainError) => e.reason === 'POOL_LEDGER_CORRUPT');
    assert.equal(await innocent, 'innocent');
    // first alone, then v1+v2 together (failed), then each alone.
    assert.deepEqual(batcher.stats, { batches: 4, changes: 5 });
    const audited = await db.sql.query<{ resource: string }>(`select resource from audit_log where method = 'Split' order by id`);
    assert.deepEqual(audited.map((r) => r.resource), ['v0', 'v2']);
  });
});
