/**
 * What the guest will make of a VM's memory groups: each group's guest-side
 * unit (DIMM, virtio-mem Sub Block / Big Block Mode), its usable bytes after a
 * self-hosted memmap, the zone it is predicted to online into, and the
 * movable-to-kernel ratio against auto_movable_ratio, with warnings.
 */
import {
  planMemoryGroup,
  planVmMemory,
  type GroupZonePrediction,
  type GuestMemorySettings,
  type GuestUnit,
  type MemmapPlacement,
  type MemoryWarning,
  type MovableRatio,
  type OnlinePolicy,
} from '../memory';
import { effectiveGuestNodes, groupSpecOf, type StoredMemoryGroup } from './memory-group-resource';
import { vmMemoryLayout, type VmSpec } from './vm';

export interface GroupMemoryReport {
  name: string;
  effectiveGuestNodeId: number;
  guestUnit: GuestUnit;
  /** Bytes the guest makes present (plugged, rounded up to whole kernel memory-group units). */
  presentBytes: number;
  usableBytes: number;
  memmapPlacement: MemmapPlacement;
  vmemmapBytes: number;
  zone: GroupZonePrediction['zone'];
  movableBytes: number;
  kernelBytes: number;
  decidedBy: GroupZonePrediction['decidedBy'];
}

export interface VmMemoryReport {
  kernelProfile: string;
  memoryBlockSizeBytes: number;
  memmapOnMemory: boolean;
  onlinePolicy: OnlinePolicy;
  autoMovableRatioPercent: number;
  bootMemoryBytes: number;
  /** Boot memory plus every group's region (DIMM size / virtio-mem max), against maxMemoryBytes. */
  totalMemoryBytes: number;
  maxMemoryBytes: number;
  staticGroupCount: number;
  memorySlots: number;
  hotpluggedDynamicGroupCount: number;
  sparePciePorts: number;
  /** Pool bytes the VM's groups hold. */
  heldBytes: number;
  /** Groups whose desired state is PRESENT, in plug order. */
  groups: GroupMemoryReport[];
  global: MovableRatio;
  nodes: MovableRatio[];
  warnings: MemoryWarning[];
}

/** Per-group guest facts that need only the guest settings. */
export function groupGuestFacts(g: StoredMemoryGroup, guestNodeId: number, settings: GuestMemorySettings) {
  const plan = planMemoryGroup(groupSpecOf(g, guestNodeId), settings);
  return { guestUnit: plan.guestUnit, usableBytes: plan.usableBytes, presentBytes: plan.presentBytes, memmapPlacement: plan.memmap.placement, vmemmapBytes: plan.memmap.vmemmapBytes };
}

/**
 * Slots and maxmem (FAILED_PRECONDITION / VM_HOTPLUG_HEADROOM_EXCEEDED naming
 * both numbers): every group counts, also one being unplugged, until it is gone.
 */
export function checkVmHeadroom(vm: VmSpec, groups: readonly StoredMemoryGroup[]): void {
  const nodeOf = effectiveGuestNodes(vm.guestNodes.length, groups);
  planVmMemory(
    vmMemoryLayout(vm, [...nodeOf.values()]),
    groups.map((g) => ({ ...groupSpecOf(g, nodeOf.get(g.uid) ?? 0), id: g.uid })),
  );
}

/**
 * `groups` in plug order (creation order). Every group counts against the
 * headroom; only PRESENT ones are onlined in the prediction.
 */
export function buildVmMemoryReport(vm: VmSpec, groups: readonly StoredMemoryGroup[]): VmMemoryReport {
  const nodeOf = effectiveGuestNodes(vm.guestNodes.length, groups);
  const present = groups.filter((g) => g.desiredState === 'PRESENT');
  const all = planVmMemory(
    vmMemoryLayout(vm, [...nodeOf.values()]),
    groups.map((g) => ({ ...groupSpecOf(g, nodeOf.get(g.uid) ?? 0), id: g.uid })),
  );
  const plan = planVmMemory(
    vmMemoryLayout(vm, [...nodeOf.values()]),
    present.map((g) => ({ ...groupSpecOf(g, nodeOf.get(g.uid) ?? 0), id: g.uid })),
  );
  const zoneOf = new Map(plan.onlineZones.groups.map((z) => [z.groupId, z]));
  const byUid = new Map(groups.map((g) => [g.uid, g]));
  const nameOf = (uid: string | undefined) => (uid ? (byUid.get(uid)?.name ?? uid) : uid);
  return {
    kernelProfile: vm.kernelProfile,
    memoryBlockSizeBytes: plan.settings.memoryBlockSizeBytes,
    memmapOnMemory: plan.settings.memmapOnMemory,
    onlinePolicy: plan.settings.onlinePolicy,
    autoMovableRatioPercent: plan.settings.autoMovableRatioPercent,
    bootMemoryBytes: all.bootMemoryBytes,
    totalMemoryBytes: all.totalMemoryBytes,
    maxMemoryBytes: vm.maxMemoryBytes,
    staticGroupCount: all.staticGroupCount,
    memorySlots: vm.memorySlots,
    hotpluggedDynamicGroupCount: groups.filter((g) => g.hotplugged && g.kind === 'DYNAMIC').length,
    sparePciePorts: vm.sparePciePorts,
    heldBytes: groups.reduce((s, g) => s + g.heldBytes, 0),
    groups: plan.groups.map((p) => {
      const z = zoneOf.get(p.id);
      return {
        name: nameOf(p.id) ?? p.id,
        effectiveGuestNodeId: p.guestNodeId,
        guestUnit: p.guestUnit,
        presentBytes: p.presentBytes,
        usableBytes: p.usableBytes,
        memmapPlacement: p.memmap.placement,
        vmemmapBytes: p.memmap.vmemmapBytes,
        zone: z?.zone ?? 'NONE',
        movableBytes: z?.movableBytes ?? 0,
        kernelBytes: z?.kernelBytes ?? 0,
        decidedBy: z?.decidedBy ?? 'EXPLICIT',
      };
    }),
    global: plan.onlineZones.global,
    nodes: [...plan.onlineZones.nodes],
    // Warnings name groups by their resource name, not their uid.
    warnings: plan.onlineZones.warnings.map((w) => ({
      ...w,
      ...(w.groupId ? { groupId: nameOf(w.groupId) ?? w.groupId, message: w.message.replace(w.groupId, nameOf(w.groupId) ?? w.groupId) } : {}),
    })),
  };
}
