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
  renderQemuArgv,
  topologyInputFromResources,
  zoneMismatches,
  type DesiredGroupMemory,
  type HotplugStep,
  type ObservedVmMemory,
  type OperationError,
  type Topology,
  zoneRequestFor,
} from '#domain';
import type { GuestMemoryBlockResponse, HypervisorDriver, MemoryDevice } from '#hypervisor';
import type { ClaimedOperation, MemoryGroupRecord, OperationEnd, VmContext, WrittenDevices } from '#persistence';
import type { EngineContext, EngineStore } from './engine-store';
import { RunObservation } from './run-observation';
import { StepRecorder } from './step-recorder';

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
  /** While waiting for QEMU or the guest to move, how often what is awaited is re-read (default 10 ms). */
  pollIntervalMs?: number;
  /** A running operation's steps and progress are written at most this often (default 25 ms); its end always. */
  progressIntervalMs?: number;
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
/** Keeps `value` as the newest entry of a per-VM cache, forgetting the oldest beyond 1,024 VMs. */
function remember<V>(cache: Map<string, V>, vmId: string, value: V): void {
  cache.delete(vmId);
  cache.set(vmId, value);
  if (cache.size > 1024) cache.delete(cache.keys().next().value!);
}

/** While waiting, Postgres is asked for a cancel at most this often. */
const CANCEL_CHECK_MS = 100;

function opError(e: unknown): OperationError {
  if (isDomainError(e)) return { code: e.code, reason: e.reason, message: e.message };
  return { code: 'INTERNAL', reason: 'INTERNAL', message: (e as Error)?.message ?? String(e) };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export type OperationOutcome = 'SUCCEEDED' | 'FAILED' | 'CANCELLED';

/** One execution of one operation: its steps, and what its end writes. */
interface Run {
  ctx: EngineContext;
  steps: StepRecorder;
  /** Asks Postgres whether a cancel was asked for (while waiting, when no step is written). */
  checkCancel(): Promise<void>;
  /** Written with the end state, in the same statement: the group's observation, the VM's devices. */
  end: Pick<OperationEnd, 'group' | 'devices'>;
  /** The end state is written already (an unplug ends in the transaction that releases its capacity). */
  ended: boolean;
  /** The VM's memory as observed while the operation was claimed, for the run's first convergence (taken once; undefined if that read failed). */
  early?: Promise<RunObservation | undefined>;
}

/**
 * Executes operations as a level-triggered reconciler. Each run re-reads desired state from
 * Postgres (one statement that also claims the operation) and observes QEMU (QMP
 * query-memory-devices, qom-list) and the guest (the agent's memory blocks) when it starts;
 * then it takes one idempotent step at a time, learning from each step's own answer what
 * changed, and re-reading QEMU or the guest only where they move on their own (blocks
 * appearing, virtio-mem converging), until desired == observed. Crash-safe because nothing
 * outlives a run: a second worker running the same operation after a SIGKILL starts from
 * what QEMU and the guest show.
 */
export class OperationExecutor {
  /** Compiled topologies per VM, keyed by the versions of what they are compiled from. */
  private readonly topologies = new Map<string, { key: string; topology: Topology }>();
  /** Each VM's context as last read, with the versions it was read at. */
  private readonly contexts = new Map<string, { key: string; context: VmContext }>();
  /** The guest's memory block size per VM and QEMU process (it cannot change while the guest runs). */
  private readonly blockSizes = new Map<string, { pid: number | undefined; bytes: Promise<number> }>();

  constructor(
    private readonly store: EngineStore,
    private readonly driver: HypervisorDriver,
    private readonly config: ExecutorConfig,
  ) {}

  private log(line: string): void {
    this.config.log?.(line);
  }

  private get pollMs(): number {
    return this.config.pollIntervalMs ?? 10;
  }

  /**
   * Runs the VM's unfinished operations, oldest first, each to an end state, for as long as
   * `more()` (asked after each) says so; an operation's end is written in the same statement
   * that claims the next one. Throws TransientError when the operation under way should be
   * retried later (it is PENDING again). The caller holds the VM's lock.
   */
  async executeHead(vmId: string, more: () => boolean = () => false): Promise<{ operationId: string; state: OperationOutcome }[]> {
    const done: { operationId: string; state: OperationOutcome }[] = [];
    let known = this.contexts.get(vmId);
    // The VM's devices as this loop's last end wrote them: it holds the VM's lock throughout,
    // so the next end writes only what changed. Forgotten whenever anything else may have
    // written them (an end without devices, an unplug's own transaction, a stop).
    let written: WrittenDevices | undefined;
    let early = this.observeEarly(vmId);
    let claimed = await this.store.claimHead(vmId, known?.key);
    while (claimed) {
      const ctx = this.contextOf(vmId, claimed, known);
      const { state, end } = await this.run(ctx, early);
      early = undefined;
      done.push({ operationId: ctx.op.name, state });
      const next = more();
      known = this.contexts.get(vmId);
      if (end) {
        const r = await this.store.endAndClaim(vmId, end, next, known?.key, written);
        claimed = r.next;
        written = r.writtenDevices;
      } else {
        written = undefined;
        claimed = next ? await this.store.claimHead(vmId, known?.key) : undefined;
      }
    }
    return done;
  }

  /**
   * The observation a group operation starts from, read while Postgres claims the operation
   * instead of after it (the three reads take ~5 ms in bench:ops, the claim 3-7). The caller holds the
   * VM's lock, so nobody else's operation or drift check is touching QEMU or the guest: what
   * is read now is what would be read a few milliseconds later, save what QEMU and the guest
   * do on their own, which a run re-reads anyway. Only for a QEMU this worker is attached to
   * (a stopped VM has nothing to observe); a failed read is read again by the run itself.
   */
  private observeEarly(vmId: string): Promise<RunObservation | undefined> | undefined {
    if (!this.driver.status(vmId).running) return undefined;
    return RunObservation.observe(this.driver, vmId, this.blockSize(vmId)).catch(() => undefined);
  }

  /**
   * The run's context: as claimed, or as this worker read it before when the VM's, its
   * host's and its groups' versions are unchanged (then only the operation's own group is
   * fresh: it also carries observed state).
   */
  private contextOf(vmId: string, claimed: ClaimedOperation, known: { key: string; context: VmContext } | undefined): EngineContext {
    let context = claimed.context;
    if (!context) {
      if (!known || known.key !== claimed.contextKey) throw new Error(`unreachable: no context for VM ${vmId} under key ${claimed.contextKey}`);
      const group = claimed.group;
      context = group ? { ...known.context, groups: known.context.groups.map((g) => (g.uid === group.uid ? group : g)) } : known.context;
    }
    remember(this.contexts, vmId, { key: claimed.contextKey, context });
    return { op: claimed.op, cancelRequested: claimed.cancelRequested, contextKey: claimed.contextKey, ...context };
  }

  /** One operation to its end: returns the end to write (none when it is written already). Throws TransientError after a requeue. */
  private async run(ctx: EngineContext, early?: Promise<RunObservation | undefined>): Promise<{ state: OperationOutcome; end?: OperationEnd }> {
    const recorder = new StepRecorder(
      (steps, progressPercent) => this.store.recordSteps(ctx.op.name, steps, progressPercent),
      ctx.op.steps,
      ctx.cancelRequested,
      this.config.progressIntervalMs ?? 25,
    );
    const run: Run = {
      ctx,
      steps: recorder,
      checkCancel: async () => {
        if (!recorder.cancelRequested && (await this.store.cancelRequested(ctx.op.name))) recorder.cancelRequested = true;
      },
      end: {},
      ended: false,
      ...(early && (ctx.op.kind === 'PLUG' || ctx.op.kind === 'RESIZE' || ctx.op.kind === 'UNPLUG') ? { early } : {}),
    };
    const operationId = ctx.op.name;
    try {
      switch (ctx.op.kind) {
        case 'START':
          await this.start(run);
          break;
        case 'STOP':
          await this.stop(run);
          break;
        case 'PLUG':
        case 'RESIZE':
        case 'UNPLUG':
          await this.group(run);
          break;
      }
      if (run.ended) return { state: 'SUCCEEDED' };
      await recorder.settle();
      return { state: 'SUCCEEDED', end: { operationId, state: 'SUCCEEDED', ...run.end, steps: recorder.current() } };
    } catch (e) {
      await recorder.settle().catch(() => undefined);
      if (e instanceof Cancelled) {
        return { state: 'CANCELLED', end: { operationId, state: 'CANCELLED', error: { code: 'CANCELLED', reason: 'OPERATION_CANCELLED', message: e.message }, steps: recorder.current() } };
      }
      if (isTransient(e)) {
        await this.store.requeue(operationId, opError(e), recorder.current());
        throw e instanceof TransientError ? e : new TransientError((e as Error).message);
      }
      this.log(`operation ${operationId} (${ctx.op.kind} ${ctx.vm.name}${ctx.op.memoryGroup ? '/' + ctx.op.memoryGroup : ''}) failed: ${(e as Error).message}`);
      return { state: 'FAILED', end: { operationId, state: 'FAILED', error: opError(e), ...run.end, steps: recorder.current() } };
    }
  }

  // ---------------------------------------------------------------- VM lifecycle

  /**
   * The VM's topology, with `presentGroup` counted as present (an unplug's group is still in
   * the guest). Compiled again only when something it is compiled from changed: the context
   * key names the VM's, its host's and its groups' versions.
   */
  private topology(ctx: EngineContext, presentGroup?: MemoryGroupRecord): Topology {
    const groups = presentGroup ? ctx.groups.map((x) => (x.uid === presentGroup.uid ? { ...x, desiredState: 'PRESENT' as const } : x)) : ctx.groups;
    const key = `${ctx.contextKey}|${presentGroup && presentGroup.desiredState !== 'PRESENT' ? presentGroup.uid : ''}`;
    const hit = this.topologies.get(ctx.vm.uid);
    if (hit?.key === key) return hit.topology;
    const pools = new Map(groups.map((g) => [g.pool, { name: g.pool, hostNodeId: g.poolFacts.hostNodeId, memoryType: g.poolFacts.memoryType, ...(g.poolFacts.daxDevicePath ? { daxDevicePath: g.poolFacts.daxDevicePath } : {}) }]));
    const topology = compileTopology(topologyInputFromResources({ host: ctx.host, vm: ctx.vm, pools: [...pools.values()], groups }));
    remember(this.topologies, ctx.vm.uid, { key, topology });
    return topology;
  }

  /** The guest's memory block size, asked once per QEMU process. */
  private blockSize(vmId: string): Promise<number> {
    const pid = this.driver.status(vmId).pid;
    const hit = this.blockSizes.get(vmId);
    if (hit && hit.pid === pid) return hit.bytes;
    const entry = { pid, bytes: this.driver.guestMemoryBlockSizeBytes(vmId) };
    entry.bytes.catch(() => {
      if (this.blockSizes.get(vmId) === entry) this.blockSizes.delete(vmId);
    });
    this.blockSizes.set(vmId, entry);
    return entry.bytes;
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

  private async start(run: Run): Promise<void> {
    const { ctx } = run;
    const topology = this.topology(ctx);
    run.steps.mark('compile-topology');
    run.steps.flush();
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
    run.steps.mark('launch-qemu');
    run.steps.mark('wait-guest-agent');
    run.steps.flush();
    await this.store.setVmState(ctx.vm.uid, 'RUNNING');
    // Static groups are plugged now, after boot, so their nodes get their HMAT tier (see topology README).
    for (const g of ctx.groups.filter((x) => x.desiredState === 'PRESENT')) await this.converge(run, topology, g);
    const devices = await this.driver.queryMemoryDevices(ctx.vm.uid).catch(() => undefined);
    if (devices) run.end.devices = devices;
  }

  private async stop(run: Run): Promise<void> {
    const { ctx } = run;
    if (ctx.runtime) {
      await this.attach(ctx).catch(() => undefined);
      await this.driver.stop(ctx.vm.uid, { powerdownTimeoutMs: 5_000, quitTimeoutMs: 5_000 });
    }
    run.steps.mark('guest-shutdown');
    run.steps.mark('wait-qemu-exit');
    run.steps.flush();
    await this.store.setVmStopped(ctx.vm.uid, 'STOPPED');
  }

  // ---------------------------------------------------------------- memory groups

  private async group(run: Run): Promise<void> {
    const { ctx } = run;
    const g = ctx.groups.find((x) => x.uid === ctx.op.groupId);
    if (!g) return; // the group went away (cancelled plug): nothing left to do
    await this.attach(ctx);
    const topology = this.topology(ctx, g);
    await this.converge(run, topology, g);
  }

  /**
   * A virtio-mem device added to a running q35 guest needs a free hotplug-capable root port
   * declared at launch: the first spare port no present virtio-mem device sits on.
   */
  private async freeSparePort(vmId: string, topology: Topology, deviceId: string, devices: readonly MemoryDevice[]): Promise<string | undefined> {
    const spares = topology.pciePorts.filter((p) => p.purpose === 'spare').map((p) => p.id);
    if (spares.length === 0) return undefined;
    const used = new Map<string, string>();
    for (const d of devices.filter((x) => x.kind === 'virtio-mem' && x.id)) {
      const parent = await this.driver.qomGet<string>(vmId, `/machine/peripheral/${d.id}`, 'parent_bus').catch(() => '');
      const port = /\/machine\/peripheral\/([^/]+)\//.exec(parent)?.[1];
      if (port) used.set(d.id!, port);
    }
    // The group's own device keeps its port; otherwise the first one nobody sits on.
    return used.get(deviceId) ?? spares.find((p) => ![...used.values()].includes(p));
  }

  /** A virtio-mem group hotplugged on q35 has no port of its own: it takes a spare one, chosen when it is added. */
  private needsSparePort(topology: Topology, g: MemoryGroupRecord): boolean {
    const device = topology.memoryDevices.find((d) => d.groupId === g.name);
    return g.kind === 'DYNAMIC' && !device?.bus && topology.machine.type === 'q35';
  }

  private desired(topology: Topology, g: MemoryGroupRecord): DesiredGroupMemory {
    const ids = memoryDeviceIds(g.name);
    const device = topology.memoryDevices.find((d) => d.groupId === g.name);
    if (!device) throw new DomainError('INTERNAL', 'TOPOLOGY_INTERNAL', `the topology has no device for group ${g.name}`);
    // The port is chosen at device_add (apply); until then the first spare stands in for it.
    const placeholder = this.needsSparePort(topology, g) ? topology.pciePorts.find((p) => p.purpose === 'spare')?.id : undefined;
    const [objectAdd, deviceAdd] = memoryDeviceHotplugCommands(topology, g.name, device.bus ?? placeholder, this.binding(topology));
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

  /** A full observation of the VM's memory, for the reconciler. */
  async observe(vmId: string): Promise<ObservedVmMemory> {
    return (await RunObservation.observe(this.driver, vmId, this.blockSize(vmId))).view();
  }

  /**
   * Drives one group to its desired state. Observes once, then takes one step at a time and
   * learns from each step's answer; while it waits for QEMU or the guest it re-reads that.
   */
  private async converge(run: Run, topology: Topology, g: MemoryGroupRecord): Promise<void> {
    const { ctx } = run;
    const vmId = ctx.vm.uid;
    const desired = this.desired(topology, g);
    const deadline = Date.now() + this.config.convergeTimeoutMs;
    const offlined: number[] = [];
    let lastWait = '';
    let cancelCheckAt = Date.now() + CANCEL_CHECK_MS;
    // A virtio-mem shrink's progress: the plugged size last seen and since when.
    let shrink: { bytes: number; sinceMs: number } | undefined;
    // QEMU or the agent answering an observation with an error of their own is as terminal as a failed step.
    const observing = async <T>(read: () => Promise<T>): Promise<T> => {
      try {
        return await read();
      } catch (e) {
        if (!isTransient(e)) await this.compensate(run, g, desired, offlined, 'failed');
        throw e;
      }
    };
    const early = run.early;
    run.early = undefined;
    const seen = (await early) ?? (await observing(() => RunObservation.observe(this.driver, vmId, this.blockSize(vmId))));
    for (;;) {
      if (run.steps.cancelRequested) {
        await this.compensate(run, g, desired, offlined, 'cancelled');
        throw new Cancelled(`cancelled while ${lastWait || 'running'}`);
      }
      let step = nextHotplugStep(desired, seen.view());
      // Waiting for QEMU (virtio-mem converging) needs no guest blocks; any other decision
      // does, and takes them fresh when QEMU showed a change.
      if (seen.blocksStale && !(step.kind === 'wait' && step.on === 'qemu')) {
        await observing(() => seen.refreshBlocks());
        step = nextHotplugStep(desired, seen.view());
      }
      if (step.kind === 'done') {
        await this.finishGroup(run, g, desired, step, seen);
        return;
      }
      // The last step needs no write of its own: the end state carries it.
      run.steps.flush();
      if (step.kind === 'wait') {
        lastWait = step.reason;
        const device = seen.view().devices.find((d) => d.id === desired.deviceId);
        const target = desired.present ? (desired.requestedBytes ?? 0) : 0;
        if (device?.model === 'virtio-mem-pci' && device.sizeBytes > target) {
          if (shrink?.bytes !== device.sizeBytes) shrink = { bytes: device.sizeBytes, sinceMs: Date.now() };
          const stallMs = this.config.shrinkStallMs ?? 10_000;
          if (Date.now() - shrink.sinceMs > stallMs) return this.timedOut(run, g, desired, seen.view(), `the guest gave nothing back for ${stallMs} ms`, offlined);
        } else shrink = undefined;
        if (Date.now() > deadline) return this.timedOut(run, g, desired, seen.view(), `${step.reason} after ${this.config.convergeTimeoutMs} ms`, offlined);
        await sleep(this.pollMs);
        if (Date.now() >= cancelCheckAt) {
          cancelCheckAt = Date.now() + CANCEL_CHECK_MS;
          await run.checkCancel();
        }
        await observing(() => seen.refresh(step.on));
        continue;
      }
      // device_del is an unplug's point of no return: a cancel asked for until now still counts.
      if (step.kind === 'device-del') await run.checkCancel();
      if (run.steps.cancelRequested) {
        await this.compensate(run, g, desired, offlined, 'cancelled');
        throw new Cancelled(`cancelled before ${stepName(step)}`);
      }
      let responses: GuestMemoryBlockResponse[] | undefined;
      try {
        if (!desired.present && desired.kind === 'DYNAMIC') await this.assertVirtioMemUnplug(vmId, g);
        responses = await this.apply(vmId, topology, g, desired, step, offlined, seen);
      } catch (e) {
        if (isTransient(e)) throw e;
        await this.compensate(run, g, desired, offlined, 'failed');
        throw e;
      }
      const reread = seen.applied(step, responses);
      run.steps.mark(stepName(step));
      if (reread.rereadDevices) await observing(() => seen.refreshDevices());
      if (reread.rereadBlocks) seen.blocksStale = true;
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

  /** Takes one step; for a step on guest memory blocks, the guest's per-block answers. */
  private async apply(
    vmId: string,
    topology: Topology,
    g: MemoryGroupRecord,
    desired: DesiredGroupMemory,
    step: Exclude<HotplugStep, { kind: 'done' } | { kind: 'wait' }>,
    offlined: number[],
    seen: RunObservation,
  ): Promise<GuestMemoryBlockResponse[] | undefined> {
    switch (step.kind) {
      case 'object-add': {
        const { 'qom-type': type, id, ...props } = step.command.arguments as { 'qom-type': string; id: string };
        await this.driver.objectAdd(vmId, type, id, props);
        return undefined;
      }
      case 'device-add': {
        const { driver, id, ...props } = step.command.arguments as { driver: string; id: string; bus?: string };
        if (this.needsSparePort(topology, g)) {
          const bus = await this.freeSparePort(vmId, topology, id, seen.devices);
          if (!bus)
            throw DomainError.precondition(
              'HOTPLUG_PORT_REQUIRED',
              `virtio-mem group ${g.name} on q35 needs a spare pcie-root-port as bus ("Bus 'pcie.0' does not support hotplugging"); every spare port is taken`,
              { groupId: g.name },
            );
          props.bus = bus;
        }
        await this.driver.deviceAdd(vmId, driver, id, props);
        return undefined;
      }
      case 'set-requested-size':
        await this.driver.qomSet(vmId, `/machine/peripheral/${step.deviceId}`, 'requested-size', step.bytes);
        return undefined;
      case 'online-blocks': {
        // The device's blocks already online whose zone this run has not seen go along: a
        // zone-exact online leaves an online block as it is and reports its zone, so the end
        // of the run needs no second trip into the guest to read it.
        const unknownZones =
          step.zone === 'online' ? [] : seen.blocksOfDevice(desired.deviceId).filter((b) => b.online && !b.zone && !step.indexes.includes(b.index)).map((b) => b.index);
        const all = await this.driver.onlineGuestMemoryBlocks(vmId, [...step.indexes, ...unknownZones], step.zone);
        const res = all.slice(0, step.indexes.length);
        // A block that vanished meanwhile (ENODEV, or not-found) was being removed by the
        // guest: the next observation tells what is left to do.
        const bad = res.filter((r) => r.response !== 'success' && r.response !== 'not-found' && r.errorCode !== 19 && !/No such device/.test(r.message ?? ''));
        if (bad.length)
          throw DomainError.precondition(
            'GUEST_ONLINE_FAILED',
            `the guest could not online memory block(s) ${bad.map((b) => `${b.physIndex} (${b.message ?? b.response})`).join(', ')} as ${step.zone}`,
          );
        return all;
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
        return res;
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
        if (first === 'deleted') return undefined;
        if (first !== 'no-ost') {
          const status = (first.data as { info: { status: number } }).info.status;
          throw DomainError.precondition('GUEST_EJECT_REFUSED', `the guest refused to eject ${step.deviceId} (ACPI _OST status 0x${status.toString(16)})`);
        }
        await deleted;
        return undefined;
      }
      case 'object-del':
        await this.driver.objectDel(vmId, step.backendId);
        return undefined;
    }
  }

  /**
   * The group converged. An unplug ends with its capacity released; a plug or resize records
   * the group's plugged size, online blocks and their zones with the operation's end. Zones
   * the guest reported when this run onlined a block are known; the rest are read.
   */
  private async finishGroup(run: Run, g: MemoryGroupRecord, desired: DesiredGroupMemory, step: Extract<HotplugStep, { kind: 'done' }>, seen: RunObservation): Promise<void> {
    const { ctx } = run;
    const vmId = ctx.vm.uid;
    if (!desired.present) {
      await run.steps.settle();
      await this.store.completeUnplug(ctx.vm, g, ctx.op.name, seen.devices, run.steps.current().steps);
      run.ended = true;
      return;
    }
    const unknown = step.onlineBlocks.filter((i) => !seen.blocks.get(i)?.zone);
    const read = new Map((unknown.length ? await this.driver.guestMemoryBlockZones(vmId, unknown) : []).map((z) => [z.physIndex, z]));
    const blocks = step.onlineBlocks.map((index) => {
      const z = read.get(index);
      if (z) return { index, online: z.online, ...(z.zone ? { zone: z.zone } : {}) };
      return { index, online: true, zone: seen.blocks.get(index)!.zone! };
    });
    const counts: Record<string, number> = {};
    for (const b of blocks) if (b.online && b.zone) counts[b.zone] = (counts[b.zone] ?? 0) + 1;
    const observation = { state: 'PLUGGED' as const, pluggedBytes: step.pluggedBytes, onlineBlocks: step.onlineBlocks.length, zones: counts };
    if (ctx.op.kind === 'START') await this.store.setGroupObserved(g.uid, observation);
    else {
      run.end.group = { id: g.uid, observation };
      run.end.devices = seen.devices;
    }
    // A completed shrink gives back the capacity it no longer needs.
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
    run: Run,
    g: MemoryGroupRecord,
    desired: DesiredGroupMemory,
    observed: ObservedVmMemory,
    reason: string,
    offlined: number[],
  ): Promise<never> {
    const { ctx } = run;
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
    await this.compensate(run, g, desired, offlined, 'failed');
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
    if (!desired.present) await this.store.restorePresent(ctx.vm, g.uid);
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
   * plugged) and the group is PRESENT again. Observes afresh: a failure is no time to trust
   * what the run believed.
   */
  private async compensate(run: Run, g: MemoryGroupRecord, desired: DesiredGroupMemory, offlined: number[], why: 'failed' | 'cancelled'): Promise<void> {
    const { ctx } = run;
    const vmId = ctx.vm.uid;
    try {
      if (desired.present && ctx.op.kind === 'PLUG') {
        const observed = await this.observe(vmId);
        if (observed.devices.some((d) => d.id === desired.deviceId)) await this.driver.deviceDel(vmId, desired.deviceId, { waitForDeleted: true, deletedTimeoutMs: this.config.deviceDelTimeoutMs }).catch(() => undefined);
        if ((await this.observe(vmId)).backendIds.includes(desired.backendId)) await this.driver.objectDel(vmId, desired.backendId).catch(() => undefined);
        if (why === 'cancelled') await this.store.dropGroup(ctx.vm, g);
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
        await this.store.restorePresent(ctx.vm, g.uid);
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
