/**
 * What the guest kernel does with hotplugged memory, per kernel profile, and
 * the per-VM overrides (kernel command-line parameters the VM's image sets).
 */
import { DomainError, Violations } from '../errors';
import { formatBytes, GiB, isPowerOfTwo, MiB } from '../units';
import { MAX_MEMORY_BLOCK_BYTES, MIN_MEMORY_BLOCK_BYTES } from './guest-arch';

export type GuestKernelProfileId = 'linux-6.1' | 'linux-6.12';

/** `memory_hotplug.online_policy` (mm/memory_hotplug.c, since 5.15). */
export type OnlinePolicy = 'CONTIG_ZONES' | 'AUTO_MOVABLE';

export interface GuestMemoryProfile {
  readonly id: GuestKernelProfileId;
  /** /sys/devices/system/memory/block_size_bytes. */
  readonly memoryBlockSizeBytes: number;
  /** Default of `memory_hotplug.memmap_on_memory`. */
  readonly memmapOnMemoryDefault: boolean;
  /**
   * true: the vmemmap is carved from every memory block of a hot-added range.
   * false: only from a range that is exactly one memory block.
   */
  readonly memmapOnMemoryPerBlock: boolean;
  readonly onlinePolicyDefault: OnlinePolicy;
  /** `memory_hotplug.auto_movable_ratio`, percent. */
  readonly autoMovableRatioPercent: number;
  /** `memory_hotplug.auto_movable_numa_aware`. */
  readonly autoMovableNumaAware: boolean;
}

/*
 * Both profiles:
 * - memory block 128 MiB: x86_64 probe_memory_block_size picks 128 MiB while the
 *   boot memory end is below 64 GiB (arch/x86/mm/init_64.c), and that is what the
 *   6.1 and 6.12 guests here report (block_size_bytes = 8000000). For VMs whose
 *   boot memory ends at 64 GiB or above, pass bootMemoryEndBytes and the size
 *   is derived (probeGuestMemoryBlockSizeBytes).
 * - memmap_on_memory off: the parameter defaults to N in both
 *   (6.1 `static bool memmap_on_memory`, 6.12 `memmap_mode = MEMMAP_ON_MEMORY_DISABLE`,
 *   mm/memory_hotplug.c) and Debian's cloud kernels do not set it.
 * - online_policy contig-zones, auto_movable_ratio 301, numa_aware true: the
 *   mm/memory_hotplug.c defaults, unchanged between the two.
 * They differ in memmap_on_memory granularity: 6.1's mhp_supports_memmap_on_memory()
 * requires `size == memory_block_size_bytes()`, so acpi_memhotplug.c only uses it
 * for a single-block DIMM; 6.8 ("mm/memory_hotplug: split memmap_on_memory requests
 * across memblocks", 6b8f0798b85a) carves it from each block of any range.
 */
const COMMON = {
  memoryBlockSizeBytes: 128 * MiB,
  memmapOnMemoryDefault: false,
  onlinePolicyDefault: 'CONTIG_ZONES',
  autoMovableRatioPercent: 301,
  autoMovableNumaAware: true,
} as const;

export const GUEST_MEMORY_PROFILES: Readonly<Record<GuestKernelProfileId, GuestMemoryProfile>> = {
  'linux-6.1': { id: 'linux-6.1', ...COMMON, memmapOnMemoryPerBlock: false },
  'linux-6.12': { id: 'linux-6.12', ...COMMON, memmapOnMemoryPerBlock: true },
};

export function isGuestKernelProfileId(id: string): id is GuestKernelProfileId {
  return Object.prototype.hasOwnProperty.call(GUEST_MEMORY_PROFILES, id);
}

/**
 * The block size an x86_64 6.1 / 6.12 guest picks from the end of its boot
 * memory (arch/x86/mm/init_64.c probe_memory_block_size, as a guest with
 * X86_FEATURE_HYPERVISOR): 128 MiB below 64 GiB, else the largest power of two
 * from 2 GiB down to 128 MiB that the end is aligned to. (6.13+ may also honour
 * a firmware advice; neither profile has that.)
 */
export function probeGuestMemoryBlockSizeBytes(bootMemoryEndBytes: number): number {
  if (bootMemoryEndBytes < 64 * GiB) return MIN_MEMORY_BLOCK_BYTES;
  let bz = MAX_MEMORY_BLOCK_BYTES;
  while (bz > MIN_MEMORY_BLOCK_BYTES && bootMemoryEndBytes % bz !== 0) bz /= 2;
  return bz;
}

/** Per-VM overrides; every field absent = the profile's value. */
export interface GuestMemoryOverrides {
  /**
   * What the guest will report: no kernel parameter sets the x86 block size, so
   * this only declares it (e.g. for a guest whose boot memory ends ≥ 64 GiB).
   */
  memoryBlockSizeBytes?: number;
  /** `memory_hotplug.memmap_on_memory=` on the guest kernel command line. */
  memmapOnMemory?: boolean;
  /** `memory_hotplug.online_policy=`. */
  onlinePolicy?: OnlinePolicy;
  /** `memory_hotplug.auto_movable_ratio=`. */
  autoMovableRatioPercent?: number;
  /** `memory_hotplug.auto_movable_numa_aware=`. */
  autoMovableNumaAware?: boolean;
  /** virtio_mem.force_bbm. */
  virtioMemForceBbm?: boolean;
  /** virtio_mem.bbm_block_size; 0 = unset. */
  virtioMemBbmBlockSizeBytes?: number;
}

/** The resolved guest behaviour every rule below reads. */
export interface GuestMemorySettings {
  readonly profileId: GuestKernelProfileId;
  readonly memoryBlockSizeBytes: number;
  readonly memmapOnMemory: boolean;
  readonly memmapOnMemoryPerBlock: boolean;
  readonly onlinePolicy: OnlinePolicy;
  readonly autoMovableRatioPercent: number;
  readonly autoMovableNumaAware: boolean;
  readonly virtioMemForceBbm: boolean;
  readonly virtioMemBbmBlockSizeBytes: number;
}

const ONLINE_POLICIES: readonly OnlinePolicy[] = ['CONTIG_ZONES', 'AUTO_MOVABLE'];

/**
 * Adds violations for a bad profile id or overrides to `v` (field names under
 * `prefix`), and returns the settings when they are usable. With
 * `bootMemoryEndBytes` (guest-physical end of boot RAM, above the PCI hole) the
 * memory block size is derived from it instead of the profile default.
 */
export function collectGuestMemorySettings(
  profileId: string,
  overrides: GuestMemoryOverrides | undefined,
  v: Violations,
  prefix = '',
  bootMemoryEndBytes?: number,
): GuestMemorySettings | undefined {
  if (!isGuestKernelProfileId(profileId)) {
    v.add(
      `${prefix}kernelProfileId`,
      `unknown guest kernel profile "${profileId}"; known: ${Object.keys(GUEST_MEMORY_PROFILES).join(', ')}`,
    );
    return undefined;
  }
  const p = GUEST_MEMORY_PROFILES[profileId];
  const o = overrides ?? {};
  const f = (name: string) => `${prefix}guestMemory.${name}`;
  const before = v.items.length;

  let probed: number | undefined;
  if (bootMemoryEndBytes !== undefined) {
    if (!Number.isSafeInteger(bootMemoryEndBytes) || bootMemoryEndBytes <= 0) {
      v.add(`${prefix}bootMemoryEndBytes`, `bootMemoryEndBytes ${String(bootMemoryEndBytes)} must be a positive integer number of bytes`);
    } else {
      probed = probeGuestMemoryBlockSizeBytes(bootMemoryEndBytes);
    }
  }

  if (o.memoryBlockSizeBytes !== undefined) {
    const b = o.memoryBlockSizeBytes;
    // memory_dev_init: a power of two no smaller than MIN_MEMORY_BLOCK_SIZE;
    // probe_memory_block_size never exceeds MAX_BLOCK_SIZE.
    if (!isPowerOfTwo(b) || b < MIN_MEMORY_BLOCK_BYTES || b > MAX_MEMORY_BLOCK_BYTES) {
      v.add(
        f('memoryBlockSizeBytes'),
        `memoryBlockSizeBytes ${describeBytes(b)} must be a power of two between ${formatBytes(MIN_MEMORY_BLOCK_BYTES)} and ${formatBytes(MAX_MEMORY_BLOCK_BYTES)}`,
      );
    } else if (probed !== undefined && b !== probed) {
      // No kernel parameter sets the x86 block size: the override can only state
      // what the guest will pick, so it must agree with the probe.
      v.add(
        f('memoryBlockSizeBytes'),
        `memoryBlockSizeBytes ${formatBytes(b)} disagrees with the ${formatBytes(probed)} the guest picks for boot memory ending at ${formatBytes(bootMemoryEndBytes ?? 0)}`,
      );
    }
  }
  if (o.onlinePolicy !== undefined && !ONLINE_POLICIES.includes(o.onlinePolicy)) {
    v.add(f('onlinePolicy'), `onlinePolicy "${String(o.onlinePolicy)}" must be one of ${ONLINE_POLICIES.join(', ')}`);
  }
  if (
    o.autoMovableRatioPercent !== undefined &&
    (!Number.isSafeInteger(o.autoMovableRatioPercent) || o.autoMovableRatioPercent < 0)
  ) {
    // The kernel parameter is an unsigned int; 0 means "always a kernel zone".
    v.add(f('autoMovableRatioPercent'), `autoMovableRatioPercent ${String(o.autoMovableRatioPercent)} must be an integer ≥ 0`);
  }
  const bbm = o.virtioMemBbmBlockSizeBytes;
  if (bbm !== undefined && bbm !== 0 && !isPowerOfTwo(bbm)) {
    // virtio_mem.c ignores a non-power-of-two bbm_block_size with a warning;
    // we refuse it so the planned unit matches what the guest uses.
    v.add(f('virtioMemBbmBlockSizeBytes'), `virtioMemBbmBlockSizeBytes ${describeBytes(bbm)} must be 0 or a power of two`);
  }
  if (v.items.length > before) return undefined;

  return {
    profileId: p.id,
    memoryBlockSizeBytes: o.memoryBlockSizeBytes ?? probed ?? p.memoryBlockSizeBytes,
    memmapOnMemory: o.memmapOnMemory ?? p.memmapOnMemoryDefault,
    memmapOnMemoryPerBlock: p.memmapOnMemoryPerBlock,
    onlinePolicy: o.onlinePolicy ?? p.onlinePolicyDefault,
    autoMovableRatioPercent: o.autoMovableRatioPercent ?? p.autoMovableRatioPercent,
    autoMovableNumaAware: o.autoMovableNumaAware ?? p.autoMovableNumaAware,
    virtioMemForceBbm: o.virtioMemForceBbm ?? false,
    virtioMemBbmBlockSizeBytes: bbm ?? 0,
  };
}

/** Throwing form: INVALID_ARGUMENT / INVALID_GUEST_MEMORY_SETTINGS. */
export function resolveGuestMemorySettings(
  profileId: string,
  overrides?: GuestMemoryOverrides,
  bootMemoryEndBytes?: number,
): GuestMemorySettings {
  const v = new Violations();
  const s = collectGuestMemorySettings(profileId, overrides, v, '', bootMemoryEndBytes);
  if (!s) throw DomainError.invalid('INVALID_GUEST_MEMORY_SETTINGS', [...v.items]);
  return s;
}

/** formatBytes for valid sizes, the raw value for garbage (NaN, fractions, negatives). */
export function describeBytes(n: unknown): string {
  return typeof n === 'number' && Number.isSafeInteger(n) && n > 0 ? formatBytes(n) : String(n);
}
