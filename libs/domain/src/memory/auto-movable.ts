/**
 * Predicts the zone each group's memory lands in, and whether the VM's
 * MOVABLE : KERNEL_EARLY ratio exceeds auto_movable_ratio.
 *
 * Mirrors mm/memory_hotplug.c zone_for_pfn_range(), auto_movable_zone_for_pfn()
 * and auto_movable_can_online_movable() (domain-spec §4), fed with what the
 * control plane knows: the boot memory of each guest node (all of it counted as
 * early kernel pages: no CMA, kernelcore= or movablecore= in our guests) and the
 * groups, onlined in the order given (the order they are plugged).
 * All arithmetic is in 4 KiB pages, as in the kernel, so the integer divisions
 * round the same way and bytes × 301 never leaves the safe-integer range.
 */
import { formatBytes } from '../units';
import { GUEST_PAGE_BYTES } from './guest-arch';
import type { GuestMemorySettings } from './guest-memory-profile';
import type { GroupOnlineType, MemoryGroupKind } from './memory-group';

export interface GuestNodeBootMemory {
  readonly nodeId: number;
  /** Boot (cold-plugged) RAM of the node: `-numa node,memdev` size. */
  readonly bootMemoryBytes: number;
}

export interface OnlineGroup {
  readonly id: string;
  readonly kind: MemoryGroupKind;
  readonly guestNodeId: number;
  readonly onlineType: GroupOnlineType;
  /** Bytes the group makes present (MemoryGroupPlan.presentBytes). */
  readonly presentBytes: number;
  /** Kernel memory-group unit (MemoryGroupPlan.guestUnit.memoryGroupUnitBytes). */
  readonly memoryGroupUnitBytes: number;
}

export type AutoMovableSettings = Pick<
  GuestMemorySettings,
  'onlinePolicy' | 'autoMovableRatioPercent' | 'autoMovableNumaAware'
>;

export type PredictedZone = 'MOVABLE' | 'KERNEL' | 'MIXED' | 'NONE';

/** The numbers of one failed auto-movable check, after the dynamic-group adjustment. */
export interface AutoMovableRefusal {
  /** null = the global check, else the node check. */
  readonly nodeId: number | null;
  readonly movableBytes: number;
  readonly neededBytes: number;
  readonly kernelEarlyBytes: number;
  /** ratio · KERNEL_EARLY / 100: the most MOVABLE memory the check allows. */
  readonly limitBytes: number;
}

export interface GroupZonePrediction {
  readonly groupId: string;
  readonly guestNodeId: number;
  readonly zone: PredictedZone;
  readonly movableBytes: number;
  readonly kernelBytes: number;
  /** What decided: the explicit online type, online_policy contig-zones, or auto-movable. */
  readonly decidedBy: 'EXPLICIT' | 'CONTIG_ZONES' | 'AUTO_MOVABLE';
  /** The first auto-movable check that sent memory to a kernel zone. */
  readonly refusal?: AutoMovableRefusal;
}

export interface MovableRatio {
  /** null = whole VM. */
  readonly nodeId: number | null;
  readonly kernelEarlyBytes: number;
  readonly movableBytes: number;
  readonly limitBytes: number;
  /** floor(movable · 100 / kernel early); null when there is no early kernel memory. */
  readonly ratioPercent: number | null;
  readonly exceeds: boolean;
}

export interface MemoryWarning {
  readonly code: 'AUTO_MOVABLE_FALLS_BACK_TO_KERNEL' | 'AUTO_ONLINES_TO_KERNEL_ZONE' | 'MOVABLE_RATIO_EXCEEDED';
  readonly message: string;
  readonly groupId?: string;
  readonly guestNodeId?: number;
}

export interface OnlineZoneReport {
  readonly autoMovableRatioPercent: number;
  readonly groups: readonly GroupZonePrediction[];
  readonly global: MovableRatio;
  /** One per guest node with boot memory or groups, by node id. */
  readonly nodes: readonly MovableRatio[];
  readonly warnings: readonly MemoryWarning[];
}

interface GroupState {
  readonly g: OnlineGroup;
  movable: number; // present_movable_pages
  kernel: number; // present_kernel_pages
}

const pages = (bytes: number) => Math.floor(bytes / GUEST_PAGE_BYTES);
const bytes = (p: number) => p * GUEST_PAGE_BYTES;

export function predictOnlineZones(
  settings: AutoMovableSettings,
  nodes: readonly GuestNodeBootMemory[],
  groups: readonly OnlineGroup[],
): OnlineZoneReport {
  const ratio = settings.autoMovableRatioPercent;
  const bootPages = new Map<number, number>();
  for (const n of nodes) bootPages.set(n.nodeId, (bootPages.get(n.nodeId) ?? 0) + pages(n.bootMemoryBytes));
  const states: GroupState[] = [];

  /** auto_movable_can_online_movable(nid, group, nr_pages); nid null = NUMA_NO_NODE. */
  const check = (nid: number | null, cur: GroupState, nrPages: number): AutoMovableRefusal | undefined => {
    const inScope = (node: number) => nid === null || node === nid;
    let kernelEarly = 0;
    for (const [node, p] of bootPages) if (inScope(node)) kernelEarly += p;
    let movable = 0;
    for (const s of states) if (inScope(s.g.guestNodeId)) movable += s.movable;
    // walk_dynamic_memory_groups(nid, auto_movable_stats_account_group, group, …):
    // kernel memory inside a dynamic group lets that group carry more MOVABLE
    // memory, so every *other* dynamic group is replaced by the early kernel
    // memory it needs for its own movable part.
    let required = 0;
    let groupMovable = 0;
    for (const s of states) {
      if (s === cur || s.g.kind !== 'DYNAMIC' || !inScope(s.g.guestNodeId)) continue;
      const need = Math.floor((s.movable * 100) / ratio) - s.kernel;
      if (need > 0) required += need;
      groupMovable += s.movable;
    }
    const refuse = (ke: number, mv: number): AutoMovableRefusal => ({
      nodeId: nid,
      movableBytes: bytes(mv),
      neededBytes: bytes(nrPages),
      kernelEarlyBytes: bytes(ke),
      limitBytes: bytes(Math.floor((ratio * ke) / 100)),
    });
    if (kernelEarly <= required) return refuse(Math.max(0, kernelEarly - required), movable - groupMovable);
    kernelEarly -= required;
    movable -= groupMovable;
    if (cur.g.kind === 'DYNAMIC') kernelEarly += cur.kernel;
    return movable + nrPages <= Math.floor((ratio * kernelEarly) / 100) ? undefined : refuse(kernelEarly, movable);
  };

  /** auto_movable_zone_for_pfn() for `nrPages` that must go to one zone together. */
  const autoMovable = (s: GroupState, nrPages: number): AutoMovableRefusal | undefined => {
    if (ratio === 0) {
      return { nodeId: null, movableBytes: 0, neededBytes: bytes(nrPages), kernelEarlyBytes: 0, limitBytes: 0 };
    }
    return check(null, s, nrPages) ?? (settings.autoMovableNumaAware ? check(s.g.guestNodeId, s, nrPages) : undefined);
  };

  const predictions: GroupZonePrediction[] = [];
  const warnings: MemoryWarning[] = [];
  for (const g of groups) {
    const s: GroupState = { g, movable: 0, kernel: 0 };
    states.push(s);
    const present = pages(g.presentBytes);
    let decidedBy: GroupZonePrediction['decidedBy'] = 'EXPLICIT';
    let refusal: AutoMovableRefusal | undefined;
    if (g.onlineType === 'ONLINE_MOVABLE') {
      s.movable = present;
    } else if (g.onlineType === 'ONLINE_KERNEL') {
      s.kernel = present;
    } else if (settings.onlinePolicy === 'CONTIG_ZONES') {
      // default_zone_for_pfn(): a freshly added range spans no zone yet, so it
      // goes to the kernel zone (MOVABLE only with movable_node), and later
      // blocks of the same group inherit that zone.
      decidedBy = 'CONTIG_ZONES';
      s.kernel = present;
    } else {
      decidedBy = 'AUTO_MOVABLE';
      if (g.kind === 'STATIC') {
        // Static group: need = max_pages − present_movable; the first block's
        // answer holds for the whole DIMM (anything KERNEL → rest KERNEL).
        refusal = autoMovable(s, present);
        if (refusal) s.kernel = present;
        else s.movable = present;
      } else {
        // Dynamic group: each unit (one memory block in SBM, bb_size in BBM) is decided on its own.
        const unit = pages(g.memoryGroupUnitBytes);
        for (let done = 0; done < present; done += unit) {
          const step = Math.min(unit, present - done);
          const r = autoMovable(s, step);
          if (r) {
            refusal ??= r;
            s.kernel += step;
          } else {
            s.movable += step;
          }
        }
      }
    }
    const prediction: GroupZonePrediction = {
      groupId: g.id,
      guestNodeId: g.guestNodeId,
      zone: s.movable > 0 ? (s.kernel > 0 ? 'MIXED' : 'MOVABLE') : s.kernel > 0 ? 'KERNEL' : 'NONE',
      movableBytes: bytes(s.movable),
      kernelBytes: bytes(s.kernel),
      decidedBy,
      ...(refusal ? { refusal } : {}),
    };
    predictions.push(prediction);
    if (refusal) warnings.push(fallbackWarning(prediction, refusal, ratio));
    if (decidedBy === 'CONTIG_ZONES' && s.kernel > 0) {
      warnings.push({
        code: 'AUTO_ONLINES_TO_KERNEL_ZONE',
        groupId: g.id,
        guestNodeId: g.guestNodeId,
        message:
          `group ${g.id}: online type AUTO under online_policy contig-zones puts ${formatBytes(bytes(s.kernel))} ` +
          `in a kernel zone, which may not be unpluggable; use ONLINE_MOVABLE or online_policy auto-movable`,
      });
    }
  }

  const ratioFor = (nid: number | null): MovableRatio => {
    const inScope = (node: number) => nid === null || node === nid;
    let ke = 0;
    for (const [node, p] of bootPages) if (inScope(node)) ke += p;
    let mv = 0;
    for (const s of states) if (inScope(s.g.guestNodeId)) mv += s.movable;
    const limit = Math.floor((ratio * ke) / 100);
    return {
      nodeId: nid,
      kernelEarlyBytes: bytes(ke),
      movableBytes: bytes(mv),
      limitBytes: bytes(limit),
      ratioPercent: ke > 0 ? Math.floor((mv * 100) / ke) : null,
      exceeds: mv > limit,
    };
  };
  const global = ratioFor(null);
  const nodeIds = [...new Set([...bootPages.keys(), ...groups.map((g) => g.guestNodeId)])].sort((a, b) => a - b);
  const nodeRatios = nodeIds.map(ratioFor);
  // The global ratio bounds how much memory the kernel must describe and manage
  // from its own zones; per node it matters only when auto_movable_numa_aware
  // makes the kernel check it.
  for (const r of [global, ...(settings.autoMovableNumaAware ? nodeRatios : [])]) {
    if (r.exceeds) warnings.push(ratioWarning(r, ratio));
  }
  return { autoMovableRatioPercent: ratio, groups: predictions, global, nodes: nodeRatios, warnings };
}

function scopeName(nodeId: number | null): string {
  return nodeId === null ? 'the whole VM' : `guest node ${nodeId}`;
}

function fallbackWarning(p: GroupZonePrediction, r: AutoMovableRefusal, ratio: number): MemoryWarning {
  const why =
    ratio === 0
      ? 'auto_movable_ratio is 0'
      : `on ${scopeName(r.nodeId)} movable ${formatBytes(r.movableBytes)} + ${formatBytes(r.neededBytes)} would exceed ` +
        `${ratio} % of early kernel memory ${formatBytes(r.kernelEarlyBytes)} (limit ${formatBytes(r.limitBytes)})`;
  return {
    code: 'AUTO_MOVABLE_FALLS_BACK_TO_KERNEL',
    groupId: p.groupId,
    guestNodeId: p.guestNodeId,
    message: `group ${p.groupId}: auto-movable onlines ${formatBytes(p.kernelBytes)} to a kernel zone instead of ZONE_MOVABLE: ${why}`,
  };
}

function ratioWarning(r: MovableRatio, ratio: number): MemoryWarning {
  const pct = r.ratioPercent === null ? 'with no early kernel memory' : `is ${r.ratioPercent} % of early kernel memory ${formatBytes(r.kernelEarlyBytes)}`;
  return {
    code: 'MOVABLE_RATIO_EXCEEDED',
    ...(r.nodeId === null ? {} : { guestNodeId: r.nodeId }),
    message:
      `${scopeName(r.nodeId)}: movable memory ${formatBytes(r.movableBytes)} ${pct}, above auto_movable_ratio ${ratio} % ` +
      `(limit ${formatBytes(r.limitBytes)}); kernel allocations (memmap, page tables) may run short`,
  };
}
