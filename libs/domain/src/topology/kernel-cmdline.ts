import { MiB, formatBytes } from '../units';
import type { OnlineType, Topology } from './types';

export interface KernelCmdlineArg {
  arg: string;
  why: string;
}

export interface KernelCmdlineRecommendation {
  /** Arguments to add to the guest's kernel command line, in order. */
  args: string[];
  explained: KernelCmdlineArg[];
  warnings: string[];
}

/** mm/memory_hotplug.c: auto_movable_ratio default (%). */
export const AUTO_MOVABLE_RATIO_DEFAULT = 301;
/** sizeof(struct page) on x86_64 with the usual configs (domain-spec §4, unverified for all configs). */
const STRUCT_PAGE_BYTES = 64;
const PAGE_BYTES = 4096;
/** pageblock (order 9) and PMD on x86_64. */
const PMD_BYTES = 2 * MiB;

const PREFERENCE: OnlineType[] = ['ONLINE_MOVABLE', 'AUTO', 'ONLINE_KERNEL'];

/**
 * Guest kernel command line for the groups' online types.
 *
 * One `memhp_default_state` applies to all hotplugged memory, and the guest agent cannot pick
 * a zone (guest-set-memory-blocks writes plain "online", qga/commands-posix.c), so the kernel's
 * own onlining decides the zone. The online type holding the most bytes wins; groups wanting
 * another type are reported (they would need `online_kernel`/`online_movable` written to
 * /sys/devices/system/memory/memoryN/state inside the guest).
 */
export function recommendKernelCmdline(topology: Topology): KernelCmdlineRecommendation {
  const explained: KernelCmdlineArg[] = [];
  const warnings: string[] = [];
  const devices = topology.memoryDevices;
  const bytesByType = new Map<OnlineType, number>();
  for (const d of devices) bytesByType.set(d.onlineType, (bytesByType.get(d.onlineType) ?? 0) + d.sizeBytes);

  if (devices.length > 0) {
    const chosen = [...bytesByType.keys()].sort(
      (a, b) => (bytesByType.get(b) ?? 0) - (bytesByType.get(a) ?? 0) || PREFERENCE.indexOf(a) - PREFERENCE.indexOf(b),
    )[0] as OnlineType;
    for (const d of devices)
      if (d.onlineType !== chosen)
        warnings.push(
          `group ${d.groupId} wants ${d.onlineType} but the guest default is ${chosen}: onlining it differently needs a write of ` +
            `${d.onlineType === 'ONLINE_KERNEL' ? 'online_kernel' : d.onlineType === 'ONLINE_MOVABLE' ? 'online_movable' : 'online'} ` +
            'to memoryN/state inside the guest (the guest agent only writes "online")',
        );

    if (chosen === 'ONLINE_MOVABLE')
      explained.push({
        arg: 'memhp_default_state=online_movable',
        why: 'the kernel onlines hotplugged blocks itself, into ZONE_MOVABLE (mm/memory_hotplug.c mhp_get_default_online_type, zone_for_pfn_range), so they hold only movable pages and can be offlined and unplugged again; no guest-agent step is needed',
      });
    else if (chosen === 'ONLINE_KERNEL')
      explained.push({
        arg: 'memhp_default_state=online_kernel',
        why: 'the kernel onlines hotplugged blocks itself into the kernel zone (ZONE_NORMAL): usable for kernel allocations, but unplugging it later will usually fail because unmovable pages land there',
      });
    else explained.push(...autoMovable(topology, warnings));
  }

  if (topology.memmapOnMemory) {
    const block = topology.guestMemoryBlockBytes;
    const vmemmap = (block / PAGE_BYTES) * STRUCT_PAGE_BYTES;
    explained.push({
      arg: 'memory_hotplug.memmap_on_memory=Y',
      why:
        `the struct pages of each hotplugged ${formatBytes(block)} block (${formatBytes(vmemmap)}, 1/64) are taken from the block itself, ` +
        'so adding memory needs no existing kernel memory (useful when the guest is already short of it); ACPI DIMMs request it ' +
        '(drivers/acpi/acpi_memhotplug.c MHP_MEMMAP_ON_MEMORY)',
    });
    const multiBlockDimms = devices.filter((d) => d.model === 'pc-dimm' && d.sizeBytes > block);
    if (topology.kernelProfile === 'linux-6.1' && multiBlockDimms.length > 0)
      // 6.1 mhp_supports_memmap_on_memory() requires size == memory_block_size_bytes(); 6.8
      // ("split memmap_on_memory requests across memblocks") lifted that.
      warnings.push(
        `linux-6.1 uses memmap_on_memory only for a DIMM of exactly one memory block; ${multiBlockDimms.map((d) => d.groupId).join(', ')} ` +
          'will take their struct pages from existing kernel memory',
      );
    if (vmemmap % PMD_BYTES !== 0)
      warnings.push(`memmap_on_memory will not be used: the vmemmap of a ${formatBytes(block)} block is ${formatBytes(vmemmap)}, not a multiple of the 2 MiB PMD/pageblock (mhp_supports_memmap_on_memory)`);
  }
  return { args: explained.map((e) => e.arg), explained, warnings };
}

/**
 * auto-movable (mm/memory_hotplug.c auto_movable_zone_for_pfn): a range goes to ZONE_MOVABLE
 * while movable memory stays within auto_movable_ratio % of the early kernel memory, checked
 * globally and — with auto_movable_numa_aware (default on) — per node too. A CPU-less node's
 * only kernel memory is its boot anchor (none on the hotplug-region node), so the per-node
 * check would send its memory to ZONE_NORMAL; then numa awareness is switched off.
 */
function autoMovable(topology: Topology, warnings: string[]): KernelCmdlineArg[] {
  const ratio = AUTO_MOVABLE_RATIO_DEFAULT;
  const out: KernelCmdlineArg[] = [
    { arg: 'memhp_default_state=online', why: 'the kernel onlines hotplugged blocks itself; the zone comes from memory_hotplug.online_policy' },
    { arg: 'memory_hotplug.online_policy=auto-movable', why: 'choose ZONE_MOVABLE while enough kernel memory backs it, else ZONE_NORMAL (auto_movable_zone_for_pfn)' },
    {
      arg: `memory_hotplug.auto_movable_ratio=${ratio}`,
      why: `at most ${ratio} % of the early kernel memory may be movable (the kernel's default, stated so the guest does not depend on it)`,
    },
  ];
  const auto = topology.memoryDevices.filter((d) => d.onlineType === 'AUTO');
  const kernelBytes = topology.bootMemoryBytes;
  const autoBytes = auto.reduce((s, d) => s + d.sizeBytes, 0);
  if (autoBytes * 100 > ratio * kernelBytes)
    warnings.push(
      `AUTO groups total ${formatBytes(autoBytes)}, more than ${ratio} % of the ${formatBytes(kernelBytes)} boot (kernel) memory: the part beyond ` +
        `${formatBytes(Math.floor((ratio * kernelBytes) / 100))} will be onlined to ZONE_NORMAL and is unlikely to unplug`,
    );
  const perNode = new Map<number, number>();
  for (const d of auto) perNode.set(d.guestNodeId, (perNode.get(d.guestNodeId) ?? 0) + d.sizeBytes);
  const starved = [...perNode.entries()].filter(([node, bytes]) => {
    const boot = topology.guestNodes.find((g) => g.guestNodeId === node)?.bootMemoryBytes ?? 0;
    return bytes * 100 > ratio * boot;
  });
  if (starved.length > 0)
    out.push({
      arg: 'memory_hotplug.auto_movable_numa_aware=N',
      why:
        `guest node(s) ${starved.map(([n]) => n).join(', ')} have too little boot (kernel) memory of their own for the per-node ratio check, ` +
        'which would put their hotplugged memory in ZONE_NORMAL; only the global check remains',
    });
  return out;
}
