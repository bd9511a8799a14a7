import { DomainError } from '../errors';
import { MiB, formatBytes } from '../units';
import type { HostModel } from './host';
import type { GuestNode, MemoryBackend, PoolInput, TopologyInput } from './types';
import { QEMU_MAX_NUMA_NODES } from './validate';

export const DEFAULT_CXL_ANCHOR_BYTES = 128 * MiB;

/** The CPU-less host node behind one or more pools; one guest node per class the VM uses. */
export interface CxlClass {
  hostNodeId: number;
  pools: PoolInput[];
  /** A pool without a DAX path: only such a pool can back boot memory (see below). */
  ramPool?: PoolInput;
}

export interface GuestLayout {
  nodes: GuestNode[];
  cpuNodes: GuestNode[];
  cxlNodeByHostNode: Map<number, GuestNode>;
  vcpuCount: number;
}

export function nodeBackendId(guestNodeId: number): string {
  return `ram-node${guestNodeId}`;
}

/**
 * Lays out the guest NUMA nodes.
 *
 * CPU nodes keep the caller's ids 0..k-1 and get contiguous vCPU indices in that order. QEMU's
 * SRAT lists CPU affinity entries first and Linux numbers nodes in order of first appearance
 * (drivers/acpi/numa/srat.c acpi_numa_init, then memory entries), so guest node id == Linux nid.
 *
 * Unpinned CPU nodes go, in guestNodeId order, to the host DRAM node with CPUs that backs the
 * fewest guest nodes so far (pinned ones count), lowest host node id on ties: deterministic,
 * and it spreads the guest across host sockets the way the guest's SLIT will describe.
 *
 * CXL nodes: one per host node ("class") used by the VM's groups, ids k.. . Each must be an
 * HMAT target, which Linux creates only from an enabled SRAT memory-affinity entry
 * (hmat.c srat_parse_mem_affinity). QEMU writes those only for nodes with boot memory, and the
 * device-memory (hotplug) range goes to the LAST node (hw/i386/acpi-build.c build_srat). So a
 * CXL node either is last, or gets a small boot-memory "anchor" from its class.
 */
export function layoutGuestNodes(input: TopologyInput, host: HostModel): GuestLayout {
  const { vm, pools, groups } = input;
  const placement = input.policy?.cxlSratPlacement ?? 'last-node';
  const anchorBytes = input.policy?.cxlAnchorBytes ?? DEFAULT_CXL_ANCHOR_BYTES;

  const sorted = [...vm.guestNodes].sort((a, b) => a.guestNodeId - b.guestNodeId);
  const candidates = host.cpuNodeIds.filter((id) => host.nodes.get(id)?.kind === 'DRAM');
  if (candidates.length === 0)
    throw DomainError.precondition('HOST_HAS_NO_CPU_NODE', 'the host has no DRAM node with CPUs to back guest CPU nodes');
  const load = new Map<number, number>(candidates.map((id) => [id, 0]));
  for (const g of sorted) if (g.hostNodeId !== undefined) load.set(g.hostNodeId, (load.get(g.hostNodeId) ?? 0) + 1);

  let nextVcpu = 0;
  const dramUse = new Map<number, number>();
  const cpuNodes: GuestNode[] = sorted.map((g) => {
    let hostNodeId = g.hostNodeId;
    if (hostNodeId === undefined) {
      hostNodeId = candidates.reduce((best, id) => ((load.get(id) ?? 0) < (load.get(best) ?? 0) ? id : best));
      load.set(hostNodeId, (load.get(hostNodeId) ?? 0) + 1);
    }
    dramUse.set(hostNodeId, (dramUse.get(hostNodeId) ?? 0) + g.memoryBytes);
    const vcpuIds = Array.from({ length: g.vcpus }, (_, i) => nextVcpu + i);
    nextVcpu += g.vcpus;
    return {
      guestNodeId: g.guestNodeId,
      kind: 'CPU',
      vcpuIds,
      hostNodeId,
      hostNodePinned: g.hostNodeId !== undefined,
      bootMemoryBytes: g.memoryBytes,
      bootBackend: ramBackend(nodeBackendId(g.guestNodeId), g.memoryBytes, hostNodeId, false),
      initiatorGuestNodeId: g.guestNodeId,
      srat: 'boot-memory',
      poolIds: [],
    };
  });
  for (const [hostNodeId, bytes] of dramUse) {
    const capacity = host.nodes.get(hostNodeId)?.memoryBytes ?? 0;
    if (bytes > capacity)
      throw new DomainError(
        'RESOURCE_EXHAUSTED',
        'HOST_NODE_DRAM_EXHAUSTED',
        `guest CPU nodes bound to host node ${hostNodeId} need ${formatBytes(bytes)} but the node has ${formatBytes(capacity)}`,
        [],
        { hostNodeId: String(hostNodeId) },
      );
  }

  const classes = cxlClasses(pools, groups);
  const lastClass = placement === 'last-node' ? chooseLastClass(classes) : undefined;
  const ordered = classes.filter((c) => c !== lastClass);
  if (lastClass) ordered.push(lastClass);

  const cxlNodeByHostNode = new Map<number, GuestNode>();
  const cxlNodes = ordered.map((cls, i) => {
    const guestNodeId = cpuNodes.length + i;
    const isLast = cls === lastClass;
    if (!isLast && !cls.ramPool)
      throw DomainError.precondition(
        'SRAT_PLACEMENT_IMPOSSIBLE',
        `CXL host node ${cls.hostNodeId} is only reachable through device-DAX pools (${cls.pools.map((p) => p.id).join(', ')}), ` +
          `so it cannot get boot memory, and the hotplug-region (last node) position is ` +
          (placement === 'boot-memory' ? 'disabled by policy boot-memory' : 'taken') +
          '; without an SRAT memory entry Linux creates no HMAT target for it (hw/i386/acpi-build.c build_srat)',
        { hostNodeId: String(cls.hostNodeId) },
      );
    const node: GuestNode = {
      guestNodeId,
      kind: 'CXL',
      vcpuIds: [],
      hostNodeId: cls.hostNodeId,
      hostNodePinned: true,
      bootMemoryBytes: isLast ? 0 : anchorBytes,
      initiatorGuestNodeId: -1,
      srat: isLast ? 'hotplug-region' : 'boot-memory',
      poolIds: cls.pools.map((p) => p.id),
    };
    if (!isLast && cls.ramPool) {
      node.bootBackend = ramBackend(nodeBackendId(guestNodeId), anchorBytes, cls.hostNodeId, false);
      node.anchorPoolId = cls.ramPool.id;
    }
    cxlNodeByHostNode.set(cls.hostNodeId, node);
    return node;
  });

  const nodes = [...cpuNodes, ...cxlNodes];
  if (nodes.length > QEMU_MAX_NUMA_NODES)
    throw DomainError.invalid('TOPOLOGY_INVALID', [
      { field: 'vm.guestNodes', description: `${nodes.length} guest nodes exceed QEMU's MAX_NODES ${QEMU_MAX_NUMA_NODES}` },
    ]);
  return { nodes, cpuNodes, cxlNodeByHostNode, vcpuCount: nextVcpu };
}

export function ramBackend(id: string, sizeBytes: number, hostNodeId: number, reserve: boolean): MemoryBackend {
  return { id, type: 'memory-backend-ram', sizeBytes, hostNodeId, bindHostNode: true, share: false, pmem: false, reserve };
}

function cxlClasses(pools: PoolInput[], groups: TopologyInput['groups']): CxlClass[] {
  const used = new Set(groups.map((g) => g.poolId));
  const byNode = new Map<number, PoolInput[]>();
  for (const p of pools) {
    if (!used.has(p.id)) continue;
    const list = byNode.get(p.hostNodeId) ?? [];
    list.push(p);
    byNode.set(p.hostNodeId, list);
  }
  return [...byNode.entries()]
    .sort(([a], [b]) => a - b)
    .map(([hostNodeId, list]) => {
      const sortedPools = list.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
      const cls: CxlClass = { hostNodeId, pools: sortedPools };
      const ramPool = sortedPools.find((p) => p.daxDevicePath === undefined);
      if (ramPool) cls.ramPool = ramPool;
      return cls;
    });
}

/**
 * The last position is the only one that needs no boot memory, so it goes to a class that
 * cannot have any (DAX only; more than one such class is refused later), else to the class
 * with the highest host node id.
 */
function chooseLastClass(classes: CxlClass[]): CxlClass | undefined {
  const daxOnly = classes.filter((c) => !c.ramPool);
  if (daxOnly.length > 0) return daxOnly[0];
  return classes[classes.length - 1];
}
