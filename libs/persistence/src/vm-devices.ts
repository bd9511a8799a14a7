/**
 * A VM's memory devices as QEMU last listed them are rows of vm_memory_devices, one per
 * device, so that an operation writes only the device it changed. A writer sends either the
 * whole list (the table then holds exactly it) or, when it knows what the table holds
 * because it wrote that itself under the VM's lock, only the differences.
 */

/** One device as a row: its key, its guest-physical address (QEMU lists devices in that order) and itself. */
export interface DeviceRow {
  k: string;
  a: number;
  d: unknown;
}

/** What a writer knows the table holds for one VM: each device by key, as it wrote it. */
export type WrittenDevices = ReadonlyMap<string, unknown>;

/** A write of a VM's devices: the whole list (`full`: rows not in `put` go), or changes only. */
export interface DeviceWrite {
  full: boolean;
  put: DeviceRow[];
  drop: string[];
  /** What the table holds once the write commits. */
  written: Map<string, unknown>;
}

function addressOf(d: Record<string, unknown>): number {
  if (typeof d['addressBytes'] === 'number') return d['addressBytes'];
  const data = d['data'] as Record<string, unknown> | undefined;
  return typeof data?.['addr'] === 'number' ? data['addr'] : 0;
}

/**
 * The rows of a device list. The key is the QEMU device id, or `<kind>@<address>` for a
 * device without one (the migration that made the table keys the old lists the same way);
 * a key that repeats gets `#2`, `#3`… so that no device is lost.
 */
export function deviceRows(devices: readonly unknown[]): DeviceRow[] {
  const seen = new Map<string, number>();
  return devices.map((device) => {
    const d = (device ?? {}) as Record<string, unknown>;
    const a = addressOf(d);
    const base = typeof d['id'] === 'string' && d['id'] !== '' ? d['id'] : `${String(d['kind'])}@${a}`;
    const n = (seen.get(base) ?? 0) + 1;
    seen.set(base, n);
    return { k: n === 1 ? base : `${base}#${n}`, a, d: device };
  });
}

/** Devices are flat objects of numbers, strings and booleans (an unknown kind carries its QAPI `data`). */
function sameDevice(x: unknown, y: unknown): boolean {
  if (x === y) return true;
  if (typeof x !== 'object' || typeof y !== 'object' || x === null || y === null) return false;
  const a = x as Record<string, unknown>;
  const b = y as Record<string, unknown>;
  const keys = Object.keys(a);
  if (keys.length !== Object.keys(b).length) return false;
  for (const k of keys) {
    const u = a[k];
    const v = b[k];
    if (u === v) continue;
    if (typeof u !== 'object' || typeof v !== 'object' || JSON.stringify(u) !== JSON.stringify(v)) return false;
  }
  return true;
}

/** The write that makes the table hold `devices`: the differences from `known`, or the whole list without it. */
export function deviceWrite(devices: readonly unknown[], known?: WrittenDevices): DeviceWrite {
  const rows = deviceRows(devices);
  const written = new Map(rows.map((r) => [r.k, r.d]));
  if (!known) return { full: true, put: rows, drop: [], written };
  return {
    full: false,
    put: rows.filter((r) => !known.has(r.k) || !sameDevice(known.get(r.k), r.d)),
    drop: [...known.keys()].filter((k) => !written.has(k)),
    written,
  };
}

/** The list as the API shows it (vms.* selects): in address order, as QEMU lists them. */
export const OBSERVED_DEVICES_SELECT = `(select coalesce(json_agg(d.device order by d.address_bytes, d.key), '[]'::json) from vm_memory_devices d where d.vm_id = v.id)`;
