/**
 * memmap_on_memory: whether the struct pages describing a hot-added memory
 * block live inside that block (so the group loses them) or in other kernel
 * memory. mm/memory_hotplug.c mhp_supports_memmap_on_memory() and
 * arch_supports_memmap_on_memory().
 */
import { alignUp } from '../units';
import {
  GUEST_PAGE_BYTES,
  GUEST_PAGEBLOCK_BYTES,
  GUEST_PMD_BYTES,
  GUEST_STRUCT_PAGE_BYTES,
} from './guest-arch';
import type { GuestMemorySettings } from './guest-memory-profile';

export type MemmapPlacement =
  /** Carved from the start of each memory block of the group. */
  | 'SELF_HOSTED'
  /** `memory_hotplug.memmap_on_memory` is off. */
  | 'DISABLED'
  /** virtio-mem never passes MHP_MEMMAP_ON_MEMORY (virtio_mem_add_memory). */
  | 'NOT_REQUESTED_BY_DRIVER'
  /** 6.1 requires the hot-added range to be exactly one memory block. */
  | 'RANGE_NOT_ONE_BLOCK'
  /** The vmemmap of one block fails the page / pageblock / whole-block / PMD checks. */
  | 'BLOCK_SIZE_UNSUITABLE';

export interface MemmapEffect {
  readonly placement: MemmapPlacement;
  /** vmemmap of one memory block: PFN_UP(pages_per_block · sizeof(struct page)) pages. */
  readonly vmemmapBytesPerBlock: number;
  /** vmemmap of all blocks the group makes present, wherever it is placed. */
  readonly vmemmapBytes: number;
  /** Bytes the guest's allocator gets: present bytes minus a self-hosted vmemmap. */
  readonly usableBytes: number;
}

/** Raw vmemmap size of one block, before any alignment (memory_block_memmap_size()). */
export function vmemmapBytesPerBlock(memoryBlockSizeBytes: number): number {
  const pagesPerBlock = memoryBlockSizeBytes / GUEST_PAGE_BYTES;
  return alignUp(pagesPerBlock * GUEST_STRUCT_PAGE_BYTES, GUEST_PAGE_BYTES);
}

/**
 * The per-block checks of mhp_supports_memmap_on_memory(). With a 64-byte
 * struct page every x86_64 block size (128 MiB … 2 GiB) passes: 128 MiB → 2 MiB,
 * 2 GiB → 32 MiB; the checks are kept so a different struct page size or block
 * size cannot silently produce a wrong figure.
 */
export function blockSupportsMemmapOnMemory(memoryBlockSizeBytes: number): boolean {
  const rawBytes = (memoryBlockSizeBytes / GUEST_PAGE_BYTES) * GUEST_STRUCT_PAGE_BYTES;
  const memmapBytes = alignUp(rawBytes, GUEST_PAGE_BYTES);
  return (
    rawBytes % GUEST_PAGE_BYTES === 0 && // vmemmap fully contained in whole pages
    memmapBytes % GUEST_PAGEBLOCK_BYTES === 0 && // start of the rest pageblock-aligned (migratetypes)
    memmapBytes !== memoryBlockSizeBytes && // "no effective hotplugged memory doesn't make sense"
    rawBytes % GUEST_PMD_BYTES === 0 // generic arch check: a whole PMD maps the vmemmap
  );
}

/**
 * Effect on a group that makes `presentBytes` present (a whole DIMM, or the
 * memory blocks virtio-mem has added) as a hotplug range of the given kind.
 */
export function memmapEffect(
  kind: 'STATIC' | 'DYNAMIC',
  presentBytes: number,
  settings: Pick<GuestMemorySettings, 'memoryBlockSizeBytes' | 'memmapOnMemory' | 'memmapOnMemoryPerBlock'>,
): MemmapEffect {
  const block = settings.memoryBlockSizeBytes;
  const perBlock = vmemmapBytesPerBlock(block);
  const blocks = Math.ceil(presentBytes / block);
  const placement = placementFor(kind, presentBytes, settings);
  const vmemmapBytes = blocks * perBlock;
  return {
    placement,
    vmemmapBytesPerBlock: perBlock,
    vmemmapBytes,
    usableBytes: placement === 'SELF_HOSTED' ? presentBytes - vmemmapBytes : presentBytes,
  };
}

function placementFor(
  kind: 'STATIC' | 'DYNAMIC',
  presentBytes: number,
  s: Pick<GuestMemorySettings, 'memoryBlockSizeBytes' | 'memmapOnMemory' | 'memmapOnMemoryPerBlock'>,
): MemmapPlacement {
  if (!s.memmapOnMemory) return 'DISABLED';
  // Only ACPI DIMMs ask for it (drivers/acpi/acpi_memhotplug.c acpi_memory_enable_device);
  // virtio_mem_add_memory passes MHP_MERGE_RESOURCE | MHP_NID_IS_MGID only.
  if (kind === 'DYNAMIC') return 'NOT_REQUESTED_BY_DRIVER';
  if (!s.memmapOnMemoryPerBlock && presentBytes !== s.memoryBlockSizeBytes) return 'RANGE_NOT_ONE_BLOCK';
  if (!blockSupportsMemmapOnMemory(s.memoryBlockSizeBytes)) return 'BLOCK_SIZE_UNSUITABLE';
  return 'SELF_HOSTED';
}
