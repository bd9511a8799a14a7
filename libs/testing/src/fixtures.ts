import { GiB, MiB } from '#domain';
import type { ExecutorConfig } from '#application';

/**
 * The hypervisor host the engine's end-to-end tests and bench:ops create: node 0 with the
 * CPUs and DRAM, node 1 a CPU-less CXL expander (2.5× the latency, 40 % of the bandwidth),
 * as the REST API's CreateHost body.
 */
export function cxlHostBody(name: string, cxlMemoryBytes = 16 * GiB) {
  return {
    name,
    nodes: [
      { nodeId: 0, cpus: [0, 1], memoryBytes: 8 * GiB, kind: 'DRAM' },
      { nodeId: 1, cpus: [], memoryBytes: cxlMemoryBytes, kind: 'CXL' },
    ],
    performance: [
      { cpuNodeId: 0, memoryNodeId: 0, readLatencyNs: 100, writeLatencyNs: 100, readBandwidthMBps: 51200, writeBandwidthMBps: 51200 },
      { cpuNodeId: 0, memoryNodeId: 1, readLatencyNs: 250, writeLatencyNs: 250, readBandwidthMBps: 20480, writeBandwidthMBps: 20480 },
    ],
    distances: [{ fromNodeId: 0, toNodeId: 1, distance: 25 }],
  };
}

/**
 * The worker's executor settings beside the bench's in-process hypervisor
 * (bench/recording-driver.ts): no guest to boot, so no kernel or initrd, and short
 * timeouts (the simulation answers at once).
 */
export function recordingExecutorConfig(runtimeDir: string): ExecutorConfig {
  return {
    runtimeDir,
    bootImage: () => ({ kernel: '/dev/null', initrd: '/dev/null', append: '' }),
    accel: 'tcg',
    cpuModel: 'max',
    hostNodeBinding: 'none',
    convergeTimeoutMs: 10_000,
    deviceDelTimeoutMs: 5_000,
    bootTimeoutMs: 10_000,
  };
}

/**
 * The VM the engine's end-to-end tests and bench:ops plug into, as the REST API's CreateVm
 * body: one guest node (2 vCPUs, 512 MiB on host node 0), room for 4 DIMMs and 4 GiB, and
 * one spare PCIe port for a virtio-mem group.
 */
export function cxlVmBody(name: string, host: string, kernelProfile: string) {
  return {
    name,
    host,
    kernelProfile,
    guestNodes: [{ guestNodeId: 0, vcpus: 2, bootMemoryBytes: 512 * MiB, hostNodeId: 0 }],
    memorySlots: 4,
    maxMemoryBytes: 4 * GiB,
    sparePciePorts: 1,
  };
}
