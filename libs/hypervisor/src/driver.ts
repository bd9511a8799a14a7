import { DomainError } from '#domain';
import {
  checkBlockIndexes,
  describeAgentResponses,
  GUEST_ONLINE_TYPES,
  offlineBlocks,
  onlineBlocksInZone,
  readBlockZones,
  type GuestMemoryBlockZone,
  type GuestOnlineType,
} from './guest-memory-zones';
import { parseMemoryDevices, type MemoryDevice, type RawMemoryDeviceInfo } from './memory-devices';
import type { GuestMemoryBlock, GuestMemoryBlockResponse, QgaChannel } from './qga-client';
import {
  attachQemu,
  launchQemu,
  type AttachOptions,
  type AttachTarget,
  type LaunchOptions,
  type QemuExit,
  type QemuInstance,
  type QemuOrigin,
  type QemuPaths,
  type StopOptions,
} from './qemu-launcher';
import type { QmpChannel, QmpCommandOptions, QmpEvent, WaitForEventOptions } from './qmp-client';

export interface VmRuntimeStatus {
  vmId: string;
  running: boolean;
  /** Persist `pid` and `paths` to re-attach from another process (`attach`). */
  pid: number | undefined;
  exit: QemuExit | undefined;
  /** The sockets, log and pidfile of the tracked QEMU (set whenever the VM is tracked). */
  paths?: QemuPaths;
  /** Launched by this driver or re-attached to (set whenever the VM is tracked). */
  origin?: QemuOrigin;
  /** Survives the death of this process (a detached launch, or anything attached to). */
  detached?: boolean;
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
  /**
   * Takes over a QEMU started elsewhere (a detached launch by a worker that died) from the
   * persisted `pid` and `paths`: connects QMP and (by default) the guest agent; afterwards
   * every method works on it and `stop` ends it (QMP quit, wait for the pid, SIGKILL).
   * Idempotent for a VM already tracked with the same pid and QMP socket. Fails with
   * NOT_FOUND `QEMU_NOT_RUNNING` when the pid is gone / a zombie / reused, UNAVAILABLE
   * `QMP_UNAVAILABLE` when QEMU lives but its socket refuses, ALREADY_EXISTS
   * `VM_ALREADY_RUNNING` when the VM is tracked with another live process.
   */
  attach(vmId: string, target: AttachTarget, opts?: AttachOptions): Promise<VmRuntimeStatus>;
  /**
   * Lets go of a VM without stopping it: closes its QMP and guest agent connections (QEMU
   * serves one client per socket, so a holder blocks any attach) and forgets it. For a
   * worker handing a detached VM over; returns the status to persist.
   */
  release(vmId: string): Promise<VmRuntimeStatus>;
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
  /**
   * Onlines blocks with the exact online type: 'online' through `guest-set-memory-blocks`
   * (the guest's policy picks the zone), 'online_movable' / 'online_kernel' by writing that
   * to each block's `state` with one `guest-exec` (needs guest-exec in the agent). Per-block
   * answers in the order asked; a block already online in the wrong zone, or a refused
   * write, is a per-block failure (`errorCode` errno, `message`), never an exception.
   */
  onlineGuestMemoryBlocks(vmId: string, physIndexes: readonly number[], type: GuestOnlineType): Promise<GuestMemoryBlockResponse[]>;
  /**
   * Offlines blocks, each write bounded in time (one `guest-exec`, see guest-memory-zones.ts);
   * a block that cannot be offlined is a per-block failure with `errorCode` and `message`.
   */
  offlineGuestMemoryBlocks(vmId: string, physIndexes: readonly number[]): Promise<GuestMemoryBlockResponse[]>;
  /** State and zone (`valid_zones`) of each block, one `guest-exec` for all of them. */
  guestMemoryBlockZones(vmId: string, physIndexes: readonly number[]): Promise<GuestMemoryBlockZone[]>;
}

/** The driver for QEMU processes on this host: started by this Node process or attached to. */
export class LocalHypervisorDriver implements HypervisorDriver {
  private readonly vms = new Map<string, QemuInstance>();
  private readonly attaching = new Map<string, Promise<VmRuntimeStatus>>();

  constructor(private readonly defaults: LaunchOptions = {}) {}

  async launch(vmId: string, argv: readonly string[], paths: QemuPaths, opts: LaunchOptions = {}): Promise<VmRuntimeStatus> {
    const existing = this.vms.get(vmId);
    if (existing?.running) {
      throw DomainError.exists('VM_ALREADY_RUNNING', `VM ${vmId} is already running (pid ${existing.pid})`, { vmId });
    }
    await existing?.release().catch(() => undefined); // a dead one's clients
    const proc = await launchQemu(vmId, argv, paths, { ...this.defaults, ...opts });
    this.vms.set(vmId, proc);
    return this.status(vmId);
  }

  attach(vmId: string, target: AttachTarget, opts: AttachOptions = {}): Promise<VmRuntimeStatus> {
    // Concurrent attaches of one VM share the first one's outcome.
    const pending = this.attaching.get(vmId);
    if (pending) return pending;
    const run = this.doAttach(vmId, target, opts).finally(() => this.attaching.delete(vmId));
    this.attaching.set(vmId, run);
    return run;
  }

  private async doAttach(vmId: string, target: AttachTarget, opts: AttachOptions): Promise<VmRuntimeStatus> {
    const existing = this.vms.get(vmId);
    if (existing) {
      if (existing.running) {
        const samePid = target.pid === undefined || target.pid === existing.pid;
        if (samePid && target.paths.qmpSocket === existing.paths.qmpSocket) return this.status(vmId);
        throw DomainError.exists(
          'VM_ALREADY_RUNNING',
          `VM ${vmId} is already tracked with pid ${existing.pid} on ${existing.paths.qmpSocket}, not pid ${target.pid} on ${target.paths.qmpSocket}`,
          { vmId, pid: String(existing.pid) },
        );
      }
      // Tracked but gone: forget it and attach afresh. Not stop(): the socket paths may now
      // belong to a new QEMU, so they must not be removed.
      await existing.release().catch(() => undefined);
      this.vms.delete(vmId);
    }
    const proc = await attachQemu(vmId, target, opts);
    this.vms.set(vmId, proc);
    return this.status(vmId);
  }

  async release(vmId: string): Promise<VmRuntimeStatus> {
    const proc = this.vms.get(vmId);
    if (!proc) return { vmId, running: false, pid: undefined, exit: undefined };
    const status = describe(vmId, proc);
    this.vms.delete(vmId);
    await proc.release();
    return status;
  }

  async stop(vmId: string, opts?: StopOptions): Promise<VmRuntimeStatus> {
    const proc = this.vms.get(vmId);
    if (!proc) return { vmId, running: false, pid: undefined, exit: undefined };
    await proc.stop(opts);
    this.vms.delete(vmId);
    return { ...describe(vmId, proc), running: false };
  }

  status(vmId: string): VmRuntimeStatus {
    const proc = this.vms.get(vmId);
    if (!proc) return { vmId, running: false, pid: undefined, exit: undefined };
    return describe(vmId, proc);
  }

  /** The process behind a VM (logs, pid); local-only, not part of the port. */
  process(vmId: string): QemuInstance {
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
    // The agent lists /sys/devices/system/memory and then opens each block, so a block the
    // guest removes in between (virtio-mem unplugging a shrink) fails the whole call with
    // ENOENT. A fresh listing no longer has it.
    for (let attempt = 1; ; attempt++) {
      try {
        return await (await this.qga(vmId)).getMemoryBlocks();
      } catch (e) {
        if (attempt >= 5 || !isVanishedBlockError(e)) throw e;
      }
    }
  }

  async setGuestMemoryBlocks(
    vmId: string,
    blocks: readonly { physIndex: number; online: boolean }[],
  ): Promise<GuestMemoryBlockResponse[]> {
    return (await this.qga(vmId)).setMemoryBlocks(blocks);
  }

  async onlineGuestMemoryBlocks(vmId: string, physIndexes: readonly number[], type: GuestOnlineType): Promise<GuestMemoryBlockResponse[]> {
    if (!GUEST_ONLINE_TYPES.includes(type)) {
      throw DomainError.invalid('INVALID_ONLINE_TYPE', [{ field: 'type', description: `one of ${GUEST_ONLINE_TYPES.join(', ')}, got ${String(type)}` }]);
    }
    checkBlockIndexes(physIndexes);
    const qga = await this.qga(vmId);
    if (type === 'online') {
      if (physIndexes.length === 0) return [];
      return describeAgentResponses('online', await qga.setMemoryBlocks(physIndexes.map((physIndex) => ({ physIndex, online: true }))));
    }
    return onlineBlocksInZone(qga, physIndexes, type);
  }

  async offlineGuestMemoryBlocks(vmId: string, physIndexes: readonly number[]): Promise<GuestMemoryBlockResponse[]> {
    checkBlockIndexes(physIndexes);
    if (physIndexes.length === 0) return [];
    return offlineBlocks(await this.qga(vmId), physIndexes);
  }

  async guestMemoryBlockZones(vmId: string, physIndexes: readonly number[]): Promise<GuestMemoryBlockZone[]> {
    return readBlockZones(await this.qga(vmId), physIndexes);
  }

  /** Stops every VM this driver started (shutdown hook, tests). */
  async stopAll(opts?: StopOptions): Promise<void> {
    await Promise.allSettled([...this.vms.keys()].map((id) => this.stop(id, opts)));
  }
}

/** guest-get-memory-blocks raced with a block's removal: `open("/sys/devices/system/memory/memory39/"): No such file or directory`. */
export function isVanishedBlockError(e: unknown): boolean {
  return e instanceof DomainError && e.reason === 'QGA_GENERIC_ERROR' && /\/sys\/devices\/system\/memory\/memory\d+.*No such file or directory/.test(e.message);
}

function describe(vmId: string, proc: QemuInstance): VmRuntimeStatus {
  const running = proc.running;
  return {
    vmId,
    running,
    pid: proc.pid,
    exit: running ? undefined : proc.exit,
    paths: proc.paths,
    origin: proc.origin,
    detached: proc.detached,
  };
}
