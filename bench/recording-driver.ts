/**
 * An in-process HypervisorDriver for benchmarks (not a test double of QEMU's behaviour in
 * detail): it keeps QEMU and guest memory state in memory — backends, pc-dimm / virtio-mem
 * devices, 128 MiB guest memory blocks that appear the instant a device is added (offline)
 * and vanish when it is removed, online/offline bookkeeping with the zone asked for — and
 * records every call. Lets the real executor + BullMQ + Postgres path run without QEMU.
 */
import { DomainError } from '#domain';
import type {
  DeviceDelOptions,
  GuestMemoryBlock,
  GuestMemoryBlockResponse,
  GuestMemoryBlockZone,
  GuestOnlineType,
  HypervisorDriver,
  MemoryDevice,
  QgaChannel,
  QmpChannel,
  QmpEvent,
  VmRuntimeStatus,
  WaitForEventOptions,
} from '#hypervisor';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const BLOCK = 128 * MiB;

interface SimDevice {
  id: string;
  model: 'pc-dimm' | 'virtio-mem-pci';
  backendId: string;
  addr: number;
  region: number;
  size: number;
  requested: number;
  blockSize: number;
  node: number;
}

interface SimVm {
  backends: Map<string, { type: string; size: number }>;
  devices: Map<string, SimDevice>;
  /** physIndex → online zone ('' when offline). */
  blocks: Map<number, string>;
  nextAddr: number;
  events: QmpEvent[];
  seq: number;
}

export class RecordingDriver implements HypervisorDriver {
  readonly calls: { vmId: string; method: string; arg?: string }[] = [];
  private readonly vms = new Map<string, SimVm>();
  /** Keep the record bounded in long runs. */
  private rec(vmId: string, method: string, arg?: string): void {
    if (this.calls.length < 1_000_000) this.calls.push({ vmId, method, ...(arg !== undefined ? { arg } : {}) });
  }

  private vm(vmId: string): SimVm {
    let v = this.vms.get(vmId);
    if (!v) {
      v = { backends: new Map(), devices: new Map(), blocks: new Map(), nextAddr: 8 * GiB, events: [], seq: 0 };
      this.vms.set(vmId, v);
    }
    return v;
  }

  private emit(v: SimVm, event: string, data: Record<string, unknown>): void {
    const now = Date.now();
    v.events.push({ event, data, timestamp: { seconds: Math.floor(now / 1000), microseconds: (now % 1000) * 1000 }, seq: ++v.seq });
    if (v.events.length > 256) v.events.shift();
  }

  private syncBlocks(v: SimVm, d: SimDevice): void {
    const first = d.addr / BLOCK;
    const want = Math.ceil(d.size / BLOCK);
    const all = Math.ceil(d.region / BLOCK);
    for (let i = 0; i < all; i++) {
      if (i < want) {
        if (!v.blocks.has(first + i)) v.blocks.set(first + i, '');
      } else v.blocks.delete(first + i);
    }
  }

  async launch(vmId: string): Promise<VmRuntimeStatus> {
    this.rec(vmId, 'launch');
    this.vm(vmId);
    return this.status(vmId);
  }
  async attach(vmId: string): Promise<VmRuntimeStatus> {
    this.rec(vmId, 'attach');
    this.vm(vmId);
    return this.status(vmId);
  }
  async release(vmId: string): Promise<VmRuntimeStatus> {
    this.rec(vmId, 'release');
    return this.status(vmId);
  }
  async stop(vmId: string): Promise<VmRuntimeStatus> {
    this.rec(vmId, 'stop');
    this.vms.delete(vmId);
    return { vmId, running: false, pid: undefined, exit: undefined };
  }
  /** Always running: the executor then never tries to attach to a QEMU. */
  status(vmId: string): VmRuntimeStatus {
    return { vmId, running: true, pid: process.pid, exit: undefined };
  }

  qmp(vmId: string): QmpChannel {
    return {
      execute: async <T>(command: string, args: Record<string, unknown> = {}): Promise<T> => {
        this.rec(vmId, `qmp ${command}`);
        const v = this.vm(vmId);
        if (command === 'qom-list' && args['path'] === '/objects') return [...v.backends].map(([name, b]) => ({ name, type: `child<${b.type}>` })) as T;
        if (command === 'query-memory-devices') return [] as T;
        return {} as T;
      },
      eventCursor: () => this.vm(vmId).seq,
      waitForEvent: (match, opts) => this.waitForEvent(vmId, match, opts),
      onEvent: () => () => undefined,
    };
  }
  async qga(vmId: string): Promise<QgaChannel> {
    const blocks = () => this.guestMemoryBlocks(vmId);
    return {
      execute: async <T>() => ({}) as T,
      ping: async () => undefined,
      getMemoryBlocks: blocks,
      setMemoryBlocks: (b) => this.setGuestMemoryBlocks(vmId, b),
      getMemoryBlockSizeBytes: async () => BLOCK,
      exec: async () => ({ exitCode: 0, stdout: Buffer.alloc(0), stderr: Buffer.alloc(0) }) as never,
      readFile: async () => Buffer.alloc(0),
    };
  }

  async queryMemoryDevices(vmId: string): Promise<MemoryDevice[]> {
    this.rec(vmId, 'queryMemoryDevices');
    const v = this.vm(vmId);
    let slot = 0;
    return [...v.devices.values()].map((d): MemoryDevice =>
      d.model === 'pc-dimm'
        ? { kind: 'dimm', id: d.id, addressBytes: d.addr, sizeBytes: d.size, slot: slot++, node: d.node, memdev: `/objects/${d.backendId}`, hotplugged: true, hotpluggable: true }
        : {
            kind: 'virtio-mem',
            id: d.id,
            addressBytes: d.addr,
            requestedSizeBytes: d.requested,
            sizeBytes: d.size,
            maxSizeBytes: d.region,
            blockSizeBytes: d.blockSize,
            node: d.node,
            memdev: `/objects/${d.backendId}`,
          },
    );
  }
  async objectAdd(vmId: string, qomType: string, id: string, props: Record<string, unknown> = {}): Promise<void> {
    this.rec(vmId, 'objectAdd', id);
    const v = this.vm(vmId);
    if (v.backends.has(id)) throw new DomainError('FAILED_PRECONDITION', 'QMP_ERROR', `attempt to add duplicate property '${id}' to object (type 'container')`);
    v.backends.set(id, { type: qomType, size: Number(props['size'] ?? 0) });
  }
  async objectDel(vmId: string, id: string): Promise<void> {
    this.rec(vmId, 'objectDel', id);
    this.vm(vmId).backends.delete(id);
  }
  async deviceAdd(vmId: string, driver: string, id: string, props: Record<string, unknown> = {}): Promise<void> {
    this.rec(vmId, 'deviceAdd', id);
    const v = this.vm(vmId);
    const backendId = String(props['memdev']);
    const backend = v.backends.get(backendId);
    if (!backend) throw new DomainError('FAILED_PRECONDITION', 'QMP_ERROR', `Device '${id}': memdev ${backendId} not found`);
    const region = Math.ceil(backend.size / BLOCK) * BLOCK;
    const requested = driver === 'virtio-mem-pci' ? Number(props['requested-size'] ?? 0) : backend.size;
    const d: SimDevice = {
      id,
      model: driver === 'virtio-mem-pci' ? 'virtio-mem-pci' : 'pc-dimm',
      backendId,
      addr: v.nextAddr,
      region,
      size: requested,
      requested,
      blockSize: Number(props['block-size'] ?? 2 * MiB),
      node: Number(props['node'] ?? 0),
    };
    v.nextAddr += region;
    v.devices.set(id, d);
    this.syncBlocks(v, d);
  }
  async deviceDel(vmId: string, id: string, opts: DeviceDelOptions = {}): Promise<QmpEvent | undefined> {
    this.rec(vmId, 'deviceDel', id);
    const v = this.vm(vmId);
    const d = v.devices.get(id);
    if (d) {
      d.size = 0;
      this.syncBlocks(v, d);
      v.devices.delete(id);
      this.emit(v, 'DEVICE_DELETED', { device: id, path: `/machine/peripheral/${id}` });
    }
    return opts.waitForDeleted === false ? undefined : v.events[v.events.length - 1];
  }
  async qomGet<T = unknown>(vmId: string, path: string, property: string): Promise<T> {
    this.rec(vmId, 'qomGet', `${path}.${property}`);
    return '' as T;
  }
  async qomSet(vmId: string, path: string, property: string, value: unknown): Promise<void> {
    this.rec(vmId, 'qomSet', `${path}.${property}`);
    const v = this.vm(vmId);
    const d = v.devices.get(path.split('/').pop()!);
    if (d && property === 'requested-size') {
      d.requested = Number(value);
      d.size = d.requested; // the simulated guest converges at once
      this.syncBlocks(v, d);
      this.emit(v, 'MEMORY_DEVICE_SIZE_CHANGE', { id: d.id, size: d.size });
    }
  }
  eventCursor(vmId: string): number {
    return this.vm(vmId).seq;
  }
  waitForEvent(vmId: string, match: string | ((e: QmpEvent) => boolean), opts: WaitForEventOptions = {}): Promise<QmpEvent> {
    const v = this.vm(vmId);
    const after = opts.after ?? v.seq;
    const hit = v.events.find((e) => e.seq > after && (typeof match === 'string' ? e.event === match : match(e)));
    if (hit) return Promise.resolve(hit);
    // Nothing else will arrive later in this simulation: time out as the real client would.
    return new Promise((_, reject) => setTimeout(() => reject(new Error('timeout waiting for event')), Math.min(opts.timeoutMs ?? 1_000, 1_000)));
  }

  async guestMemoryBlockSizeBytes(vmId: string): Promise<number> {
    this.rec(vmId, 'guestMemoryBlockSizeBytes');
    return BLOCK;
  }
  async guestMemoryBlocks(vmId: string): Promise<GuestMemoryBlock[]> {
    this.rec(vmId, 'guestMemoryBlocks');
    return [...this.vm(vmId).blocks].sort((a, b) => a[0] - b[0]).map(([physIndex, zone]) => ({ physIndex, online: zone !== '', canOffline: true }));
  }
  async setGuestMemoryBlocks(vmId: string, blocks: readonly { physIndex: number; online: boolean }[]): Promise<GuestMemoryBlockResponse[]> {
    this.rec(vmId, 'setGuestMemoryBlocks');
    const v = this.vm(vmId);
    return blocks.map(({ physIndex, online }) => {
      if (!v.blocks.has(physIndex)) return { physIndex, response: 'not-found' as const };
      v.blocks.set(physIndex, online ? v.blocks.get(physIndex) || 'Normal' : '');
      return { physIndex, response: 'success' as const };
    });
  }
  async onlineGuestMemoryBlocks(vmId: string, physIndexes: readonly number[], type: GuestOnlineType): Promise<GuestMemoryBlockResponse[]> {
    this.rec(vmId, 'onlineGuestMemoryBlocks', type);
    const v = this.vm(vmId);
    const zone = type === 'online_movable' ? 'Movable' : 'Normal';
    return physIndexes.map((physIndex) => {
      if (!v.blocks.has(physIndex)) return { physIndex, response: 'not-found' as const };
      v.blocks.set(physIndex, zone);
      return { physIndex, response: 'success' as const, zone };
    });
  }
  async offlineGuestMemoryBlocks(vmId: string, physIndexes: readonly number[]): Promise<GuestMemoryBlockResponse[]> {
    this.rec(vmId, 'offlineGuestMemoryBlocks');
    const v = this.vm(vmId);
    return physIndexes.map((physIndex) => {
      if (!v.blocks.has(physIndex)) return { physIndex, response: 'not-found' as const };
      v.blocks.set(physIndex, '');
      return { physIndex, response: 'success' as const };
    });
  }
  async guestMemoryBlockZones(vmId: string, physIndexes: readonly number[]): Promise<GuestMemoryBlockZone[]> {
    this.rec(vmId, 'guestMemoryBlockZones');
    const v = this.vm(vmId);
    return physIndexes.map((physIndex) => {
      const z = v.blocks.get(physIndex);
      return z === undefined
        ? { physIndex, present: false, online: false }
        : { physIndex, present: true, online: z !== '', state: z ? 'online' : 'offline', ...(z ? { zone: z } : {}) };
    });
  }
}
