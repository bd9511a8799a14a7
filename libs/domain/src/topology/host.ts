import { DomainError } from '../errors';
import type { HostNodeInput, HostPerformanceInput, HostTopologyInput, PerfValues } from './types';
import { SLIT_LOCAL, SLIT_MAX } from './validate';

/** Linux REMOTE_DISTANCE (include/linux/topology.h): what a guest assumes without a SLIT. */
export const DEFAULT_REMOTE_DISTANCE = 20;

export interface ResolvedDistance {
  distance: number;
  source: 'local' | 'host' | 'symmetric' | 'latency-ratio' | 'via-cpu-node' | 'default';
}

export interface ResolvedPerformance {
  values: PerfValues;
  derivation?: string;
}

/**
 * Read-only view of the host with the documented fallback rules for missing data.
 * Results are memoised: one compile asks for the same pairs many times.
 */
export class HostModel {
  readonly nodes = new Map<number, HostNodeInput>();
  /** Host CPU nodes (nodes with CPUs), ascending. */
  readonly cpuNodeIds: number[];
  private readonly perf = new Map<number, HostPerformanceInput>();
  private readonly explicitDistance = new Map<number, number>();
  private readonly distanceCache = new Map<number, ResolvedDistance>();
  private readonly perfCache = new Map<number, ResolvedPerformance>();

  constructor(host: HostTopologyInput) {
    for (const n of host.nodes) this.nodes.set(n.nodeId, n);
    this.cpuNodeIds = host.nodes.filter((n) => n.cpus.length > 0).map((n) => n.nodeId).sort((a, b) => a - b);
    for (const p of host.performance) this.perf.set(key(p.cpuNodeId, p.memoryNodeId), p);
    for (const d of host.distances ?? []) this.explicitDistance.set(key(d.fromNodeId, d.toNodeId), d.distance);
  }

  hasCpus(nodeId: number): boolean {
    return (this.nodes.get(nodeId)?.cpus.length ?? 0) > 0;
  }

  /**
   * Host SLIT distance from `a` to `b`. Missing entries are derived, in this order:
   * 1. the opposite direction (QEMU fills an asymmetric matrix the same way,
   *    hw/core/numa.c complete_init_numa_distance);
   * 2. with a CPU node c and another node m: round(10 · (Lr+Lw)(c→m) / (Lr+Lw)(c→c)) from the
   *    performance table (ACPI defines SLIT as relative latency with local = 10);
   * 3. between two CPU-less nodes: d(c,a) + d(c,b) − 10 through the lowest-id CPU node c;
   * 4. otherwise 20, Linux's REMOTE_DISTANCE.
   * Derived values are clamped to 11..254 (slit_valid() needs > 10 off the diagonal).
   */
  distance(a: number, b: number): ResolvedDistance {
    if (a === b) return { distance: SLIT_LOCAL, source: 'local' };
    const k = key(a, b);
    const cached = this.distanceCache.get(k);
    if (cached) return cached;
    const r = this.resolveDistance(a, b, true);
    this.distanceCache.set(k, r);
    return r;
  }

  private resolveDistance(a: number, b: number, allowVia: boolean): ResolvedDistance {
    const direct = this.explicitDistance.get(key(a, b));
    if (direct !== undefined) return { distance: direct, source: 'host' };
    const reverse = this.explicitDistance.get(key(b, a));
    if (reverse !== undefined) return { distance: reverse, source: 'symmetric' };
    const c = this.hasCpus(a) ? a : this.hasCpus(b) ? b : undefined;
    if (c !== undefined) {
      const m = c === a ? b : a;
      const remote = this.perf.get(key(c, m));
      const local = this.perf.get(key(c, c));
      if (remote && local) {
        const ratio = (10 * (remote.readLatencyNs + remote.writeLatencyNs)) / (local.readLatencyNs + local.writeLatencyNs);
        return { distance: clampDistance(Math.round(ratio)), source: 'latency-ratio' };
      }
    } else if (allowVia && this.cpuNodeIds.length > 0) {
      const via = this.cpuNodeIds[0] as number;
      const da = this.resolveDistance(via, a, false);
      const db = this.resolveDistance(via, b, false);
      if (da.source !== 'default' && db.source !== 'default')
        return { distance: clampDistance(da.distance + db.distance - SLIT_LOCAL), source: 'via-cpu-node' };
    }
    return { distance: DEFAULT_REMOTE_DISTANCE, source: 'default' };
  }

  /**
   * Performance of memory node `m` seen from CPU node `c`. When the host table lacks the
   * pair (Linux hosts expose only the best initiator per memory node in sysfs), it is
   * derived from the entry of the CPU node c' nearest to c (by SLIT, then lowest id) that has
   * one for m, scaled by the distance ratio d(c,m)/d(c',m): latency rounded up, bandwidth
   * rounded down (never below 1). No entry for m from any CPU node is refused.
   */
  performance(c: number, m: number): ResolvedPerformance {
    const k = key(c, m);
    const cached = this.perfCache.get(k);
    if (cached) return cached;
    const r = this.resolvePerformance(c, m);
    this.perfCache.set(k, r);
    return r;
  }

  private resolvePerformance(c: number, m: number): ResolvedPerformance {
    const own = this.perf.get(key(c, m));
    if (own) return { values: pick(own) };
    let best: { from: number; entry: HostPerformanceInput; d: number } | undefined;
    for (const other of this.cpuNodeIds) {
      const entry = this.perf.get(key(other, m));
      if (!entry || other === c) continue;
      const d = this.distance(c, other).distance;
      if (!best || d < best.d) best = { from: other, entry, d };
    }
    if (!best)
      throw DomainError.precondition(
        'HOST_PERFORMANCE_MISSING',
        `host performance table has no entry for memory node ${m} from any CPU node, so the guest HMAT for it cannot be derived`,
        { memoryNodeId: String(m), cpuNodeId: String(c) },
      );
    const dNew = this.distance(c, m).distance;
    const dOld = this.distance(best.from, m).distance;
    const e = best.entry;
    const lat = (x: number) => Math.ceil((x * dNew) / dOld);
    const bw = (x: number) => Math.max(1, Math.floor((x * dOld) / dNew));
    return {
      values: {
        readLatencyNs: lat(e.readLatencyNs),
        writeLatencyNs: lat(e.writeLatencyNs),
        readBandwidthMBps: bw(e.readBandwidthMBps),
        writeBandwidthMBps: bw(e.writeBandwidthMBps),
      },
      derivation: `host ${c}→${m} missing; derived from ${best.from}→${m} scaled by SLIT ${dNew}/${dOld}`,
    };
  }
}

/** Host node ids are < 1024 (validate.ts). */
function key(a: number, b: number): number {
  return a * 1024 + b;
}

function clampDistance(d: number): number {
  return Math.min(SLIT_MAX, Math.max(SLIT_LOCAL + 1, d));
}

function pick(p: HostPerformanceInput): PerfValues {
  return {
    readLatencyNs: p.readLatencyNs,
    writeLatencyNs: p.writeLatencyNs,
    readBandwidthMBps: p.readBandwidthMBps,
    writeBandwidthMBps: p.writeBandwidthMBps,
  };
}
