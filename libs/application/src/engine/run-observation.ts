import { blocksOf, type HotplugStep, type ObservedMemoryBlock, type ObservedMemoryDevice, type ObservedVmMemory } from '#domain';
import type { GuestMemoryBlockResponse, HypervisorDriver, MemoryDevice } from '#hypervisor';

/**
 * What one run of the reconciler knows about a VM's memory. Observed in full when the run
 * starts (QMP `query-memory-devices` and `qom-list /objects`, the guest agent's memory
 * blocks); afterwards kept current by the answers to the run's own steps — QEMU accepted
 * object-add, the guest reported each block's online write and the zone it landed in,
 * DEVICE_DELETED arrived — and by re-reading only what moves on its own: QEMU's devices
 * while virtio-mem converges, the guest's blocks while the guest adds or removes them.
 * Nothing survives the run: the next one observes afresh (level-triggered).
 */
export class RunObservation {
  /** As QEMU last reported them (the API's observedMemoryDevices). */
  devices: MemoryDevice[] = [];
  readonly backendIds = new Set<string>();
  readonly blocks = new Map<number, ObservedMemoryBlock>();

  private constructor(
    private readonly driver: HypervisorDriver,
    private readonly vmId: string,
    readonly guestBlockSizeBytes: number,
  ) {}

  /** A full observation; the guest's block size comes from the caller (it cannot change while the guest runs). */
  static async observe(driver: HypervisorDriver, vmId: string, guestBlockSizeBytes: Promise<number>): Promise<RunObservation> {
    const [devices, objects, blockSize, blocks] = await Promise.all([
      driver.queryMemoryDevices(vmId),
      driver.qmp(vmId).execute<{ name: string; type: string }[]>('qom-list', { path: '/objects' }),
      guestBlockSizeBytes,
      driver.guestMemoryBlocks(vmId),
    ]);
    const o = new RunObservation(driver, vmId, blockSize);
    o.devices = devices;
    for (const x of objects) if (/memory-backend/.test(x.type)) o.backendIds.add(x.name);
    for (const b of blocks) o.blocks.set(b.physIndex, { index: b.physIndex, online: b.online });
    return o;
  }

  /*
   * A run asks for the view before every decision, and a VM may have hundreds of devices
   * and thousands of blocks, so each part is rebuilt only when it changed: the devices when
   * QEMU's list was re-read or one of them changed, the blocks when one came or went (a
   * block's online state and zone change in place: the view holds the same objects), the
   * backends when one was added or deleted.
   */
  private devicesView: ObservedMemoryDevice[] | undefined;
  private blocksView: ObservedMemoryBlock[] | undefined;
  private backendsView: string[] | undefined;

  /** The reconciler's input (a new object each time; its arrays are shared until their part changes, never to be modified). */
  view(): ObservedVmMemory {
    return {
      devices: (this.devicesView ??= this.buildDevices()),
      backendIds: (this.backendsView ??= [...this.backendIds]),
      guestBlockSizeBytes: this.guestBlockSizeBytes,
      blocks: (this.blocksView ??= [...this.blocks.values()].sort((a, b) => a.index - b.index)),
    };
  }

  private buildDevices(): ObservedMemoryDevice[] {
    return this.devices.flatMap((d): ObservedMemoryDevice[] => {
        if (d.kind === 'dimm' && d.id)
          return [{ id: d.id, model: 'pc-dimm', backendId: d.memdev.split('/').pop()!, addrBytes: d.addressBytes, sizeBytes: d.sizeBytes, node: d.node }];
        if (d.kind === 'virtio-mem' && d.id)
          return [
            {
              id: d.id,
              model: 'virtio-mem-pci',
              backendId: d.memdev.split('/').pop()!,
              addrBytes: d.addressBytes,
              sizeBytes: d.sizeBytes,
              requestedBytes: d.requestedSizeBytes,
              maxSizeBytes: d.maxSizeBytes,
              node: d.node,
            },
          ];
        return [];
    });
  }

  /**
   * The guest's blocks may have changed since they were read: a device's plugged size or
   * place changed. They are read again before any decision that depends on them.
   */
  blocksStale = false;

  /** Re-reads QEMU's memory devices; a change in a device's plugged size or place makes the blocks stale. */
  async refreshDevices(): Promise<void> {
    const before = this.devices;
    this.devices = await this.driver.queryMemoryDevices(this.vmId);
    this.devicesView = undefined;
    if (!samePlacement(before, this.devices)) this.blocksStale = true;
  }

  /** Re-reads the guest's memory blocks; a zone learnt in this run stays with a block that stayed online. */
  async refreshBlocks(): Promise<void> {
    this.blocksStale = false;
    const blocks = await this.driver.guestMemoryBlocks(this.vmId);
    const known = new Map(this.blocks);
    this.blocks.clear();
    this.blocksView = undefined;
    for (const b of blocks) {
      const zone = known.get(b.physIndex)?.online && b.online ? known.get(b.physIndex)?.zone : undefined;
      this.blocks.set(b.physIndex, { index: b.physIndex, online: b.online, ...(zone ? { zone } : {}) });
    }
  }

  async refresh(on: 'qemu' | 'guest'): Promise<void> {
    if (on === 'qemu') await this.refreshDevices();
    else await this.refreshBlocks();
  }

  /** The guest blocks inside a device's region (the device as last seen). */
  blocksOfDevice(deviceId: string): ObservedMemoryBlock[] {
    const view = this.view();
    const device = view.devices.find((x) => x.id === deviceId);
    return device ? blocksOf(device, view) : [];
  }

  /** Takes in what a step QEMU or the guest accepted changed, and says what must be re-read to know the rest. */
  applied(step: Exclude<HotplugStep, { kind: 'done' } | { kind: 'wait' }>, responses?: readonly GuestMemoryBlockResponse[]): { rereadDevices: boolean; rereadBlocks: boolean } {
    switch (step.kind) {
      case 'object-add':
        this.backendIds.add(String(step.command.arguments['id']));
        this.backendsView = undefined;
        return { rereadDevices: false, rereadBlocks: false };
      case 'device-add':
        // Where QEMU placed it, and the blocks the guest adds for it: both to be read.
        return { rereadDevices: true, rereadBlocks: true };
      case 'set-requested-size': {
        const d = this.devices.find((x) => x.id === step.deviceId);
        if (d?.kind === 'virtio-mem') d.requestedSizeBytes = step.bytes;
        this.devicesView = undefined;
        return { rereadDevices: true, rereadBlocks: false };
      }
      case 'online-blocks':
      case 'offline-blocks': {
        let gone = false;
        for (const r of responses ?? []) {
          const b = this.blocks.get(r.physIndex);
          if (r.response === 'not-found') {
            this.blocks.delete(r.physIndex);
            this.blocksView = undefined;
            gone = true;
          } else if (b && r.response === 'success') {
            b.online = step.kind === 'online-blocks';
            if (b.online && r.zone) b.zone = r.zone;
            else delete b.zone;
          } else if (b?.online && step.kind === 'online-blocks' && r.zone) {
            b.zone = r.zone; // already online in another zone than asked: it stays, the zone is known
          } else gone = true; // a failure: what the block is now is for the guest to say
        }
        return { rereadDevices: false, rereadBlocks: gone };
      }
      case 'device-del': {
        // DEVICE_DELETED: the guest ejected the device after removing its memory blocks.
        const removed = this.blocksOfDevice(step.deviceId);
        for (const b of removed) this.blocks.delete(b.index);
        this.devices = this.devices.filter((d) => d.id !== step.deviceId);
        this.blocksView = undefined;
        this.devicesView = undefined;
        return { rereadDevices: false, rereadBlocks: false };
      }
      case 'object-del':
        this.backendIds.delete(step.backendId);
        this.backendsView = undefined;
        return { rereadDevices: false, rereadBlocks: false };
    }
  }
}

/** The same devices, in the same order, each with the same place and plugged size. */
function samePlacement(a: readonly MemoryDevice[], b: readonly MemoryDevice[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) {
    const x = a[i]!;
    const y = b[i]!;
    if (x.kind !== y.kind || x.id !== y.id) return false;
    if (x.kind === 'other' || y.kind === 'other') {
      if (x.kind === 'other' && y.kind === 'other' && x.type !== y.type) return false;
      continue;
    }
    if (x.addressBytes !== y.addressBytes || x.sizeBytes !== y.sizeBytes) return false;
  }
  return true;
}
