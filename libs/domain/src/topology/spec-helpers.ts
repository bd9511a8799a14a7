/** Fixture builders shared by the topology specs (not exported from the package). */
import { GiB, MiB } from '../units';
import type { HostPerformanceInput, KernelProfile, MemoryGroupInput, PerfValues, TopologyInput } from './types';

export const perfOf = (rl: number, wl: number, rb: number, wb: number): PerfValues => ({
  readLatencyNs: rl,
  writeLatencyNs: wl,
  readBandwidthMBps: rb,
  writeBandwidthMBps: wb,
});

export function perfEntry(cpuNodeId: number, memoryNodeId: number, p: PerfValues): HostPerformanceInput {
  return { cpuNodeId, memoryNodeId, ...p };
}

export function staticGroup(id: string, poolId: string, sizeBytes: number, extra: Partial<MemoryGroupInput> = {}): MemoryGroupInput {
  return { id, name: id, kind: 'STATIC', poolId, sizeBytes, onlineType: 'ONLINE_MOVABLE', plugged: true, ...extra };
}

export function dynamicGroup(id: string, poolId: string, maxSizeBytes: number, extra: Partial<MemoryGroupInput> = {}): MemoryGroupInput {
  return { id, name: id, kind: 'DYNAMIC', poolId, maxSizeBytes, onlineType: 'ONLINE_MOVABLE', plugged: true, ...extra };
}

/**
 * Host node 0 = DRAM with CPUs, node 1 = CXL; guest node 0 (2 vCPUs, 512 MiB) and one CXL
 * pool with a 256 MiB DIMM: the layout of the domain-spec golden examples.
 */
export function oneCxlInput(dram: PerfValues, cxl: PerfValues, profile: KernelProfile = 'linux-6.12'): TopologyInput {
  return {
    host: {
      nodes: [
        { nodeId: 0, cpus: [0, 1, 2, 3], memoryBytes: 64 * GiB, kind: 'DRAM' },
        { nodeId: 1, cpus: [], memoryBytes: 256 * GiB, kind: 'CXL' },
      ],
      performance: [perfEntry(0, 0, dram), perfEntry(0, 1, cxl)],
      distances: [{ fromNodeId: 0, toNodeId: 1, distance: 25 }],
    },
    vm: {
      name: 'golden',
      kernelProfile: profile,
      guestNodes: [{ guestNodeId: 0, vcpus: 2, memoryBytes: 512 * MiB }],
      maxMemoryBytes: 8 * GiB,
      memorySlots: 4,
      sparePciePorts: 0,
    },
    pools: [{ id: 'pool-a', hostNodeId: 1, memoryType: 'VOLATILE' }],
    groups: [staticGroup('g1', 'pool-a', 256 * MiB, { plugged: false })],
  };
}

/**
 * Two host sockets (nodes 0, 1 with CPUs) and CXL nodes 2 and 3, a full performance table,
 * two guest CPU nodes and groups on both CXL nodes.
 */
export function twoSocketInput(): TopologyInput {
  const local = perfOf(100, 100, 51200, 51200);
  const remote = perfOf(150, 150, 25600, 25600);
  const cxlNear = perfOf(250, 250, 20480, 20480);
  const cxlFar = perfOf(350, 350, 10240, 10240);
  return {
    host: {
      nodes: [
        { nodeId: 0, cpus: [0, 1], memoryBytes: 64 * GiB, kind: 'DRAM' },
        { nodeId: 1, cpus: [2, 3], memoryBytes: 64 * GiB, kind: 'DRAM' },
        { nodeId: 2, cpus: [], memoryBytes: 128 * GiB, kind: 'CXL' },
        { nodeId: 3, cpus: [], memoryBytes: 128 * GiB, kind: 'CXL' },
      ],
      performance: [
        perfEntry(0, 0, local),
        perfEntry(1, 1, local),
        perfEntry(0, 1, remote),
        perfEntry(1, 0, remote),
        perfEntry(0, 2, cxlNear),
        perfEntry(1, 2, cxlFar),
        perfEntry(1, 3, cxlNear),
        perfEntry(0, 3, cxlFar),
      ],
      distances: [
        { fromNodeId: 0, toNodeId: 1, distance: 21 },
        { fromNodeId: 0, toNodeId: 2, distance: 24 },
        { fromNodeId: 0, toNodeId: 3, distance: 34 },
        { fromNodeId: 1, toNodeId: 2, distance: 34 },
        { fromNodeId: 1, toNodeId: 3, distance: 24 },
        { fromNodeId: 2, toNodeId: 3, distance: 44 },
      ],
    },
    vm: {
      name: 'two-socket',
      kernelProfile: 'linux-6.12',
      guestNodes: [
        { guestNodeId: 0, vcpus: 2, memoryBytes: 1 * GiB, hostNodeId: 0 },
        { guestNodeId: 1, vcpus: 2, memoryBytes: 1 * GiB, hostNodeId: 1 },
      ],
      maxMemoryBytes: 16 * GiB,
      memorySlots: 8,
      sparePciePorts: 2,
    },
    pools: [
      { id: 'pool-2', hostNodeId: 2, memoryType: 'VOLATILE' },
      { id: 'pool-3', hostNodeId: 3, memoryType: 'VOLATILE' },
    ],
    groups: [
      staticGroup('dimm-a', 'pool-2', 512 * MiB),
      dynamicGroup('vmem-b', 'pool-3', 2 * GiB, { requestedBytes: 512 * MiB }),
      dynamicGroup('vmem-later', 'pool-2', 1 * GiB, { plugged: false }),
    ],
  };
}
