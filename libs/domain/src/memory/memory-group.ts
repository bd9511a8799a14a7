/**
 * Memory group rules (domain-spec §4–§6): a STATIC group is one QEMU pc-dimm
 * (one ACPI DIMM, one static kernel memory group); a DYNAMIC group is one
 * virtio-mem device (one dynamic kernel memory group).
 */
import { DomainError, Violations } from '../errors';
import { formatBytes, isMultipleOf, isPowerOfTwo } from '../units';
import { MIN_VIRTIO_MEM_BLOCK_BYTES, PC_DIMM_SIZE_ALIGN_BYTES } from './guest-arch';
import { describeBytes, type GuestMemorySettings } from './guest-memory-profile';
import { memmapEffect, type MemmapEffect } from './memmap-on-memory';
import { virtioMemGuestUnit } from './virtio-mem';

export type MemoryGroupKind = 'STATIC' | 'DYNAMIC';

/**
 * ONLINE_MOVABLE / ONLINE_KERNEL: the group's blocks are onlined with that
 * explicit type. AUTO: plain "online" (what QGA guest-set-memory-blocks and
 * auto_online_blocks=online write), so the guest's online_policy picks the zone.
 */
export type GroupOnlineType = 'ONLINE_MOVABLE' | 'ONLINE_KERNEL' | 'AUTO';
export const GROUP_ONLINE_TYPES: readonly GroupOnlineType[] = ['ONLINE_MOVABLE', 'ONLINE_KERNEL', 'AUTO'];

interface MemoryGroupCommon {
  /** Guest NUMA node the memory is added to (pc-dimm / virtio-mem `node`). */
  guestNodeId: number;
  onlineType: GroupOnlineType;
}

export interface StaticMemoryGroupSpec extends MemoryGroupCommon {
  kind: 'STATIC';
  /** Reserved, plugged and removed whole. */
  sizeBytes: number;
}

export interface DynamicMemoryGroupSpec extends MemoryGroupCommon {
  kind: 'DYNAMIC';
  /** virtio-mem memdev size: the most the group can ever plug. */
  maxSizeBytes: number;
  /** virtio-mem `block-size`. */
  blockSizeBytes: number;
  /** virtio-mem `requested-size`: the desired plugged size. */
  requestedBytes: number;
}

export type MemoryGroupSpec = StaticMemoryGroupSpec | DynamicMemoryGroupSpec;

/** How the guest kernel will handle the group. */
export interface GuestUnit {
  /** DIMM: one static memory group plugged whole. SBM/BBM: virtio-mem mode. */
  readonly mode: 'DIMM' | 'SBM' | 'BBM';
  /** Smallest amount the guest plugs or unplugs. */
  readonly unitBytes: number;
  /** Static group: max_pages (the whole DIMM). Dynamic group: unit_pages. */
  readonly memoryGroupUnitBytes: number;
}

export interface MemoryGroupPlan {
  readonly kind: MemoryGroupKind;
  readonly guestNodeId: number;
  readonly onlineType: GroupOnlineType;
  /** Bytes of guest-physical hotplug space the device occupies (DIMM size / virtio-mem max). */
  readonly regionBytes: number;
  /** Bytes the guest is asked to have plugged (DIMM size / requested-size). */
  readonly pluggedBytes: number;
  /** Bytes the guest makes present: plugged, rounded up to whole kernel memory-group units. */
  readonly presentBytes: number;
  readonly memoryBlockSizeBytes: number;
  readonly guestUnit: GuestUnit;
  readonly memmap: MemmapEffect;
  /**
   * Bytes the guest's page allocator gets once everything is plugged: a DIMM
   * minus a self-hosted vmemmap; for virtio-mem the plugged bytes (its vmemmap
   * never comes from its own blocks, and unplugged sub-blocks are not usable).
   */
  readonly usableBytes: number;
}

const isSafeBytes = (n: unknown): n is number => typeof n === 'number' && Number.isSafeInteger(n);

/**
 * Checks one group against the guest settings, adding every problem to `v`
 * (field names under `prefix`, e.g. `memoryGroups[2].`). Returns the plan when
 * the group is valid.
 */
export function collectMemoryGroup(
  spec: MemoryGroupSpec,
  settings: GuestMemorySettings,
  v: Violations,
  prefix = '',
): MemoryGroupPlan | undefined {
  const before = v.items.length;
  const f = (name: string) => `${prefix}${name}`;
  const mb = settings.memoryBlockSizeBytes;

  if (!Number.isSafeInteger(spec.guestNodeId) || spec.guestNodeId < 0) {
    v.add(f('guestNodeId'), `guestNodeId ${String(spec.guestNodeId)} must be an integer ≥ 0`);
  }
  if (!GROUP_ONLINE_TYPES.includes(spec.onlineType)) {
    v.add(f('onlineType'), `onlineType "${String(spec.onlineType)}" must be one of ${GROUP_ONLINE_TYPES.join(', ')}`);
  }

  if (spec.kind === 'STATIC') {
    const size = spec.sizeBytes;
    if (!isSafeBytes(size) || size <= 0) {
      v.add(f('sizeBytes'), `sizeBytes ${String(size)} must be a positive integer number of bytes`);
    } else {
      // QEMU: the pc-dimm backend must be a multiple of its page size (2 MiB THP).
      if (!isMultipleOf(size, PC_DIMM_SIZE_ALIGN_BYTES)) {
        v.add(f('sizeBytes'), `sizeBytes ${formatBytes(size)} is not a multiple of ${formatBytes(PC_DIMM_SIZE_ALIGN_BYTES)} (QEMU pc-dimm backend alignment)`);
      }
      // Linux: add_memory() ranges must be memory-block aligned (check_hotplug_memory_range).
      if (!isMultipleOf(size, mb)) {
        v.add(f('sizeBytes'), `sizeBytes ${formatBytes(size)} is not a multiple of the guest memory block size ${formatBytes(mb)}`);
      }
    }
    if (v.items.length > before) return undefined;
    const memmap = memmapEffect('STATIC', size, settings);
    return {
      kind: 'STATIC',
      guestNodeId: spec.guestNodeId,
      onlineType: spec.onlineType,
      regionBytes: size,
      pluggedBytes: size,
      presentBytes: size,
      memoryBlockSizeBytes: mb,
      guestUnit: { mode: 'DIMM', unitBytes: size, memoryGroupUnitBytes: size },
      memmap,
      usableBytes: memmap.usableBytes,
    };
  }

  if (spec.kind !== 'DYNAMIC') {
    v.add(f('kind'), `kind "${String((spec as { kind: unknown }).kind)}" must be STATIC or DYNAMIC`);
    return undefined;
  }

  const { maxSizeBytes: max, blockSizeBytes: block, requestedBytes: requested } = spec;
  // QEMU needs a power of two (virtio-mem.c); below 2 MiB the guest still works
  // in 2 MiB sub-blocks (sb_size = max(block, pageblock)), so a smaller block buys nothing.
  const blockOk = isPowerOfTwo(block) && block >= MIN_VIRTIO_MEM_BLOCK_BYTES;
  if (!blockOk) {
    v.add(
      f('blockSizeBytes'),
      `blockSizeBytes ${describeBytes(block)} must be a power of two of at least ${formatBytes(MIN_VIRTIO_MEM_BLOCK_BYTES)}`,
    );
  }
  const maxOk = isSafeBytes(max) && max > 0;
  if (!maxOk) {
    v.add(f('maxSizeBytes'), `maxSizeBytes ${String(max)} must be a positive integer number of bytes`);
  } else {
    // QEMU realize: the memdev size must be a multiple of block-size.
    if (blockOk && !isMultipleOf(max, block)) {
      v.add(f('maxSizeBytes'), `maxSizeBytes ${formatBytes(max)} is not a multiple of blockSizeBytes ${formatBytes(block)}`);
    }
    // Linux: only block-aligned ranges can be hot-added; a ragged tail would never be usable.
    if (!isMultipleOf(max, mb)) {
      v.add(f('maxSizeBytes'), `maxSizeBytes ${formatBytes(max)} is not a multiple of the guest memory block size ${formatBytes(mb)}`);
    }
  }
  if (!isSafeBytes(requested) || requested < 0) {
    v.add(f('requestedBytes'), `requestedBytes ${String(requested)} must be an integer number of bytes ≥ 0`);
  } else {
    if (maxOk && requested > max) {
      v.add(f('requestedBytes'), `requestedBytes ${formatBytes(requested)} exceeds maxSizeBytes ${formatBytes(max)}`);
    }
    // QEMU: requested-size must be a multiple of block-size (realize and qom-set).
    if (blockOk && !isMultipleOf(requested, block)) {
      v.add(f('requestedBytes'), `requestedBytes ${describeBytes(requested)} is not a multiple of blockSizeBytes ${formatBytes(block)}`);
    }
  }
  if (v.items.length > before) return undefined;

  const unit = virtioMemGuestUnit(block, mb, {
    forceBbm: settings.virtioMemForceBbm,
    bbmBlockSizeBytes: settings.virtioMemBbmBlockSizeBytes,
  });
  // BBM plugs whole big blocks (floor(diff / bb_size)); with force_bbm or a raised
  // bbm_block_size the big block exceeds the device block, and a size between two
  // big blocks would never be reached (requested) or never be usable (max).
  if (unit.mode === 'BBM' && unit.unitBytes > block) {
    if (!isMultipleOf(max, unit.unitBytes)) {
      v.add(f('maxSizeBytes'), `maxSizeBytes ${formatBytes(max)} is not a multiple of the guest's Big Block Mode unit ${formatBytes(unit.unitBytes)}`);
    }
    if (!isMultipleOf(requested, unit.unitBytes)) {
      v.add(
        f('requestedBytes'),
        `requestedBytes ${describeBytes(requested)} is not a multiple of the guest's Big Block Mode unit ${formatBytes(unit.unitBytes)}`,
      );
    }
    if (v.items.length > before) return undefined;
  }
  // SBM adds whole memory blocks as soon as one sub-block of them is plugged.
  const presentBytes = Math.ceil(requested / unit.memoryGroupUnitBytes) * unit.memoryGroupUnitBytes;
  return {
    kind: 'DYNAMIC',
    guestNodeId: spec.guestNodeId,
    onlineType: spec.onlineType,
    regionBytes: max,
    pluggedBytes: requested,
    presentBytes,
    memoryBlockSizeBytes: mb,
    guestUnit: unit,
    memmap: memmapEffect('DYNAMIC', presentBytes, settings),
    usableBytes: requested,
  };
}

/** Throwing form: INVALID_ARGUMENT / INVALID_MEMORY_GROUP naming every violation. */
export function planMemoryGroup(spec: MemoryGroupSpec, settings: GuestMemorySettings): MemoryGroupPlan {
  const v = new Violations();
  const plan = collectMemoryGroup(spec, settings, v);
  if (!plan) throw DomainError.invalid('INVALID_MEMORY_GROUP', [...v.items]);
  return plan;
}
