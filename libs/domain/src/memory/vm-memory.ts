/**
 * A VM's memory layout as a whole: its hotplug headroom fixed at launch
 * (`-m size,slots=,maxmem=`), its groups, and the guest-side consequences.
 */
import { DomainError, Violations, type FieldViolation } from '../errors';
import { formatBytes } from '../units';
import { GUEST_PAGE_BYTES, MAX_MEMORY_SLOTS } from './guest-arch';
import { predictOnlineZones, type OnlineZoneReport, type GuestNodeBootMemory } from './auto-movable';
import { collectGuestMemorySettings, type GuestMemoryOverrides, type GuestMemorySettings } from './guest-memory-profile';
import { collectMemoryGroup, type MemoryGroupPlan, type MemoryGroupSpec } from './memory-group';

export interface VmMemoryLayout {
  /** Guest kernel profile id, e.g. `linux-6.12`. */
  kernelProfileId: string;
  guestMemory?: GuestMemoryOverrides;
  /** Guest NUMA nodes and their boot RAM (CPU-less CXL nodes usually have 0). */
  nodes: GuestNodeBootMemory[];
  /** `-m slots=`: pc-dimm slots. virtio-mem devices do not take one. */
  memorySlots: number;
  /** `-m maxmem=`: boot RAM plus every memory device must fit. */
  maxMemoryBytes: number;
  /**
   * Guest-physical end of boot RAM (4 GiB + the part above the PCI hole), when
   * the machine layout is known: the guest's memory block size follows from it.
   */
  bootMemoryEndBytes?: number;
}

export type NamedMemoryGroup = MemoryGroupSpec & { id: string };

export interface VmMemoryPlan {
  readonly settings: GuestMemorySettings;
  readonly bootMemoryBytes: number;
  /** Boot RAM + every group's region (DIMM size / virtio-mem max). */
  readonly totalMemoryBytes: number;
  readonly staticGroupCount: number;
  readonly groups: readonly (MemoryGroupPlan & { readonly id: string })[];
  readonly onlineZones: OnlineZoneReport;
}

/** Adds the violations of the layout itself (INVALID_ARGUMENT material) to `v`. */
export function collectVmMemoryLayout(vm: VmMemoryLayout, v: Violations): GuestMemorySettings | undefined {
  const settings = collectGuestMemorySettings(vm.kernelProfileId, vm.guestMemory, v, '', vm.bootMemoryEndBytes);
  if (!Number.isSafeInteger(vm.memorySlots) || vm.memorySlots < 0 || vm.memorySlots > MAX_MEMORY_SLOTS) {
    // hw/i386/pc.c pc_memory_init: slots ≤ ACPI_MAX_RAM_SLOTS.
    v.add('memorySlots', `memorySlots ${String(vm.memorySlots)} must be an integer between 0 and ${MAX_MEMORY_SLOTS}`);
  }
  if (vm.nodes.length === 0) v.add('nodes', 'a VM needs at least one guest NUMA node');
  const seen = new Set<number>();
  let boot = 0;
  vm.nodes.forEach((n, i) => {
    if (!Number.isSafeInteger(n.nodeId) || n.nodeId < 0) {
      v.add(`nodes[${i}].nodeId`, `nodeId ${String(n.nodeId)} must be an integer ≥ 0`);
    } else if (seen.has(n.nodeId)) {
      v.add(`nodes[${i}].nodeId`, `nodeId ${n.nodeId} appears twice`);
    }
    seen.add(n.nodeId);
    if (!Number.isSafeInteger(n.bootMemoryBytes) || n.bootMemoryBytes < 0) {
      v.add(`nodes[${i}].bootMemoryBytes`, `bootMemoryBytes ${String(n.bootMemoryBytes)} must be an integer number of bytes ≥ 0`);
    } else {
      boot += n.bootMemoryBytes;
    }
  });
  const max = vm.maxMemoryBytes;
  if (!Number.isSafeInteger(max) || max <= 0) {
    v.add('maxMemoryBytes', `maxMemoryBytes ${String(max)} must be a positive integer number of bytes`);
  } else {
    // hw/i386/pc.c: "maxmem must be page-aligned".
    if (max % GUEST_PAGE_BYTES !== 0) v.add('maxMemoryBytes', `maxMemoryBytes ${max} B is not a multiple of the ${GUEST_PAGE_BYTES} B page`);
    // hw/core/machine.c machine_set_mem: maxmem ≥ ram, and slots need maxmem > ram.
    if (max < boot) {
      v.add('maxMemoryBytes', `maxMemoryBytes ${formatBytes(max)} is less than the boot memory ${formatBytes(boot)}`);
    } else if (max === boot && Number.isSafeInteger(vm.memorySlots) && vm.memorySlots > 0) {
      v.add('maxMemoryBytes', `maxMemoryBytes ${formatBytes(max)} equals the boot memory, leaving no room for the ${vm.memorySlots} memory slots`);
    }
  }
  return settings;
}

/**
 * Validates the layout and every group, then checks the headroom and predicts
 * online zones.
 * - INVALID_ARGUMENT / INVALID_VM_MEMORY_LAYOUT: a malformed layout or group
 *   (field names `memorySlots`, `memoryGroups[2].sizeBytes`, …).
 * - FAILED_PRECONDITION / VM_HOTPLUG_HEADROOM_EXCEEDED: valid groups that do not
 *   fit the slots or maxmem the VM was launched with (only a relaunch with more
 *   headroom fixes it); one violation per exceeded limit.
 */
export function planVmMemory(vm: VmMemoryLayout, groups: readonly NamedMemoryGroup[]): VmMemoryPlan {
  const v = new Violations();
  const settings = collectVmMemoryLayout(vm, v);
  const nodeIds = new Set(vm.nodes.map((n) => n.nodeId));
  const plans: (MemoryGroupPlan & { id: string })[] = [];
  const ids = new Set<string>();
  groups.forEach((g, i) => {
    const prefix = `memoryGroups[${i}].`;
    if (ids.has(g.id)) v.add(`${prefix}id`, `memory group id "${g.id}" appears twice`);
    ids.add(g.id);
    // QEMU: "'DIMM property node has value %u' which exceeds the number of numa nodes";
    // virtio-mem realize: node < number of NUMA nodes.
    if (Number.isSafeInteger(g.guestNodeId) && g.guestNodeId >= 0 && !nodeIds.has(g.guestNodeId)) {
      v.add(`${prefix}guestNodeId`, `guestNodeId ${g.guestNodeId} is not a guest NUMA node of this VM`);
    }
    if (!settings) return;
    const plan = collectMemoryGroup(g, settings, v, prefix);
    if (plan) plans.push({ ...plan, id: g.id });
  });
  v.throwIfAny('INVALID_VM_MEMORY_LAYOUT');
  if (!settings) throw new Error('unreachable: settings missing without violations');

  const headroom = headroomViolations(vm, plans);
  if (headroom.length > 0) {
    throw new DomainError(
      'FAILED_PRECONDITION',
      'VM_HOTPLUG_HEADROOM_EXCEEDED',
      headroom.map((h) => `${h.field}: ${h.description}`).join('; '),
      headroom,
    );
  }

  const bootMemoryBytes = vm.nodes.reduce((sum, n) => sum + n.bootMemoryBytes, 0);
  return {
    settings,
    bootMemoryBytes,
    totalMemoryBytes: bootMemoryBytes + plans.reduce((sum, p) => sum + p.regionBytes, 0),
    staticGroupCount: plans.filter((p) => p.kind === 'STATIC').length,
    groups: plans,
    onlineZones: predictOnlineZones(
      settings,
      vm.nodes,
      plans.map((p) => ({
        id: p.id,
        kind: p.kind,
        guestNodeId: p.guestNodeId,
        onlineType: p.onlineType,
        presentBytes: p.presentBytes,
        memoryGroupUnitBytes: p.guestUnit.memoryGroupUnitBytes,
      })),
    ),
  };
}

function headroomViolations(vm: VmMemoryLayout, plans: readonly MemoryGroupPlan[]): FieldViolation[] {
  const out: FieldViolation[] = [];
  const staticCount = plans.filter((p) => p.kind === 'STATIC').length;
  // Each pc-dimm takes one ACPI memory slot ("no free slots available", hw/mem/pc-dimm.c).
  if (staticCount > vm.memorySlots) {
    out.push({
      field: 'memorySlots',
      description: `${staticCount} static memory groups need ${staticCount} memory slots but the VM has ${vm.memorySlots}`,
    });
  }
  // Device memory region = maxmem − ram (hw/i386/pc.c); every pc-dimm and every
  // virtio-mem memdev (its max, not its requested size) is placed in it.
  const boot = vm.nodes.reduce((sum, n) => sum + n.bootMemoryBytes, 0);
  const groupsTotal = plans.reduce((sum, p) => sum + p.regionBytes, 0);
  if (boot + groupsTotal > vm.maxMemoryBytes) {
    out.push({
      field: 'maxMemoryBytes',
      description:
        `boot memory ${formatBytes(boot)} + memory groups ${formatBytes(groupsTotal)} = ${formatBytes(boot + groupsTotal)} ` +
        `exceeds maxMemoryBytes ${formatBytes(vm.maxMemoryBytes)}`,
    });
  }
  return out;
}
