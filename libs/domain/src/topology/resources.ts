/**
 * From stored resources (host, VM, its pools and memory groups) to the compiler's input.
 *
 * Which groups are on the QEMU command line at launch: DYNAMIC (virtio-mem) ones known at
 * launch (not `hotplugged`), each on its own root port with its requested size (the virtio_mem driver probes after boot, so the node
 * gets its HMAT tier); STATIC ones are hotplugged by the engine once the guest agent answers,
 * because a DIMM given on the command line is onlined before the 6.12 guest registers HMAT
 * tiering and would leave its node in the DRAM tier (README: "Observed on real guests").
 */
import { DomainError } from '../errors';
import type { Host } from '../inventory/host';
import type { Pool } from '../inventory/pool';
import type { MemoryGroup } from '../vm/memory-group-resource';
import type { Vm } from '../vm/vm';
import { KERNEL_PROFILES, type KernelProfile, type TopologyInput, type TopologyPolicy } from './types';

export interface TopologyResources {
  host: Pick<Host, 'name' | 'nodes' | 'performance' | 'distances'>;
  vm: Pick<Vm, 'name' | 'kernelProfile' | 'guestNodes' | 'maxMemoryBytes' | 'memorySlots' | 'sparePciePorts' | 'guestMemory'>;
  pools: Pick<Pool, 'name' | 'hostNodeId' | 'daxDevicePath' | 'memoryType'>[];
  /** The VM's groups; those being removed (desiredState ABSENT) are left out by the caller or here. */
  groups: Pick<MemoryGroup, 'name' | 'kind' | 'pool' | 'sizeBytes' | 'maxSizeBytes' | 'blockSizeBytes' | 'requestedBytes' | 'onlineType' | 'guestNodeId' | 'desiredState' | 'hotplugged'>[];
  policy?: TopologyPolicy;
}

export function topologyInputFromResources(r: TopologyResources): TopologyInput {
  if (!KERNEL_PROFILES.includes(r.vm.kernelProfile as KernelProfile)) {
    throw DomainError.invalid('UNKNOWN_KERNEL_PROFILE', [{ field: 'kernelProfile', description: `${r.vm.kernelProfile} has no topology model (known: ${KERNEL_PROFILES.join(', ')})` }]);
  }
  const groups = r.groups.filter((g) => g.desiredState !== 'ABSENT');
  const usedPools = new Set(groups.map((g) => g.pool));
  return {
    host: {
      nodes: r.host.nodes.map((n) => ({ nodeId: n.nodeId, cpus: [...n.cpus], memoryBytes: n.memoryBytes, kind: n.kind })),
      performance: r.host.performance.map((p) => ({ ...p })),
      distances: r.host.distances.map((d) => ({ ...d })),
    },
    vm: {
      name: r.vm.name,
      kernelProfile: r.vm.kernelProfile as KernelProfile,
      guestNodes: r.vm.guestNodes.map((n) => ({
        guestNodeId: n.guestNodeId,
        vcpus: n.vcpus,
        memoryBytes: n.bootMemoryBytes,
        ...(n.hostNodeId !== undefined ? { hostNodeId: n.hostNodeId } : {}),
      })),
      maxMemoryBytes: r.vm.maxMemoryBytes,
      memorySlots: r.vm.memorySlots,
      sparePciePorts: r.vm.sparePciePorts,
      ...(r.vm.guestMemory.memmapOnMemory !== undefined ? { memmapOnMemory: r.vm.guestMemory.memmapOnMemory } : {}),
      ...(r.vm.guestMemory.memoryBlockSizeBytes !== undefined ? { guestMemoryBlockBytes: r.vm.guestMemory.memoryBlockSizeBytes } : {}),
    },
    pools: r.pools
      .filter((p) => usedPools.has(p.name))
      .map((p) => ({ id: p.name, hostNodeId: p.hostNodeId, memoryType: p.memoryType, ...(p.daxDevicePath ? { daxDevicePath: p.daxDevicePath } : {}) })),
    groups: groups.map((g) => ({
      id: g.name,
      name: g.name,
      kind: g.kind,
      poolId: g.pool,
      onlineType: g.onlineType,
      // A virtio-mem group added to a running guest sits on a spare root port, not its own.
      plugged: g.kind === 'DYNAMIC' && !g.hotplugged,
      ...(g.kind === 'STATIC' ? { sizeBytes: g.sizeBytes } : { maxSizeBytes: g.maxSizeBytes, blockSizeBytes: g.blockSizeBytes, requestedBytes: g.requestedBytes }),
      ...(g.guestNodeId !== undefined ? { guestNodeId: g.guestNodeId } : {}),
    })),
    ...(r.policy ? { policy: r.policy } : {}),
  };
}
