import type {
  AdistCalculation,
  DemotionTarget,
  KernelProfile,
  MemoryTier,
  NodeTier,
  PerfValues,
  TierPrediction,
} from './types';

/** include/linux/memory-tiers.h */
export const MEMTIER_CHUNK_BITS = 7;
export const MEMTIER_CHUNK_SIZE = 1 << MEMTIER_CHUNK_BITS;
export const MEMTIER_ADISTANCE_DRAM = 4 * MEMTIER_CHUNK_SIZE + (MEMTIER_CHUNK_SIZE >> 1);

/*
 * Exact C unsigned-int arithmetic on doubles (no BigInt: the compiler runs this for every node
 * of every topology). All operands are u32; sums of two stay below 2^33 and are exact; a
 * product is split at 16 bits so every partial product stays below 2^49 and is exact.
 */
const TWO32 = 4294967296;
const u32Add = (a: number, b: number) => (a + b) % TWO32;
function u32Mul(a: number, b: number): number {
  const hi = (a * (b >>> 16)) % 65536;
  return (hi * 65536 + a * (b & 0xffff)) % TWO32;
}
/** Integer quotient of two u32 values (exact: the double quotient never rounds across an integer). */
const u32Div = (a: number, b: number) => Math.floor(a / b);
/** C conversion of a u32 to int (two's complement). */
const toInt32 = (a: number) => a | 0;

/** Tier id of an abstract distance: round_down(adist, 128) >> 7 (find_create_memory_tier). */
export function tierOf(adistance: number): number {
  return adistance >> MEMTIER_CHUNK_BITS;
}

export type AdistResult =
  | { ok: true; adistance: number; calculation: AdistCalculation }
  | { ok: false; errno: 'EINVAL'; reason: string };

/**
 * mm/memory-tiers.c mt_perf_to_adistance, evaluated exactly as C does with `unsigned int`
 * fields (include/linux/node.h access_coordinate) and the int constant 576:
 *   adist = 576 * (Lr+Lw) / (DLr+DLw) * (DBr+DBw) / (Br+Bw)
 * left to right in u32 — truncating after each `/`, wrapping mod 2^32 after each `*` — and
 * stored into an int. `perf` and `reference` are HMAT access1 values as the guest decoded them.
 *
 * A 2025 fix ("mm/memory-tier: fix abstract distance calculation overflow", Cc stable) makes
 * the constant 576L, i.e. 64-bit arithmetic; the compiler never emits a topology whose
 * calculation wraps, so both variants give the same answer for compiled topologies.
 */
export function mtPerfToAdistance(perf: PerfValues, reference: PerfValues): AdistResult {
  const lt = u32Add(perf.readLatencyNs, perf.writeLatencyNs);
  const bt = u32Add(perf.readBandwidthMBps, perf.writeBandwidthMBps);
  const dl = u32Add(reference.readLatencyNs, reference.writeLatencyNs);
  const db = u32Add(reference.readBandwidthMBps, reference.writeBandwidthMBps);
  if (lt === 0 || bt === 0) return { ok: false, errno: 'EINVAL', reason: 'latency or bandwidth sum is 0' };
  if (dl === 0 || db === 0) return { ok: false, errno: 'EINVAL', reason: 'reference latency or bandwidth sum is 0' };
  const s1 = u32Mul(MEMTIER_ADISTANCE_DRAM, lt);
  const s2 = u32Div(s1, dl);
  const s3 = u32Mul(s2, db);
  const s4 = u32Div(s3, bt);
  return {
    ok: true,
    adistance: toInt32(s4),
    calculation: {
      latencySumNs: lt,
      referenceLatencySumNs: dl,
      bandwidthSumMBps: bt,
      referenceBandwidthSumMBps: db,
      steps: [s1, s2, s3, s4],
      // A double product of u32s is ≥ 2^32 exactly when the true product is.
      wrapped: MEMTIER_ADISTANCE_DRAM * lt >= TWO32 || s2 * db >= TWO32,
    },
  };
}

const METRICS = ['readLatencyNs', 'writeLatencyNs', 'readBandwidthMBps', 'writeBandwidthMBps'] as const;

/**
 * mm/memory-tiers.c mt_set_default_dram_perf: a DRAM node mismatches the reference if any
 * metric has abs(x − ref)·10 > ref. `abs` on an unsigned int goes through `signed int`
 * (include/linux/math.h), the product is int, and the comparison is unsigned: modelled
 * exactly. Exactly 10 % still passes. Returns the offending metric, if any.
 */
export function dramPerfMismatch(reference: PerfValues, perf: PerfValues): (typeof METRICS)[number] | undefined {
  for (const m of METRICS) {
    const ref = reference[m] % TWO32;
    const diff = toInt32(perf[m] % TWO32 - ref);
    const abs = diff < 0 ? toInt32(-diff) : diff;
    // int * 10 wraps like the kernel's (built with -fno-strict-overflow), then compares unsigned.
    if (u32Mul(abs >>> 0, 10) > ref) return m;
  }
  return undefined;
}

function sumsZero(p: PerfValues): boolean {
  return u32Add(p.readLatencyNs, p.writeLatencyNs) === 0 || u32Add(p.readBandwidthMBps, p.writeBandwidthMBps) === 0;
}

export interface TierNodeInput {
  /** Linux node id (== guest node id, see layout.ts). */
  nodeId: number;
  hasCpus: boolean;
  /** Has memory at boot (N_MEMORY at memory_tier_init). */
  hasBootMemory: boolean;
  /** Has an HMAT memory target (an enabled SRAT memory-affinity entry). */
  hmatTarget: boolean;
  /** HMAT access1 values as the guest decoded them; null if the table gives none. */
  access1: PerfValues | null;
  /**
   * No boot memory, but pc-dimms cold-plugged on the command line: the ACPI memory hotplug
   * driver onlines them during boot, before the HMAT adistance algorithm exists.
   */
  firstMemoryFromBootDimm?: boolean;
}

/**
 * Predicts memory tiers and demotion targets for every node once all nodes have memory.
 *
 * linux-6.12 (drivers/acpi/numa/hmat.c, mm/memory-tiers.c): the HMAT adistance algorithm is
 * registered only if hmat_set_default_dram_perf() succeeds — it walks the CPU+memory nodes
 * in id order, skips those without an HMAT target, takes the first as reference and fails on a
 * zero sum or a >10 % mismatch. Then every node with a target gets mt_perf_to_adistance of its
 * access1 values; anything else (no target, -EINVAL) keeps MEMTIER_ADISTANCE_DRAM.
 * linux-6.1: there is no adistance algorithm; every node is in memory_tier4.
 */
export function predictTiers(profile: KernelProfile, nodes: TierNodeInput[], distances: number[][]): TierPrediction {
  const sorted = [...nodes].sort((a, b) => a.nodeId - b.nodeId);
  let hmatTiering: TierPrediction['hmatTiering'];
  let reference: { nodeId: number; perf: PerfValues } | undefined;

  if (profile === 'linux-6.1') {
    hmatTiering = { enabled: false, reason: 'linux-6.1 has no HMAT-based abstract distance: every node gets the default DRAM memory type' };
  } else {
    hmatTiering = { enabled: true, reason: '' };
    for (const n of sorted) {
      if (!n.hasCpus || !n.hasBootMemory || !n.hmatTarget) continue;
      const perf = n.access1 ?? { readLatencyNs: 0, writeLatencyNs: 0, readBandwidthMBps: 0, writeBandwidthMBps: 0 };
      if (sumsZero(perf)) {
        hmatTiering = { enabled: false, reason: `CPU node ${n.nodeId} has a zero access1 latency or bandwidth sum (mt_set_default_dram_perf returns -EINVAL)` };
        break;
      }
      if (!reference) {
        reference = { nodeId: n.nodeId, perf };
        continue;
      }
      const metric = dramPerfMismatch(reference.perf, perf);
      if (metric) {
        hmatTiering = {
          enabled: false,
          referenceNodeId: reference.nodeId,
          reason:
            `CPU node ${n.nodeId} ${metric} ${perf[metric]} mismatches reference DRAM node ${reference.nodeId} (${reference.perf[metric]}) ` +
            `by more than 10 % (mt_set_default_dram_perf): the HMAT adistance algorithm is not registered`,
        };
        break;
      }
    }
    if (hmatTiering.enabled && !reference)
      hmatTiering = { enabled: false, reason: 'no CPU node with memory is an HMAT target, so there is no reference DRAM performance (-ENOENT)' };
    if (hmatTiering.enabled && reference)
      hmatTiering = { enabled: true, referenceNodeId: reference.nodeId, reason: `reference DRAM performance from CPU node ${reference.nodeId}` };
  }

  const nodeTiers: NodeTier[] = sorted.map((n) => {
    const fallback = (reason: string): NodeTier => ({
      guestNodeId: n.nodeId,
      adistance: MEMTIER_ADISTANCE_DRAM,
      tier: tierOf(MEMTIER_ADISTANCE_DRAM),
      source: 'default',
      reason,
    });
    if (!hmatTiering.enabled || !reference) return fallback(hmatTiering.reason);
    if (!n.hmatTarget || !n.access1) return fallback('no HMAT target (no SRAT memory-affinity entry): default adistance 576');
    // Observed on Debian's 6.12 guest under QEMU 7.2 (libs/testing/src/topology-guests.e2e-spec.ts):
    // a node whose first memory is a DIMM given on the command line is onlined by the ACPI
    // memory hotplug driver while devices are probed, before memory_tier_late_init registers
    // the HMAT adistance algorithm; memtier_hotplug_callback then fixes its type at the
    // default, and a node's tier never changes while it has memory. The same DIMM hotplugged
    // after boot gets the HMAT tier.
    if (n.firstMemoryFromBootDimm)
      return fallback('its first memory is a pc-dimm cold-plugged at launch, onlined during boot before HMAT tiering is registered: default adistance 576');
    const r = mtPerfToAdistance(n.access1, reference.perf);
    if (!r.ok) return fallback(`mt_perf_to_adistance -EINVAL: ${r.reason}; default adistance 576`);
    return {
      guestNodeId: n.nodeId,
      adistance: r.adistance,
      tier: tierOf(r.adistance),
      source: 'hmat',
      reason: `HMAT access1 against reference node ${reference.nodeId}`,
      calculation: r.calculation,
    };
  });

  const byTier = new Map<number, number[]>();
  for (const t of nodeTiers) {
    const list = byTier.get(t.tier);
    if (list) list.push(t.guestNodeId);
    else byTier.set(t.tier, [t.guestNodeId]);
  }
  const tiers: MemoryTier[] = [...byTier.entries()]
    .sort(([a], [b]) => a - b)
    .map(([tier, ids]) => ({ tier, adistanceStart: tier << MEMTIER_CHUNK_BITS, nodes: ids, nodelist: formatNodeList(ids) }));

  const view: NodeView = { memoryNodes: sorted.map((n) => n.nodeId), isMemory: [], hasCpu: [], distances };
  for (const n of sorted) {
    view.isMemory[n.nodeId] = true;
    view.hasCpu[n.nodeId] = n.hasCpus;
  }
  const { demotion, topTierAdistance } = establishDemotionTargets(tiers, view);
  return { kernelProfile: profile, hmatTiering, nodes: nodeTiers, tiers, demotion, topTierAdistance };
}

/** Node facts the demotion simulation reads, indexed by node id. */
interface NodeView {
  memoryNodes: number[];
  isMemory: boolean[];
  hasCpu: boolean[];
  distances: number[][];
}

/**
 * mm/page_alloc.c find_next_best_node: the minimum of (distance + [n < node] + [n has CPUs]),
 * then the smaller node_load, then the lower node id. (`val *= MAX_NUMNODES; val += node_load`
 * is this lexicographic order because node_load < MAX_NUMNODES.) `used` is the skip mask.
 */
function findNextBestNode(node: number, used: boolean[], v: NodeView, nodeLoad: number[]): number {
  if (!used[node] && v.isMemory[node]) {
    used[node] = true;
    return node;
  }
  let best = -1;
  let bestVal = Number.POSITIVE_INFINITY;
  let bestLoad = Number.POSITIVE_INFINITY;
  for (const n of v.memoryNodes) {
    if (used[n]) continue;
    const val = dist(v.distances, node, n) + (n < node ? 1 : 0) + (v.hasCpu[n] ? 1 : 0);
    const load = nodeLoad[n] ?? 0;
    if (val < bestVal || (val === bestVal && load < bestLoad)) {
      best = n;
      bestVal = val;
      bestLoad = load;
    }
  }
  if (best >= 0) used[best] = true;
  return best;
}

function dist(distances: number[][], a: number, b: number): number {
  return distances[a]?.[b] ?? (a === b ? 10 : 20);
}

/**
 * node_load is left over from the last zonelist build (__build_all_zonelists: reset, then
 * build_zonelists for every possible node in id order, +1 to the first node of each new
 * distance group). The last rebuild before establish_demotion_targets happens when the last
 * node gains memory (online_pages rebuilds zonelists before MEM_ONLINE), so it sees the same
 * memory nodes as the demotion pass.
 */
function zonelistNodeLoad(v: NodeView): number[] {
  const load: number[] = [];
  for (const local of v.memoryNodes) {
    const used: boolean[] = [];
    let prev = local;
    for (;;) {
      const n = findNextBestNode(local, used, v, load);
      if (n < 0) break;
      if (dist(v.distances, local, n) !== dist(v.distances, local, prev)) load[n] = (load[n] ?? 0) + 1;
      prev = n;
    }
  }
  return load;
}

/** mm/memory-tiers.c establish_demotion_targets. */
function establishDemotionTargets(tiers: MemoryTier[], v: NodeView): { demotion: DemotionTarget[]; topTierAdistance: number } {
  const nodeLoad = zonelistNodeLoad(v);
  const tierIndex: number[] = [];
  tiers.forEach((t, i) => t.nodes.forEach((n) => (tierIndex[n] = i)));
  // lower_tier_mask of tier i: every node of tiers i+1.. (tier node lists are ascending).
  const lowerMask: number[][] = tiers.map((_, i) => tiers.slice(i + 1).flatMap((t) => t.nodes).sort((a, b) => a - b));

  const demotion: DemotionTarget[] = v.memoryNodes.map((node) => {
    const ti = tierIndex[node] ?? tiers.length - 1;
    const fallback = [...(lowerMask[ti] ?? [])];
    const lower = tiers[ti + 1];
    if (!lower) return { guestNodeId: node, preferred: [], fallback };
    // find_next_best_node's skip mask: every memory node outside the next lower tier.
    const used: boolean[] = [];
    for (const n of v.memoryNodes) used[n] = true;
    for (const n of lower.nodes) used[n] = false;
    const preferred: number[] = [];
    let bestDistance = -1;
    for (;;) {
      const target = findNextBestNode(node, used, v, nodeLoad);
      if (target < 0) break;
      const d = dist(v.distances, node, target);
      if (bestDistance !== -1 && d !== bestDistance) break;
      bestDistance = d;
      preferred.push(target);
    }
    return { guestNodeId: node, preferred: preferred.sort((a, b) => a - b), fallback };
  });

  let topTierAdistance = -1;
  for (let i = tiers.length - 1; i >= 0; i--) {
    const t = tiers[i];
    if (t && t.nodes.some((n) => v.hasCpu[n])) {
      topTierAdistance = t.adistanceStart + MEMTIER_CHUNK_SIZE - 1;
      break;
    }
  }
  return { demotion, topTierAdistance };
}

/** The kernel's `%*pbl` bitmap list format: ascending ranges, e.g. `0-1,3`. */
export function formatNodeList(ids: number[]): string {
  const s = [...new Set(ids)].sort((a, b) => a - b);
  const parts: string[] = [];
  for (let i = 0; i < s.length; ) {
    let j = i;
    while (j + 1 < s.length && (s[j + 1] as number) === (s[j] as number) + 1) j++;
    parts.push(i === j ? `${s[i]}` : `${s[i]}-${s[j]}`);
    i = j + 1;
  }
  return parts.join(',');
}
