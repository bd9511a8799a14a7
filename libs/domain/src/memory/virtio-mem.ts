/**
 * The unit a Linux guest's virtio-mem driver works in, from
 * drivers/virtio/virtio_mem.c virtio_mem_init_hotplug() and virtio_mem_probe().
 */
import { isPowerOfTwo } from '../units';
import { GUEST_PAGEBLOCK_BYTES } from './guest-arch';

export type VirtioMemMode = 'SBM' | 'BBM';

export interface VirtioMemGuestUnit {
  /** Sub Block Mode (sub-blocks of a memory block) or Big Block Mode (≥ one memory block). */
  readonly mode: VirtioMemMode;
  /** sb_size (SBM) or bb_size (BBM): the guest plugs floor(diff / unit) units per request. */
  readonly unitBytes: number;
  /** unit_pages of the dynamic memory group: one memory block (SBM) or bb_size (BBM). */
  readonly memoryGroupUnitBytes: number;
}

export interface VirtioMemGuestOptions {
  /** virtio_mem.force_bbm. */
  forceBbm?: boolean;
  /** virtio_mem.bbm_block_size (0 = unset). */
  bbmBlockSizeBytes?: number;
}

export function virtioMemGuestUnit(
  deviceBlockSizeBytes: number,
  memoryBlockSizeBytes: number,
  opts: VirtioMemGuestOptions = {},
): VirtioMemGuestUnit {
  // sb_size = max(device_block_size, pageblock): since 5.19 the floor is one
  // pageblock (before, MAX_ORDER_NR_PAGES = 4 MiB); 6.1 and 6.12 both have it.
  const sbSize = Math.max(deviceBlockSizeBytes, GUEST_PAGEBLOCK_BYTES);
  if (sbSize < memoryBlockSizeBytes && !opts.forceBbm) {
    return { mode: 'SBM', unitBytes: sbSize, memoryGroupUnitBytes: memoryBlockSizeBytes };
  }
  let bbSize = Math.max(deviceBlockSizeBytes, memoryBlockSizeBytes);
  const param = opts.bbmBlockSizeBytes ?? 0;
  // The parameter only ever raises bb_size; a smaller or non-power-of-two
  // value is ignored with a warning by the driver.
  if (isPowerOfTwo(param) && param >= bbSize) bbSize = param;
  return { mode: 'BBM', unitBytes: bbSize, memoryGroupUnitBytes: bbSize };
}
