import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Client } from 'pg';
import { projectRoot } from '#platform';
import { freshDatabase } from '#testing/services';
import { deviceRows } from './vm-devices';

const TARGET = '20261206022022_vm_memory_devices';

/**
 * The migration that moved a VM's device list (one JSON list in vms.observed_devices) into rows
 * of vm_memory_devices copies the lists already recorded. Here the migrations before it run on
 * an empty database, VMs are given lists as the engine recorded them then, and the migration
 * runs: each object becomes a row keyed and placed as the engine keys and places it now
 * (deviceRows), anything else is left out, and the old column is gone.
 */
describe(`migration ${TARGET}: the recorded device lists become rows`, () => {
  let db: { url: string; drop: () => Promise<void> };
  let c: Client;
  const dir = join(projectRoot(), 'prisma', 'migrations');
  const migrations = readdirSync(dir, { withFileTypes: true })
    .filter((d) => d.isDirectory())
    .map((d) => d.name)
    .sort();
  const apply = async (name: string) => c.query(readFileSync(join(dir, name, 'migration.sql'), 'utf8'));

  const dimm = { id: 'dimm-a', kind: 'dimm', addressBytes: 4 * 1024 ** 3, sizeBytes: 256 * 1024 ** 2, node: 1 };
  const vmem = { id: 'vmem-b', kind: 'virtio-mem', addressBytes: 8 * 1024 ** 3, sizeBytes: 512 * 1024 ** 2, maxSizeBytes: 1024 ** 3 };
  // A device QEMU listed without an id, its address only under data.addr (older records).
  const anonymous = { kind: 'dimm', data: { addr: 5 * 1024 ** 3, size: 128 * 1024 ** 2 } };

  before(async () => {
    assert.ok(migrations.includes(TARGET), `${TARGET} is one of ${migrations.length} migrations`);
    db = await freshDatabase({ empty: true });
    c = new Client({ connectionString: db.url });
    await c.connect();
    for (const m of migrations.slice(0, migrations.indexOf(TARGET))) await apply(m);
    await c.query(`insert into hosts (id, name, updated_at) values ('00000000-0000-4000-8000-000000000001', 'hv-m', now())`);
    const vm = (id: string, name: string, devices: unknown) =>
      c.query(
        `insert into vms (id, name, host_id, kernel_profile, memory_slots, max_memory_bytes, spare_pcie_ports, observed_devices)
         values ($1, $2, '00000000-0000-4000-8000-000000000001', 'linux-6.12', 4, 4294967296, 1, $3::jsonb)`,
        [id, name, JSON.stringify(devices)],
      );
    await vm('00000000-0000-4000-8000-0000000000a1', 'vm-listed', [vmem, dimm, anonymous, 'not a device', null]);
    await vm('00000000-0000-4000-8000-0000000000a2', 'vm-none', []);
    await vm('00000000-0000-4000-8000-0000000000a3', 'vm-not-a-list', { devices: [dimm] });
    await apply(TARGET);
  });

  after(async () => {
    await c?.end();
    await db?.drop();
  });

  it('copies each listed device as a row keyed and placed as the engine does, and nothing else', async () => {
    const rows = (
      await c.query<{ vm: string; key: string; address: string; device: unknown }>(
        `select v.name as vm, d.key, d.address_bytes::text as address, d.device from vm_memory_devices d join vms v on v.id = d.vm_id order by v.name, d.address_bytes, d.key`,
      )
    ).rows;
    const expected = deviceRows([vmem, dimm, anonymous])
      .map((r) => ({ vm: 'vm-listed', key: r.k, address: String(r.a), device: r.d }))
      .sort((a, b) => Number(a.address) - Number(b.address));
    assert.deepEqual(rows, expected);
    assert.deepEqual(
      rows.map((r) => r.key),
      ['dimm-a', 'dimm@5368709120', 'vmem-b'],
    );
  });

  it('drops the old column', async () => {
    const cols = (await c.query<{ column_name: string }>(`select column_name from information_schema.columns where table_name = 'vms' and column_name = 'observed_devices'`)).rows;
    assert.deepEqual(cols, []);
  });

  it('leaves the database where the later migrations apply', async () => {
    for (const m of migrations.slice(migrations.indexOf(TARGET) + 1)) await apply(m);
    const r = (await c.query<{ r: { vm: { observed_devices: unknown[] } } }>(`select memplane_lock_vm('vm-listed') as r`)).rows[0]!;
    assert.deepEqual(
      r.r.vm.observed_devices.map((d) => (d as { id?: string }).id ?? 'anonymous'),
      ['dimm-a', 'anonymous', 'vmem-b'],
      "memplane_lock_vm lists the copied devices in address order",
    );
  });
});
