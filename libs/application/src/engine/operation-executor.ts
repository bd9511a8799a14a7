import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import {
  blocksOf,
  compileTopology,
  DomainError,
  isDomainError,
  memoryDeviceHotplugCommands,
  memoryDeviceIds,
  nextHotplugStep,
  progressOf,
  renderQemuArgv,
  topologyInputFromResources,
  zoneMismatches,
  type DesiredGroupMemory,
  type HotplugStep,
  type ObservedVmMemory,
  type OperationError,
  type OperationStep,
  type Topology,
  zoneRequestFor,
} from '#domain';
import type { HypervisorDriver } from '#hypervisor';
import type { MemoryGroupRecord } from '#persistence';
import type { EngineContext, EngineStore } from './engine-store';

export interface GuestBootImage {
  kernel: string;
  initrd: string;
  append: string;
}

export interface ExecutorConfig {
  /** Per-VM folders for QMP/guest-agent sockets, pidfile and logs. */
  runtimeDir: string;
  /** Boot media for a kernel profile (this control plane boots kernel + initramfs guests). */
  bootImage(kernelProfile: string): GuestBootImage;
  accel: string;
  cpuModel: string;
  /** `auto`: bind backends to host nodes when this machine has them. */
  hostNodeBinding: 'bind' | 'none' | 'auto';
  /** How long one group may take to converge (guest adding blocks, virtio-mem plugging). */
  convergeTimeoutMs: number;
  /** How long the guest may take to eject a DIMM after device_del. */
  deviceDelTimeoutMs: number;
  /**
   * How long a virtio-mem shrink may make no progress before the engine settles on what the
   * guest gave back (default 10 s). Linux's virtio_mem driver gives up on memory it cannot
   * offline (EBUSY) and retries only 50 s later, doubling up to 5 min (domain-spec §5).
   */
  shrinkStallMs?: number;
  bootTimeoutMs: number;
  log?: (line: string) => void;
}

/** A failure worth another attempt (QEMU or the agent briefly unreachable). */
export class TransientError extends Error {}

/** The operation was cancelled while it ran; compensation is done. */
class Cancelled extends Error {}

const TRANSIENT = new Set(['UNAVAILABLE', 'DEADLINE_EXCEEDED']);
/** The engine's own deadline: it has compensated already, so another attempt would redo an undone change. */
const TERMINAL_REASONS = new Set(['HOTPLUG_TIMEOUT']);

function isTransient(e: unknown): boolean {
  return e instanceof TransientError || (isDomainError(e) && TRANSIENT.has(e.code) && !TERMINAL_REASONS.has(e.reason));
}

/**
 * QEMU before 8.1 cannot device_del a virtio-mem device at all ("virtio based memory devices
 * cannot be unplugged."; seen on Debian's 7.2). Unplug support came with the virtio-md-pci
 * rework (QEMU patch "virtio-mem-pci: Device unplug support", 2023; the release is unverified).
 */
const VIRTIO_MEM_UNPLUG_SINCE: readonly [number, number] = [8, 1];

function opError(e: unknown): OperationError {
  if (isDomainError(e)) return { code: e.code, reason: e.reason, message: e.message };
  return { code: 'INTERNAL', reason: 'INTERNAL', message: (e as Error)?.message ?? String(e) };
}

/**
 * Executes one Operation as a level-triggered reconciler: before every step it re-reads
 * desired state (Postgres) and observed state (QMP query-memory-devices, qom-list, the
 * guest agent's memory blocks), takes the one next idempotent step, records it on the
 * Operation, and repeats until desired == observed. Crash-safe because it never relies on
 * what it did before: a second worker running the same operation after a SIGKILL starts
 * from what QEMU shows.
 */
export class OperationExecutor {
  constructor(
    private readonly store: EngineStore,
    private readonly driver: HypervisorDriver,
    private readonly config: ExecutorConfig,
  ) {}

  private log(line: string): void {
    this.config.log?.(line);
  }

  /** Runs the operation to an end state; throws TransientError to be retried later. */
  async execute(operationId: string): Promise<'SUCCEEDED' | 'FAILED' | 'CANCELLED' | 'SKIPPED'> {
    const ctx = await this.store.load(operationId);
    if (!ctx || !['PENDING', 'RUNNING'].includes(ctx.op.state)) return 'SKIPPED';
    await this.store.markRunning(ctx.op);
    const steps: OperationStep[] = ctx.op.steps.map((s) => ({ ...s }));
    const record = async (name: string) => {
      const existing = steps.find((s) => s.name === name && s.state === 'PENDING');
      if (existing) existing.state = 'DONE';
      else steps.push({ name, state: 'DONE' });
      await this.store.recordSteps(ctx.op.name, steps, progressOf(steps));
    };
    try {
      switch (ctx.op.kind) {
        case 'START':
          await this.start(ctx, record);
          break;
        case 'STOP':
          await this.stop(ctx, record);
          break;
        case 'PLUG':
        case 'RESIZE':
        case 'UNPLUG':
          await this.group(ctx, record);
          break;
      }
      await this.store.finish(ctx.op.name, 'SUCCEEDED');
      return 'SUCCEEDED';
    } catch (e) {
      if (e instanceof Cancelled) {
        await this.store.finish(ctx.op.name, 'CANCELLED', { code: 'CANCELLED', reason: 'OPERATION_CANCELLED', message: e.message });
        return 'CANCELLED';
      }
      if (isTransient(e)) {
        await this.store.requeue(ctx.op.name, opError(e));
        throw e instanceof TransientError ? e : new TransientError((e as Error).message);
      }
      this.log(`operation ${ctx.op.name} (${ctx.op.kind} ${ctx.vm.name}${ctx.op.memoryGroup ? '/' + ctx.op.memoryGroup : ''}) failed: ${(e as Error).message}`);
      await this.store.finish(ctx.op.name, 'FAILED', opError(e));
      return 'FAILED';
    }
  }

  // ---------------------------------------------------------------- VM lifecycle

  private topology(ctx: EngineContext): Topology {
    return compileTopology(topologyInputFromResources({ host: ctx.host, vm: ctx.vm, pools: ctx.pools, groups: ctx.groups }));
  }

  private binding(topology: Topology): 'bind' | 'none' {
    if (this.config.hostNodeBinding !== 'auto') return this.config.hostNodeBinding;
    const nodes = new Set<number>();
    for (const n of topology.guestNodes) nodes.add(n.hostNodeId);
    return [...nodes].every((n) => existsSync(`/sys/devices/system/node/node${n}`)) ? 'bind' : 'none';
  }

  private paths(vmId: string) {
    const dir = join(this.config.runtimeDir, vmId);
    mkdirSync(dir, { recursive: true });
    return { dir, qmpSocket: join(dir, 'qmp.sock'), qgaSocket: join(dir, 'qga.sock'), logFile: join(dir, 'qemu.log'), pidFile: join(dir, 'qemu.pid') };
  }

  /** Connects this worker to the VM's QEMU, wherever it was started from. */
  private async attach(ctx: EngineContext): Promise<void> {
    const status = this.driver.status(ctx.vm.uid);
    if (status.running) return;
    if (!ctx.runtime) throw DomainError.precondition('VM_NOT_RUNNING', `VM ${ctx.vm.name} has no running QEMU on record`);
    await this.driver.attach(ctx.vm.uid, {
      paths: { qmpSocket: ctx.runtime.qmpSocketPath, qgaSocket: ctx.runtime.qgaSocketPath, logFile: join(ctx.runtime.runtimeDir, 'qemu.log'), pidFile: join(ctx.runtime.runtimeDir, 'qemu.pid') },
      pid: ctx.runtime.pid,
    });
  }

  private async start(ctx: EngineContext, record: (step: string) => Promise<void>): Promise<void> {
    const topology = this.topology(ctx);
    await record('compile-topology');
    const already = ctx.runtime ? await this.attach(ctx).then(() => true, () => false) : false;
    if (!already) {
      const paths = this.paths(ctx.vm.uid);
      const image = this.config.bootImage(ctx.vm.kernelProfile);
      const argv = [
        '-nodefaults',
        '-no-user-config',
        '-display',
        'none',
        ...renderQemuArgv(topology, { hostNodeBinding: this.binding(topology) }),
        '-accel',
        this.config.accel,
        '-cpu',
        this.config.cpuModel,
        '-kernel',
        image.kernel,
        '-initrd',
        image.initrd,
        '-append',
        image.append,
      ];
      const status = await this.driver.launch(ctx.vm.uid, argv, paths, { detached: true, guestAgentTimeoutMs: this.config.bootTimeoutMs });
      await this.store.setVmRunning(ctx.vm.uid, { pid: status.pid!, qmpSocketPath: paths.qmpSocket, qgaSocketPath: paths.qgaSocket, runtimeDir: paths.dir });
      ctx.runtime = { pid: status.pid!, qmpSocketPath: paths.qmpSocket, qgaSocketPath: paths.qgaSocket, runtimeDir: paths.dir };
    }
    await record('launch-qemu');
    await record('wait-guest-agent');
    await this.store.setVmState(ctx.vm.uid, 'RUNNING');
    // Static groups are plugged now, after boot, so their nodes get their HMAT tier (see topology README).
    for (const g of ctx.groups.filter((x) => x.desiredState === 'PRESENT')) await this.converge(ctx, topology, g, record);
    await this.snapshotDevices(ctx);
  }

  private async stop(ctx: EngineContext, record: (step: string) => Promise<void>): Promise<void> {
    if (ctx.runtime) {
      await this.attach(ctx).catch(() => undefined);
      await this.driver.stop(ctx.vm.uid, { powerdownTimeoutMs: 5_000, quitTimeoutMs: 5_000 });
    }
    await record('guest-shutdown');
    await record('wait-qemu-exit');
    await this.store.setVmStopped(ctx.vm.uid, 'STOPPED');
  }

  // ---------------------------------------------------------------- memory groups

  private async group(ctx: EngineContext, record: (step: string) => Promise<void>): Promise<void> {
    const g = ctx.groups.find((x) => x.uid === ctx.op.groupId);
    if (!g) return; // the group went away (cancelled plug): nothing left to do
    await this.attach(ctx);
    const topology = this.topology({ ...ctx, groups: ctx.groups.map((x) => (x.uid === g.uid ? { ...x, desiredState: 'PRESENT' } : x)) });
    await this.converge(ctx, topology, g, record);
    await this.snapshotDevices(ctx);
  }

  /**
   * A virtio-mem device added to a running q35 guest needs a free hotplug-capable root port
   * declared at launch: the first spare port no present virtio-mem device sits on.
   */
  private async freeSparePort(vmId: string, topology: Topology, deviceId: string): Promise<string | undefined> {
    const spares = topology.pciePorts.filter((p) => p.purpose === 'spare').map((p) => p.id);
    if (spares.length === 0) return undefined;
    const devices = (await this.driver.queryMemoryDevices(vmId)).filter((d) => d.kind === 'virtio-mem' && d.id);
    const used = new Map<string, string>();
    for (const d of devices) {
      const parent = await this.driver.qomGet<string>(vmId, `/machine/peripheral/${d.id}`, 'parent_bus').catch(() => '');
      const port = /\/machine\/peripheral\/([^/]+)\//.exec(parent)?.[1];
      if (port) used.set(d.id!, port);
    }
    // The group's own device keeps its port; otherwise the first one nobody sits on.
    return used.get(deviceId) ?? spares.find((p) => ![...used.values()].includes(p));
  }

  private desired(topology: Topology, g: MemoryGroupRecord, bus?: string): DesiredGroupMemory {
    const ids = memoryDeviceIds(g.name);
    const device = topology.memoryDevices.find((d) => d.groupId === g.name);
    if (!device) throw new DomainError('INTERNAL', 'TOPOLOGY_INTERNAL', `the topology has no device for group ${g.name}`);
    const [objectAdd, deviceAdd] = memoryDeviceHotplugCommands(topology, g.name, device.bus ?? bus, this.binding(topology));
    return {
      groupId: g.uid,
      kind: g.kind,
      present: g.desiredState === 'PRESENT',
      deviceId: g.kind === 'STATIC' ? ids.dimmId : ids.virtioMemId,
      backendId: ids.backendId,
      ...(g.kind === 'STATIC' ? { sizeBytes: g.sizeBytes } : { requestedBytes: g.requestedBytes }),
      onlineType: g.onlineType,
      objectAdd,
      deviceAdd: g.kind === 'DYNAMIC' ? { ...deviceAdd, arguments: { ...deviceAdd.arguments, 'requested-size': g.requestedBytes } } : deviceAdd,
    };
  }

  async observe(vmId: string): Promise<ObservedVmMemory> {
    type Observed = ObservedVmMemory['devices'][number];
    const [devices, objects, blockSize, blocks] = await Promise.all([
      this.driver.queryMemoryDevices(vmId),
      this.driver.qmp(vmId).execute<{ name: string; type: string }[]>('qom-list', { path: '/objects' }),
      this.driver.guestMemoryBlockSizeBytes(vmId),
      this.driver.guestMemoryBlocks(vmId),
    ]);
    return {
      devices: devices.flatMap((d): Observed[] => {
        if (d.kind === 'dimm' && d.id)
          return [{ id: d.id, model: 'pc-dimm' as const, backendId: d.memdev.split('/').pop()!, addrBytes: d.addressBytes, sizeBytes: d.sizeBytes, node: d.node }];
        if (d.kind === 'virtio-mem' && d.id)
          return [
            {
              id: d.id,
              model: 'virtio-mem-pci' as const,
              backendId: d.memdev.split('/').pop()!,
              addrBytes: d.addressBytes,
              sizeBytes: d.sizeBytes,
              requestedBytes: d.requestedSizeBytes,
              maxSizeBytes: d.maxSizeBytes,
              node: d.node,
            },
          ];
        return [];
      }),
      backendIds: objects.filter((o) => /memory-backend/.test(o.type)).map((o) => o.name),
      guestBlockSizeBytes: blockSize,
      blocks: blocks.map((b) => ({ index: b.physIndex, online: b.online })),
    };
  }

  private async snapshotDevices(ctx: EngineContext): Promise<void> {
    const devices = await this.driver.queryMemoryDevices(ctx.vm.uid).catch(() => undefined);
    if (devices) await this.store.recordObservedDevices(ctx.vm.uid, devices);
  }

  /** Drives one group to its desired state, step by step, re-observing before each. */
  private async converge(ctx: EngineContext, topology: Topology, g: MemoryGroupRecord, record: (step: string) => Promise<void>): Promise<void> {
    const vmId = ctx.vm.uid;
    const device = topology.memoryDevices.find((d) => d.groupId === g.name);
    const bus = g.kind === 'DYNAMIC' && !device?.bus && topology.machine.type === 'q35' ? await this.freeSparePort(vmId, topology, memoryDeviceIds(g.name).virtioMemId) : undefined;
    const desired = this.desired(topology, g, bus);
    const deadline = Date.now() + this.config.convergeTimeoutMs;
    const offlined: number[] = [];
    let lastWait = '';
    // A virtio-mem shrink's progress: the plugged size last seen and since when.
    let shrink: { bytes: number; sinceMs: number } | undefined;
    for (;;) {
      if (await this.store.cancelRequested(ctx.op.name)) {
        await this.compensate(ctx, g, desired, offlined, 'cancelled');
        throw new Cancelled(`cancelled while ${lastWait || 'running'}`);
      }
      let observed: ObservedVmMemory;
      try {
        observed = await this.observe(vmId);
      } catch (e) {
        // QEMU or the agent answering with an error of their own is as terminal as a failed step.
        if (isTransient(e)) throw e;
        await this.compensate(ctx, g, desired, offlined, 'failed');
        throw e;
      }
      const step = nextHotplugStep(desired, observed);
      if (step.kind === 'done') {
        await this.finishGroup(ctx, g, desired, step, vmId);
        return;
      }
      if (step.kind === 'wait') {
        lastWait = step.reason;
        const device = observed.devices.find((d) => d.id === desired.deviceId);
        const target = desired.present ? (desired.requestedBytes ?? 0) : 0;
        if (device?.model === 'virtio-mem-pci' && device.sizeBytes > target) {
          if (shrink?.bytes !== device.sizeBytes) shrink = { bytes: device.sizeBytes, sinceMs: Date.now() };
          const stallMs = this.config.shrinkStallMs ?? 10_000;
          if (Date.now() - shrink.sinceMs > stallMs) {
            return this.timedOut(ctx, g, desired, observed, `the guest gave nothing back for ${stallMs} ms`, offlined);
          }
        } else shrink = undefined;
        if (Date.now() > deadline) return this.timedOut(ctx, g, desired, observed, `${step.reason} after ${this.config.convergeTimeoutMs} ms`, offlined);
        await new Promise((r) => setTimeout(r, 25));
        continue;
      }
      try {
        if (!desired.present && desired.kind === 'DYNAMIC') await this.assertVirtioMemUnplug(vmId, g);
        await this.apply(vmId, step, offlined);
      } catch (e) {
        if (isTransient(e)) throw e;
        await this.compensate(ctx, g, desired, offlined, 'failed');
        throw e;
      }
      await record(stepName(step));
    }
  }

  /** Before a virtio-mem group is emptied for removal: can this QEMU remove the device afterwards? */
  private async assertVirtioMemUnplug(vmId: string, g: MemoryGroupRecord): Promise<void> {
    const v = await this.driver.qmp(vmId).execute<{ qemu: { major: number; minor: number; micro: number } }>('query-version');
    const [major, minor] = VIRTIO_MEM_UNPLUG_SINCE;
    if (v.qemu.major > major || (v.qemu.major === major && v.qemu.minor >= minor)) return;
    const version = `${v.qemu.major}.${v.qemu.minor}.${v.qemu.micro}`;
    throw DomainError.precondition(
      'VIRTIO_MEM_UNPLUG_UNSUPPORTED',
      `QEMU ${version} cannot remove the virtio-mem device of ${g.name} from a running guest (device_del of virtio-mem needs QEMU ${major}.${minor} or later); ` +
        `the group is left as it was: resize it to 0 to give its capacity back, or delete it while the VM is stopped`,
      { qemuVersion: version },
    );
  }

  private async apply(vmId: string, step: Exclude<HotplugStep, { kind: 'done' } | { kind: 'wait' }>, offlined: number[]): Promise<void> {
    switch (step.kind) {
      case 'object-add': {
        const { 'qom-type': type, id, ...props } = step.command.arguments as { 'qom-type': string; id: string };
        return this.driver.objectAdd(vmId, type, id, props);
      }
      case 'device-add': {
        const { driver, id, ...props } = step.command.arguments as { driver: string; id: string };
        return this.driver.deviceAdd(vmId, driver, id, props);
      }
      case 'set-requested-size':
        return this.driver.qomSet(vmId, `/machine/peripheral/${step.deviceId}`, 'requested-size', step.bytes);
      case 'online-blocks': {
        const res = await this.driver.onlineGuestMemoryBlocks(vmId, step.indexes, step.zone);
        // A block that vanished meanwhile (ENODEV, or not-found) was being removed by the
        // guest: the next observation tells what is left to do.
        const bad = res.filter((r) => r.response !== 'success' && r.response !== 'not-found' && r.errorCode !== 19 && !/No such device/.test(r.message ?? ''));
        if (bad.length)
          throw DomainError.precondition(
            'GUEST_ONLINE_FAILED',
            `the guest could not online memory block(s) ${bad.map((b) => `${b.physIndex} (${b.message ?? b.response})`).join(', ')} as ${step.zone}`,
          );
        return;
      }
      case 'offline-blocks': {
        const res = await this.driver.offlineGuestMemoryBlocks(vmId, step.indexes);
        for (const r of res) if (r.response === 'success') offlined.push(r.physIndex);
        const bad = res.filter((r) => r.response !== 'success');
        if (bad.length)
          throw DomainError.precondition(
            'GUEST_OFFLINE_REFUSED',
            `the guest refused to offline memory block(s) ${bad.map((b) => `${b.physIndex} (${b.message ?? `${b.response}${b.errorCode ? `, errno ${b.errorCode}` : ''}`})`).join(', ')}; the group stays plugged`,
          );
        return;
      }
      case 'device-del': {
        const cursor = this.driver.eventCursor(vmId);
        const deleted = this.driver.deviceDel(vmId, step.deviceId, { waitForDeleted: true, deletedTimeoutMs: this.config.deviceDelTimeoutMs });
        // A guest that cannot eject answers through _OST; QEMU reports it as ACPI_DEVICE_OST.
        // Status 0 is success and 0x84 "ejection in progress" (ACPI 6.x, _OST eject codes);
        // anything else (1 non-specific failure, 0x80-0x83 not supported / in use / busy) is a refusal.
        const refused = this.driver
          .waitForEvent(vmId, (e) => {
            const info = (e.data as { info?: { device?: string; status?: number } })?.info;
            return e.event === 'ACPI_DEVICE_OST' && info?.device === step.deviceId && info.status !== undefined && info.status !== 0 && info.status !== 0x84;
          }, {
            after: cursor,
            timeoutMs: this.config.deviceDelTimeoutMs,
          })
          .then(
            (e) => e,
            () => undefined,
          );
        const first = await Promise.race([deleted.then(() => 'deleted' as const), refused.then((e) => (e ? e : 'no-ost'))]);
        if (first === 'deleted') return;
        if (first !== 'no-ost') {
          const status = (first.data as { info: { status: number } }).info.status;
          throw DomainError.precondition('GUEST_EJECT_REFUSED', `the guest refused to eject ${step.deviceId} (ACPI _OST status 0x${status.toString(16)})`);
        }
        await deleted;
        return;
      }
      case 'object-del':
        return this.driver.objectDel(vmId, step.backendId);
    }
  }

  private async finishGroup(ctx: EngineContext, g: MemoryGroupRecord, desired: DesiredGroupMemory, step: Extract<HotplugStep, { kind: 'done' }>, vmId: string): Promise<void> {
    if (!desired.present) {
      await this.store.completeUnplug(ctx.vm, g);
      return;
    }
    const zones = await this.driver.guestMemoryBlockZones(vmId, step.onlineBlocks);
    const blocks = zones.map((z) => ({ index: z.physIndex, online: z.online, ...(z.zone ? { zone: z.zone } : {}) }));
    const counts: Record<string, number> = {};
    for (const b of blocks) if (b.online && b.zone) counts[b.zone] = (counts[b.zone] ?? 0) + 1;
    await this.store.setGroupObserved(g.uid, { state: 'PLUGGED', pluggedBytes: step.pluggedBytes, onlineBlocks: step.onlineBlocks.length, zones: counts });
    if (g.kind === 'DYNAMIC') await this.store.releaseShrunk(ctx.vm, g, desired.requestedBytes ?? 0);
    const wrong = zoneMismatches(g.onlineType, blocks);
    if (wrong.length) {
      throw DomainError.precondition(
        'GUEST_ZONE_MISMATCH',
        `the guest onlined block(s) ${wrong.map((b) => `${b.index} in ${b.zone}`).join(', ')}, but the group asks for ${g.onlineType}`,
      );
    }
  }

  /**
   * Convergence stalled or timed out. A virtio-mem group the guest could only partly resize
   * settles on what the guest has, and says so; anything else is compensated.
   */
  private async timedOut(
    ctx: EngineContext,
    g: MemoryGroupRecord,
    desired: DesiredGroupMemory,
    observed: ObservedVmMemory,
    reason: string,
    offlined: number[],
  ): Promise<never> {
    const device = observed.devices.find((d) => d.id === desired.deviceId);
    const target = desired.present ? (desired.requestedBytes ?? 0) : 0;
    if (g.kind === 'DYNAMIC' && device && device.sizeBytes !== target) {
      const plugged = await this.settleDynamic(ctx, g, desired);
      const what = desired.present ? `the ${target} bytes requested` : 'the 0 bytes an unplug needs';
      throw DomainError.precondition(
        desired.present ? 'RESIZE_PARTIAL' : 'UNPLUG_PARTIAL',
        `the guest reached ${plugged} of ${what} for ${ctx.vm.name}/${g.name} (${reason}); ` +
          (desired.present ? '' : 'the group stays, and ') +
          `the request and the pool's ledger now follow the ${plugged} bytes plugged`,
        { pluggedBytes: String(plugged), requestedBytes: String(target) },
      );
    }
    await this.compensate(ctx, g, desired, offlined, 'failed');
    throw new DomainError('DEADLINE_EXCEEDED', 'HOTPLUG_TIMEOUT', `${ctx.vm.name}/${g.name} did not converge: ${reason}`);
  }

  /**
   * A virtio-mem group stays with what the guest has plugged: QEMU stops asking for more or
   * less, the group's request and its ledger holding follow, and it is PRESENT again.
   * Returns the plugged bytes.
   */
  private async settleDynamic(ctx: EngineContext, g: MemoryGroupRecord, desired: DesiredGroupMemory): Promise<number> {
    const vmId = ctx.vm.uid;
    const device = (await this.observe(vmId)).devices.find((d) => d.id === desired.deviceId);
    if (!device) return 0;
    if (device.requestedBytes !== device.sizeBytes) await this.driver.qomSet(vmId, `/machine/peripheral/${device.id}`, 'requested-size', device.sizeBytes);
    if (!desired.present) await this.store.restorePresent(g.uid);
    await this.store.followPlugged(ctx.vm, g, device.sizeBytes);
    await this.recordGroupObserved(vmId, g, desired.deviceId);
    return device.sizeBytes;
  }

  /** The group's device as the guest has it now: plugged size, online blocks and their zones. */
  private async recordGroupObserved(vmId: string, g: MemoryGroupRecord, deviceId: string): Promise<void> {
    const observed = await this.observe(vmId);
    const device = observed.devices.find((d) => d.id === deviceId);
    if (!device) return;
    const online = blocksOf(device, observed).filter((b) => b.online).map((b) => b.index);
    const zones: Record<string, number> = {};
    for (const z of await this.driver.guestMemoryBlockZones(vmId, online)) if (z.online && z.zone) zones[z.zone] = (zones[z.zone] ?? 0) + 1;
    await this.store.setGroupObserved(g.uid, { state: 'PLUGGED', pluggedBytes: device.sizeBytes, onlineBlocks: online.length, zones });
  }

  /**
   * Undo what a failed or cancelled step left half-made. A plug removes its device and
   * backend and gives the capacity back (a cancelled plug also drops the group, as cancelling
   * a pending one does; a failed one stays FAILED with its reason). An unplug puts offlined
   * blocks back online in the group's zone (a virtio-mem group settles on what it has
   * plugged) and the group is PRESENT again.
   */
  private async compensate(ctx: EngineContext, g: MemoryGroupRecord, desired: DesiredGroupMemory, offlined: number[], why: 'failed' | 'cancelled'): Promise<void> {
    const vmId = ctx.vm.uid;
    try {
      if (desired.present && ctx.op.kind === 'PLUG') {
        const observed = await this.observe(vmId);
        if (observed.devices.some((d) => d.id === desired.deviceId)) await this.driver.deviceDel(vmId, desired.deviceId, { waitForDeleted: true, deletedTimeoutMs: this.config.deviceDelTimeoutMs }).catch(() => undefined);
        if ((await this.observe(vmId)).backendIds.includes(desired.backendId)) await this.driver.objectDel(vmId, desired.backendId).catch(() => undefined);
        if (why === 'cancelled') await this.store.completeUnplug(ctx.vm, g);
        else await this.store.releaseFailedPlug(ctx.vm, g);
        return;
      }
      if (!desired.present) {
        if (g.kind === 'DYNAMIC') {
          await this.settleDynamic(ctx, g, desired);
          return;
        }
        if (offlined.length) {
          const back = await this.driver.onlineGuestMemoryBlocks(vmId, offlined, zoneRequestFor(desired.onlineType));
          const bad = back.filter((r) => r.response !== 'success');
          if (bad.length) this.log(`compensation for ${ctx.vm.name}/${g.name}: block(s) not back online: ${bad.map((b) => `${b.physIndex} (${b.message ?? b.response})`).join(', ')}`);
        }
        await this.store.restorePresent(g.uid);
        await this.recordGroupObserved(vmId, g, desired.deviceId);
      }
    } catch (e) {
      this.log(`compensation for ${ctx.vm.name}/${g.name} incomplete: ${(e as Error).message}`);
    }
  }
}

function stepName(step: HotplugStep): string {
  switch (step.kind) {
    case 'object-add':
      return `object-add ${String(step.command.arguments['qom-type'])}`;
    case 'device-add':
      return `device_add ${String(step.command.arguments['driver'])}`;
    case 'set-requested-size':
      return `qom-set requested-size ${step.bytes}`;
    case 'online-blocks':
      return `online-memory-blocks ${step.zone}`;
    case 'offline-blocks':
      return 'offline-memory-blocks';
    case 'device-del':
      return 'device_del';
    case 'object-del':
      return 'object-del memory-backend';
    default:
      return step.kind;
  }
}
