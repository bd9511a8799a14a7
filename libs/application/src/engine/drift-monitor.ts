import { join } from 'node:path';
import {
  blocksOf,
  expectedZone,
  groupExpectedInQemu,
  isDomainError,
  memoryDeviceIds,
  memoryDrift,
  sameDrift,
  type DriftGroup,
  type DriftObservation,
  type MemoryDrift,
  type MemoryDriftCondition,
  type ObservedVmMemory,
} from '#domain';
import type { HypervisorDriver, MemoryDevice } from '#hypervisor';
import { MemoryGroupRepository, VmDriftRepository, VmRepository } from '#persistence';
import type { EngineStore } from './engine-store';

export interface DriftMonitorOptions {
  /** The engine's own observation of a VM's memory (OperationExecutor.observe), so both see alike. */
  observe(vmId: string): Promise<ObservedVmMemory>;
  /**
   * Holds the VM against operations (the engine's per-VM lock) while it is checked; resolves
   * undefined when an operation holds it. The returned function lets go.
   */
  lockVm(vmId: string): Promise<(() => Promise<void>) | undefined>;
  /** VMs checked at once. */
  concurrency?: number;
  /** A VM checked (by any worker) this recently is left for the next pass. Default 0. */
  recheckAfterMs?: number;
  /** A VM whose last operation ended this recently is left for a later pass. Default 0. */
  quietAfterMs?: number;
  log?: (line: string) => void;
}

/** The VM's operation lock is taken: an operation (or another worker's check) runs on it. */
export const DRIFT_VM_LOCKED = 'the VM is locked by an operation or another check';

export type DriftCheckOutcome =
  | { vmId: string; recorded: MemoryDrift }
  /** Nothing recorded: an operation holds or was recorded for the VM, it stopped, or it could not be observed. */
  | { vmId: string; skipped: string };

/**
 * The sweeper's drift check: for every RUNNING VM that no operation is changing, observe its
 * memory through the driver port (the engine's observation, the guest's zones of the blocks
 * that must be in one, and QEMU's full device list), compare it with the desired state
 * (`memoryDrift`, libs/domain) and record the result on the VM (output only), logging what
 * changed.
 *
 * It only reports. Repairing is an Operation's job, asked for by a caller: an automatic one
 * would have no principal or request, could fight an operator who changed QEMU on purpose or
 * a guest that offlined memory itself, and would retry forever where the guest refuses.
 * Capacity is untouched: a group keeps its ledger extents whatever was observed, and a
 * device nobody asked for is reported, never adopted into the ledger.
 */
export class DriftMonitor {
  private readonly drift = new VmDriftRepository();
  private readonly vms = new VmRepository();
  private readonly groups = new MemoryGroupRepository();
  private running: Promise<unknown> | undefined;
  /** Why each VM was last left unchecked, to log a reason once rather than every pass. */
  private readonly unchecked = new Map<string, string>();
  private stopped = false;

  constructor(
    private readonly store: EngineStore,
    private readonly driver: HypervisorDriver,
    private readonly options: DriftMonitorOptions,
  ) {}

  private log(line: string): void {
    this.options.log?.(line);
  }

  /** One pass over every idle running VM (and forgets the drift of VMs that stopped). */
  checkAll(): Promise<DriftCheckOutcome[]> {
    const run = this.pass();
    this.running = run.catch(() => undefined);
    return run;
  }

  /** Waits for a pass under way; no new VM is checked after this. */
  async stop(): Promise<void> {
    this.stopped = true;
    await this.running;
  }

  private async pass(): Promise<DriftCheckOutcome[]> {
    const sql = this.store.db.sql;
    await this.drift.clearNotRunning(sql);
    const queue = await this.drift.idleRunningVms(sql, { limit: 1000, checkedWithinMs: this.options.recheckAfterMs ?? 0, quietForMs: this.options.quietAfterMs ?? 0 });
    const out: DriftCheckOutcome[] = [];
    const worker = async () => {
      for (let vm = queue.shift(); vm && !this.stopped; vm = queue.shift()) {
        out.push(await this.checkVm(vm.uid).catch((e: unknown) => ({ vmId: vm!.uid, skipped: `check failed: ${(e as Error).message}` })));
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, this.options.concurrency ?? 4) }, worker));
    return out;
  }

  /** Checks one VM now (when it runs and no operation holds it) and records the result. */
  async checkVm(vmId: string): Promise<DriftCheckOutcome> {
    const unlock = await this.options.lockVm(vmId);
    if (!unlock) return { vmId, skipped: DRIFT_VM_LOCKED };
    try {
      const sql = this.store.db.sql;
      const vm = await this.vms.getById(sql, vmId);
      if (vm.state !== 'RUNNING') return { vmId, skipped: `the VM is ${vm.state}` };
      if (await this.store.headOperation(vmId)) return { vmId, skipped: 'an operation is pending' };
      const groups = await this.groups.listForVm(sql, vmId);
      const observedAt = new Date();
      const seen = await this.observe(vmId, groups);
      if ('skipped' in seen) {
        if (this.unchecked.get(vmId) !== seen.skipped) this.log(`drift: vm ${vm.name} not checked: ${seen.skipped}`);
        this.unchecked.set(vmId, seen.skipped);
        return { vmId, skipped: seen.skipped };
      }
      this.unchecked.delete(vmId);
      const conditions = seen.observation ? memoryDrift(groups, seen.observation) : seen.conditions;
      const checkTime = await this.drift.record(sql, vmId, conditions, seen.devices ?? vm.observedMemoryDevices ?? [], observedAt);
      if (!checkTime) return { vmId, skipped: 'an operation was recorded during the check' };
      this.report(vm.name, vm.memoryDrift?.conditions, conditions);
      return { vmId, recorded: { state: conditions.length ? 'DRIFTED' : 'IN_SYNC', conditions, checkTime } };
    } finally {
      await unlock();
    }
  }

  /** Logs a new finding, a changed one, or the return to sync; a finding seen again stays quiet. */
  private report(vm: string, before: readonly MemoryDriftCondition[] | undefined, now: readonly MemoryDriftCondition[]): void {
    if (before && sameDrift(before, now)) return;
    if (now.length === 0) {
      if (before?.length) this.log(`drift: vm ${vm} is back in sync`);
      return;
    }
    this.log(`drift: vm ${vm}: ${now.length} difference(s) between desired and observed memory`);
    for (const c of now) this.log(`drift: vm ${vm}: ${c.reason}${c.memoryGroup ? ` group ${c.memoryGroup}` : ''}: ${c.message}`);
  }

  /**
   * What QEMU and the guest show. A VM this worker is not connected to is attached to for the
   * check and let go afterwards (QEMU serves one client per socket: an operation in another
   * worker must be able to take it). A QEMU that is gone is a finding of its own.
   */
  private async observe(
    vmId: string,
    groups: readonly DriftGroup[],
  ): Promise<{ observation: DriftObservation; devices: MemoryDevice[] } | { observation?: undefined; conditions: MemoryDriftCondition[]; devices?: undefined } | { skipped: string }> {
    let attachedHere = false;
    if (!this.driver.status(vmId).running) {
      const runtime = await this.store.runtime(vmId);
      if (!runtime) return { skipped: 'no QEMU on record' };
      try {
        await this.driver.attach(vmId, {
          paths: { qmpSocket: runtime.qmpSocketPath, qgaSocket: runtime.qgaSocketPath, logFile: join(runtime.runtimeDir, 'qemu.log'), pidFile: join(runtime.runtimeDir, 'qemu.pid') },
          pid: runtime.pid,
        });
        attachedHere = true;
      } catch (e) {
        if (isDomainError(e) && e.reason === 'QEMU_NOT_RUNNING') {
          return { conditions: [{ reason: 'QEMU_NOT_RUNNING', message: `the VM is RUNNING, but its QEMU (pid ${runtime.pid}) is gone: ${e.message}` }] };
        }
        return { skipped: `cannot attach to its QEMU: ${(e as Error).message}` };
      }
    }
    try {
      const [observed, devices] = await Promise.all([this.options.observe(vmId), this.driver.queryMemoryDevices(vmId)]);
      const observation: DriftObservation = {
        ...observed,
        unmodelledDevices: devices.filter((d) => d.kind === 'other' || !d.id).map((d) => ({ type: d.kind === 'other' ? d.type : d.kind, ...(d.id ? { id: d.id } : {}) })),
      };
      await this.readZones(vmId, groups, observation);
      return { observation, devices };
    } catch (e) {
      return { skipped: `observing failed: ${(e as Error).message}` };
    } finally {
      if (attachedHere) await this.driver.release(vmId).catch(() => undefined);
    }
  }

  /** The zones of the online blocks of devices whose group asks for one (one guest-exec). */
  private async readZones(vmId: string, groups: readonly DriftGroup[], observation: DriftObservation): Promise<void> {
    const indexes = new Set<number>();
    for (const g of groups) {
      if (!groupExpectedInQemu(g) || expectedZone(g.onlineType) === undefined) continue;
      const ids = memoryDeviceIds(g.name);
      const device = observation.devices.find((d) => d.id === (g.kind === 'STATIC' ? ids.dimmId : ids.virtioMemId));
      if (device) for (const b of blocksOf(device, observation)) if (b.online) indexes.add(b.index);
    }
    if (indexes.size === 0) return;
    const zones = new Map((await this.driver.guestMemoryBlockZones(vmId, [...indexes])).map((z) => [z.physIndex, z]));
    observation.blocks = observation.blocks.map((b) => {
      const z = zones.get(b.index);
      if (!z) return b;
      // Read separately from the block list: trust the later read for both state and zone.
      return z.online && z.zone ? { ...b, online: true, zone: z.zone } : { index: b.index, online: z.online };
    });
  }
}
