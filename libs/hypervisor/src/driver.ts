import { DomainError } from '#domain';
import { parseMemoryDevices, type MemoryDevice, type RawMemoryDeviceInfo } from './memory-devices';
import type { GuestMemoryBlock, GuestMemoryBlockResponse, QgaChannel } from './qga-client';
import { launchQemu, type LaunchOptions, type QemuExit, type QemuPaths, type QemuProcess, type StopOptions } from './qemu-launcher';
import type { QmpChannel, QmpCommandOptions, QmpEvent, WaitForEventOptions } from './qmp-client';

export interface VmRuntimeStatus {
  vmId: string;
  running: boolean;
  pid: number | undefined;
  exit: QemuExit | undefined;
}

export interface DeviceDelOptions extends QmpCommandOptions {
  /**
   * Wait for DEVICE_DELETED (default true). A pc-dimm is only deleted once the guest has
   * offlined and ejected its memory, so this can time out while the request stays pending.
   */
  waitForDeleted?: boolean;
  deletedTimeoutMs?: number;
}

/**
 * The driver port: everything a worker needs from a hypervisor host, keyed by VM id and
 * expressed in QEMU's own vocabulary (QOM types and properties, QMP events). Steps are
 * single QMP/QGA calls, so a reconciler can take one idempotent step at a time and re-read
 * observed state (`queryMemoryDevices`, `guestMemoryBlocks`) in between. A remote host
 * agent can implement the same interface over gRPC.
 */
export interface HypervisorDriver {
  /** Starts QEMU with the guest's argv; resolves once QMP (and the guest agent) answer. */
  launch(vmId: string, argv: readonly string[], paths: QemuPaths, opts?: LaunchOptions): Promise<VmRuntimeStatus>;
  stop(vmId: string, opts?: StopOptions): Promise<VmRuntimeStatus>;
  status(vmId: string): VmRuntimeStatus;

  /** Raw channels for what the typed methods do not cover. */
  qmp(vmId: string): QmpChannel;
  qga(vmId: string): Promise<QgaChannel>;

  queryMemoryDevices(vmId: string): Promise<MemoryDevice[]>;
  /** `object-add`, e.g. `('memory-backend-ram', 'mem-g1', { size })`. */
  objectAdd(vmId: string, qomType: string, id: string, props?: Record<string, unknown>): Promise<void>;
  objectDel(vmId: string, id: string): Promise<void>;
  /** `device_add`, e.g. `('pc-dimm', 'dimm-g1', { memdev: 'mem-g1', node: 1 })`. */
  deviceAdd(vmId: string, driver: string, id: string, props?: Record<string, unknown>): Promise<void>;
  deviceDel(vmId: string, id: string, opts?: DeviceDelOptions): Promise<QmpEvent | undefined>;
  qomGet<T = unknown>(vmId: string, path: string, property: string): Promise<T>;
  /** e.g. virtio-mem resize: `qomSet(vm, peripheralPath(id), 'requested-size', bytes)`. */
  qomSet(vmId: string, path: string, property: string, value: unknown): Promise<void>;
  eventCursor(vmId: string): number;
  waitForEvent(vmId: string, match: string | ((e: QmpEvent) => boolean), opts?: WaitForEventOptions): Promise<QmpEvent>;

  guestMemoryBlockSizeBytes(vmId: string): Promise<number>;
  guestMemoryBlocks(vmId: string): Promise<GuestMemoryBlock[]>;
  setGuestMemoryBlocks(
    vmId: string,
    blocks: readonly { physIndex: number; online: boolean }[],
  ): Promise<GuestMemoryBlockResponse[]>;
}

/** The driver for QEMU processes started by this Node process. */
export class LocalHypervisorDriver implements HypervisorDriver {
  private readonly vms = new Map<string, QemuProcess>();

  constructor(private readonly defaults: LaunchOptions = {}) {}

  async launch(vmId: string, argv: readonly string[], paths: QemuPaths, opts: LaunchOptions = {}): Promise<VmRuntimeStatus> {
    const existing = this.vms.get(vmId);
    if (existing?.running) {
      throw DomainError.exists('VM_ALREADY_RUNNING', `VM ${vmId} is already running (pid ${existing.pid})`, { vmId });
    }
    const proc = await launchQemu(vmId, argv, paths, { ...this.defaults, ...opts });
    this.vms.set(vmId, proc);
    return this.status(vmId);
  }

  async stop(vmId: string, opts?: StopOptions): Promise<VmRuntimeStatus> {
    const proc = this.vms.get(vmId);
    if (!proc) return { vmId, running: false, pid: undefined, exit: undefined };
    await proc.stop(opts);
    this.vms.delete(vmId);
    return { vmId, running: false, pid: proc.pid, exit: proc.exit };
  }

  status(vmId: string): VmRuntimeStatus {
    const proc = this.vms.get(vmId);
    return { vmId, running: proc?.running ?? false, pid: proc?.pid, exit: proc?.exit };
  }

  /** The process behind a VM (logs, pid); local-only, not part of the port. */
  process(vmId: string): QemuProcess {
    const proc = this.vms.get(vmId);
    if (!proc) throw DomainError.precondition('VM_NOT_RUNNING', `VM ${vmId} is not running on this host`, { vmId });
    return proc;
  }

  qmp(vmId: string): QmpChannel {
    return this.process(vmId).qmp;
  }

  qga(vmId: string): Promise<QgaChannel> {
    return this.process(vmId).guestAgent();
  }

  async queryMemoryDevices(vmId: string): Promise<MemoryDevice[]> {
    return parseMemoryDevices(await this.qmp(vmId).execute<RawMemoryDeviceInfo[]>('query-memory-devices'));
  }

  async objectAdd(vmId: string, qomType: string, id: string, props: Record<string, unknown> = {}): Promise<void> {
    await this.qmp(vmId).execute('object-add', { 'qom-type': qomType, id, ...props });
  }

  async objectDel(vmId: string, id: string): Promise<void> {
    await this.qmp(vmId).execute('object-del', { id });
  }

  async deviceAdd(vmId: string, driver: string, id: string, props: Record<string, unknown> = {}): Promise<void> {
    await this.qmp(vmId).execute('device_add', { driver, id, ...props });
  }

  async deviceDel(vmId: string, id: string, opts: DeviceDelOptions = {}): Promise<QmpEvent | undefined> {
    const qmp = this.qmp(vmId);
    const cursor = qmp.eventCursor();
    await qmp.execute('device_del', { id }, opts);
    if (opts.waitForDeleted === false) return undefined;
    // virtio devices also emit DEVICE_DELETED for their id-less backend child: match the id.
    return qmp.waitForEvent((e) => e.event === 'DEVICE_DELETED' && e.data['device'] === id, {
      after: cursor,
      timeoutMs: opts.deletedTimeoutMs ?? 30_000,
    });
  }

  qomGet<T = unknown>(vmId: string, path: string, property: string): Promise<T> {
    return this.qmp(vmId).execute<T>('qom-get', { path, property });
  }

  async qomSet(vmId: string, path: string, property: string, value: unknown): Promise<void> {
    await this.qmp(vmId).execute('qom-set', { path, property, value });
  }

  eventCursor(vmId: string): number {
    return this.qmp(vmId).eventCursor();
  }

  waitForEvent(vmId: string, match: string | ((e: QmpEvent) => boolean), opts?: WaitForEventOptions): Promise<QmpEvent> {
    return this.qmp(vmId).waitForEvent(match, opts);
  }

  async guestMemoryBlockSizeBytes(vmId: string): Promise<number> {
    return (await this.qga(vmId)).getMemoryBlockSizeBytes();
  }

  async guestMemoryBlocks(vmId: string): Promise<GuestMemoryBlock[]> {
    return (await this.qga(vmId)).getMemoryBlocks();
  }

  async setGuestMemoryBlocks(
    vmId: string,
    blocks: readonly { physIndex: number; online: boolean }[],
  ): Promise<GuestMemoryBlockResponse[]> {
    return (await this.qga(vmId)).setMemoryBlocks(blocks);
  }

  /** Stops every VM this driver started (shutdown hook, tests). */
  async stopAll(opts?: StopOptions): Promise<void> {
    await Promise.allSettled([...this.vms.keys()].map((id) => this.stop(id, opts)));
  }
}
