/**
 * `query-memory-devices` results (QAPI `MemoryDeviceInfo`, a union on `type`) in the
 * project's spelling: camelCase, units in names. Only the two kinds Memplane plugs are
 * typed in detail (domain-spec §5, §6); others are passed through untyped.
 */

/** pc-dimm: a STATIC memory group, plugged and unplugged whole. */
export interface DimmDevice {
  kind: 'dimm';
  id: string | undefined;
  addressBytes: number;
  sizeBytes: number;
  slot: number;
  node: number;
  /** QOM path of the backend, e.g. `/objects/mem-g1`. */
  memdev: string;
  hotplugged: boolean;
  hotpluggable: boolean;
}

/** virtio-mem: a DYNAMIC memory group, resized through `requested-size`. */
export interface VirtioMemDevice {
  kind: 'virtio-mem';
  id: string | undefined;
  addressBytes: number;
  /** What the host asked for. */
  requestedSizeBytes: number;
  /** What the guest has actually plugged (the observed size). */
  sizeBytes: number;
  maxSizeBytes: number;
  blockSizeBytes: number;
  node: number;
  memdev: string;
}

export interface OtherMemoryDevice {
  kind: 'other';
  type: string;
  id: string | undefined;
  data: Record<string, unknown>;
}

export type MemoryDevice = DimmDevice | VirtioMemDevice | OtherMemoryDevice;

/** Raw QAPI shape, as QEMU sends it. */
export interface RawMemoryDeviceInfo {
  type: string;
  data: Record<string, unknown>;
}

const num = (v: unknown): number => (typeof v === 'number' ? v : Number(v));
const optId = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);

export function parseMemoryDevices(raw: readonly RawMemoryDeviceInfo[]): MemoryDevice[] {
  return raw.map((d): MemoryDevice => {
    const x = d.data;
    switch (d.type) {
      case 'dimm':
        return {
          kind: 'dimm',
          id: optId(x['id']),
          addressBytes: num(x['addr']),
          sizeBytes: num(x['size']),
          slot: num(x['slot']),
          node: num(x['node']),
          memdev: String(x['memdev']),
          hotplugged: Boolean(x['hotplugged']),
          hotpluggable: Boolean(x['hotpluggable']),
        };
      case 'virtio-mem':
        return {
          kind: 'virtio-mem',
          id: optId(x['id']),
          addressBytes: num(x['memaddr']),
          requestedSizeBytes: num(x['requested-size']),
          sizeBytes: num(x['size']),
          maxSizeBytes: num(x['max-size']),
          blockSizeBytes: num(x['block-size']),
          node: num(x['node']),
          memdev: String(x['memdev']),
        };
      default:
        return { kind: 'other', type: d.type, id: optId(x['id']), data: x };
    }
  });
}

/** QOM path of a device created with `device_add id=<id>` (peripheral devices). */
export function peripheralPath(deviceId: string): string {
  return `/machine/peripheral/${deviceId}`;
}
