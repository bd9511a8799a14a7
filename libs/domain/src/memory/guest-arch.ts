/**
 * x86_64 guest constants the memory rules depend on. Guests are x86_64 only
 * (QEMU `pc`/`q35`); another architecture would need its own table.
 */
import { GiB, MiB } from '../units';

/** PAGE_SIZE (arch/x86/include/asm/page_types.h). */
export const GUEST_PAGE_BYTES = 4096;

/** pageblock_order = HPAGE_PMD_ORDER = 9 → 512 pages (include/linux/pageblock-flags.h). */
export const GUEST_PAGEBLOCK_BYTES = 2 * MiB;

/** PMD_SIZE (arch/x86/include/asm/pgtable_64_types.h). */
export const GUEST_PMD_BYTES = 2 * MiB;

/**
 * sizeof(struct page) on a typical x86_64 config. The spec marks this as
 * unverified for every config; every memmap_on_memory figure derives from it.
 */
export const GUEST_STRUCT_PAGE_BYTES = 64;

/** MIN_MEMORY_BLOCK_SIZE (arch/x86/mm/init_64.c; memory_dev_init rejects smaller). */
export const MIN_MEMORY_BLOCK_BYTES = 128 * MiB;

/** MAX_BLOCK_SIZE (arch/x86/mm/init_64.c probe_memory_block_size clamps to it). */
export const MAX_MEMORY_BLOCK_BYTES = 2 * GiB;

/** ACPI_MAX_RAM_SLOTS (hw/i386/pc.c pc_memory_init: "slots ≤ 256"). */
export const MAX_MEMORY_SLOTS = 256;

/**
 * QEMU refuses a pc-dimm backend that is not a multiple of the backend page
 * size; with THP-backed RAM that is 2 MiB ("backend memory size must be
 * multiple of 0x200000", hw/mem/memory-device.c, observed on QEMU 7.2).
 */
export const PC_DIMM_SIZE_ALIGN_BYTES = 2 * MiB;

/**
 * virtio-mem block-size floor we accept. QEMU allows 1 MiB
 * (hw/virtio/virtio-mem.c), but Linux never plugs less than a pageblock:
 * sb_size = max(device block, pageblock) (drivers/virtio/virtio_mem.c
 * virtio_mem_init_hotplug), and QEMU's x86_64 default is the 2 MiB THP size.
 */
export const MIN_VIRTIO_MEM_BLOCK_BYTES = GUEST_PAGEBLOCK_BYTES;
