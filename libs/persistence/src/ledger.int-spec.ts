import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { freshDatabase } from '#testing/services';
import { Database } from './database';
import { LedgerRepository } from './ledger.repository';
import { MemoryGroupRepository } from './memory-group.repository';
import type { Sql } from './sql';

/**
 * The lock-then-read steps the ledger relies on, on a real Postgres: a
 * transaction that waited for a pool (or VM) lock must read what the holder
 * committed, and the constraints refuse an overlap or an over-allocation even
 * if the code above them were wrong.
 */
describe('ledger locking and constraints (Postgres)', () => {
  let drop: () => Promise<void>;
  let db: Database;
  const ids: Record<string, string> = {};
  const ledger = new LedgerRepository();
  const groups = new MemoryGroupRepository();

  before(async () => {
    const fresh = await freshDatabase();
    drop = fresh.drop;
    db = new Database({ url: fresh.url, poolSize: 4 });
    const one = async (text: string, values: unknown[] = []) => (await db.sql.query<{ id: string }>(text, values))[0]!.id;
    ids.host = await one(`insert into hosts (id, name, updated_at) values (gen_random_uuid(), 'h', now()) returning id`);
    ids.pool = await one(
      `insert into pools (id, name, host_id, host_node_id, capacity_bytes, granule_bytes, memory_type, updated_at)
       values (gen_random_uuid(), 'p', $1, 2, 1024, 128, 'VOLATILE', now()) returning id`,
      [ids.host],
    );
    ids.vm = await one(
      `insert into vms (id, name, host_id, kernel_profile, memory_slots, max_memory_bytes, spare_pcie_ports) values (gen_random_uuid(), 'v', $1, 'linux-6.12', 4, 4096, 0) returning id`,
      [ids.host],
    );
    await db.sql.query(`insert into vm_guest_nodes (vm_id, guest_node_id, vcpus, boot_memory_bytes) values ($1, 0, 1, 1024)`, [ids.vm]);
    const group = (name: string) =>
      one(`insert into memory_groups (id, vm_id, name, pool_id, kind, size_bytes, online_type) values (gen_random_uuid(), $1, $2, $3, 'STATIC', 128, 'AUTO') returning id`, [
        ids.vm,
        name,
        ids.pool,
      ]);
    ids.g1 = await group('g1');
    ids.g2 = await group('g2');
  });
  after(async () => {
    await db?.close();
    await drop?.();
  });

  /** Runs `second` while `first` holds its locks, then commits `first`; returns what `second` saw. */
  async function race<T>(first: (sql: Sql) => Promise<unknown>, write: (sql: Sql) => Promise<unknown>, second: (sql: Sql) => Promise<T>): Promise<T> {
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    let locked!: () => void;
    const isLocked = new Promise<void>((r) => (locked = r));
    const a = db.sqlTransaction(async (sql) => {
      await first(sql);
      locked();
      await held;
      await write(sql);
    });
    await isLocked;
    const b = db.sqlTransaction(second);
    // b must now be waiting for a's lock.
    await new Promise((r) => setTimeout(r, 200));
    release();
    await a;
    return b;
  }

  it('a transaction that waited for the pool lock reads the extents committed before it got the lock', async () => {
    const seen = await race(
      (sql) => ledger.lockAndRead(sql, ids.pool!),
      (sql) => sql.query(`insert into pool_extents (pool_id, group_id, offset_bytes, size_bytes) values ($1, $2, 0, 128)`, [ids.pool, ids.g1]),
      (sql) => ledger.lockAndRead(sql, ids.pool!),
    );
    assert.deepEqual(seen.state.extents, [{ groupId: ids.g1, offsetBytes: 0, sizeBytes: 128 }]);
  });

  it('a transaction that waited for the VM lock reads the groups committed before it got the lock', async () => {
    const seen = await race(
      (sql) => groups.lockVm(sql, 'v'),
      (sql) => sql.query(`insert into memory_groups (id, vm_id, name, pool_id, kind, size_bytes, online_type) values (gen_random_uuid(), $1, 'g3', $2, 'STATIC', 128, 'AUTO')`, [ids.vm, ids.pool]),
      (sql) => groups.lockVm(sql, 'v'),
    );
    assert.deepEqual(seen.groups.map((g) => g.name), ['g1', 'g2', 'g3']);
  });

  it('Postgres refuses overlapping extents and over-allocation whatever the code above it does', async () => {
    await assert.rejects(
      db.sqlTransaction((sql) => sql.query(`insert into pool_extents (pool_id, group_id, offset_bytes, size_bytes) values ($1, $2, 0, 256)`, [ids.pool, ids.g2])),
      /pool_extents_no_overlap/,
    );
    await assert.rejects(db.sqlTransaction((sql) => sql.query(`update pools set allocated_bytes = 2048 where id = $1`, [ids.pool])), /pools_allocated_within_capacity/);
    await assert.rejects(
      db.sqlTransaction((sql) => sql.query(`delete from memory_groups where id = $1`, [ids.g1])),
      /pool_extents_group_id_fkey/,
      'a group holding extents cannot disappear and leave them behind',
    );
  });
});
