import { GiB } from '#domain';
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
