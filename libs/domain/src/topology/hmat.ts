import { DomainError, isDomainError } from '../errors';
import { MiB } from '../units';
import { encodeBandwidths, encodeLatencies, hmatNormalize, type EncodedHmatList } from './encoding';
import type { HostModel } from './host';
import { mtPerfToAdistance } from './tiers';
import type { GuestNode, HmatCell, HmatDataType, HmatPlan, HmatRounding, HmatStructure, PerfValues } from './types';

interface RawCell {
  initiator: number;
  target: number;
  host: PerfValues;
  derivation?: string;
}

/**
 * Builds the guest HMAT: every initiator (CPU guest node) × every target (guest node), with
 * read/write latency and read/write bandwidth — never the access-* types, so no later
 * structure can zero an earlier one, and every CPU node has its self entry in every type
 * (QEMU sets processor_pxm = self for CPU nodes, see domain-spec §3 pitfalls).
 *
 * Derivation: initiator guest node i → the host node its vCPUs' memory is bound to (which has
 * CPUs); target guest node t → its host memory node (the pinned DRAM node, or the CXL class
 * node); the cell is the host table's (i's node → t's node) entry, or its documented
 * derivation (HostModel.performance). Host "MB/s" become QEMU B/s as ·2^20 so the guest
 * prints the host's number.
 *
 * Each CXL node is given `initiator=` = the CPU node with the lowest latency sum to it (then the
 * highest bandwidth sum, then the lowest id): Linux then reports that initiator's values as
 * access0/access1 (hmat_update_target_attrs) and computes the node's tier from them.
 *
 * Bandwidth rescaling: if the bandwidths cannot be encoded, or a node's adistance calculation
 * would wrap the kernel's u32 (floor(576·Lt/DL)·DB ≥ 2^32, domain-spec G5), every bandwidth is
 * divided by the smallest common divisor k that fixes it. k divides every value exactly, so
 * all ratios — and every adistance — are unchanged; the guest then prints bandwidth/k. The
 * wrap rule is applied for every kernel profile: the HMAT belongs to the VM, which may boot a
 * newer kernel. Latencies are never rescaled (ratios of ns values are not kept by rounding);
 * an unrepresentable latency range is refused.
 *
 * With policy `hmatRounding: 'round'` (opt-in) values that cannot be kept exactly are rounded
 * instead of refused: bandwidths to the nearest multiple of the smallest 2^j MiB/s, latencies to
 * the smallest power of ten, that fit. Ratios then change slightly; the tier prediction still
 * uses exactly what the guest decodes. The granularities are reported in `plan.rounding`.
 */
export function planHmat(nodes: GuestNode[], host: HostModel, rounding: HmatRounding = 'exact'): HmatPlan {
  const initiators = nodes.filter((n) => n.kind === 'CPU').map((n) => n.guestNodeId);
  const targets = nodes.map((n) => n.guestNodeId);
  const hostNodeOf = new Map(nodes.map((n) => [n.guestNodeId, n.hostNodeId]));

  // Guest node ids are 0..n-1 with the CPU nodes first, so cell (i, t) is raw[i·n + t].
  const raw: RawCell[] = [];
  for (const i of initiators)
    for (const t of targets) {
      const r = host.performance(hostNodeOf.get(i) as number, hostNodeOf.get(t) as number);
      const cell: RawCell = { initiator: i, target: t, host: r.values };
      if (r.derivation) cell.derivation = r.derivation;
      raw.push(cell);
    }

  for (const n of nodes) {
    if (n.kind !== 'CXL') continue;
    let best: RawCell | undefined;
    for (const i of initiators) {
      const c = raw[i * targets.length + n.guestNodeId] as RawCell;
      if (!best || isBetterInitiator(c.host, best.host)) best = c;
    }
    n.initiatorGuestNodeId = best?.initiator ?? (initiators[0] as number);
  }
  const access1Initiator = new Map(nodes.map((n) => [n.guestNodeId, n.initiatorGuestNodeId]));

  const label = (i: number) => `initiator=${raw[i]?.initiator} target=${raw[i]?.target}`;
  const lat = encodeLatencyLists(raw, rounding, label);
  const guestLatency = raw.map((_, idx) => ({
    read: hmatNormalize(lat.read.entries[idx] ?? 0, lat.read.entryBaseUnit, 'read-latency'),
    write: hmatNormalize(lat.write.entries[idx] ?? 0, lat.write.entryBaseUnit, 'write-latency'),
  }));

  /** Encodes bandwidths (MiB/s) divided by k; checks the guest's adistance arithmetic. */
  const attempt = (readMiB: number[], writeMiB: number[], k: number): BandwidthAttempt | DomainError => {
    let read: EncodedHmatList;
    let write: EncodedHmatList;
    try {
      read = encodeBandwidths('read-bandwidth', readMiB.map((v) => (v / k) * MiB), label);
      write = encodeBandwidths('write-bandwidth', writeMiB.map((v) => (v / k) * MiB), label);
    } catch (e) {
      if (isDomainError(e)) return e;
      throw e;
    }
    const guest = raw.map((_, idx) => ({
      readLatencyNs: guestLatency[idx]?.read ?? 0,
      writeLatencyNs: guestLatency[idx]?.write ?? 0,
      readBandwidthMBps: hmatNormalize(read.entries[idx] ?? 0, read.entryBaseUnit, 'read-bandwidth'),
      writeBandwidthMBps: hmatNormalize(write.entries[idx] ?? 0, write.entryBaseUnit, 'write-bandwidth'),
    }));
    const wrap = adistWrap(guest, initiators, targets, access1Initiator);
    if (wrap) return wrap;
    return { read, write, guest, divisor: k, readMiB, writeMiB };
  };

  /** k = 1, else the smallest common divisor of every bandwidth that makes them fit. */
  const exactSearch = (readMiB: number[], writeMiB: number[]): BandwidthAttempt | DomainError => {
    const first = attempt(readMiB, writeMiB, 1);
    if (!(first instanceof DomainError) || first.reason === 'HMAT_ADIST_LATENCY_OVERFLOW') return first;
    for (const k of divisorsAscending([...readMiB, ...writeMiB].reduce(gcd))) {
      if (k === 1) continue;
      const r = attempt(readMiB, writeMiB, k);
      if (!(r instanceof DomainError)) return r;
    }
    return first;
  };

  const hostRead = raw.map((c) => c.host.readBandwidthMBps);
  const hostWrite = raw.map((c) => c.host.writeBandwidthMBps);
  let bw = exactSearch(hostRead, hostWrite);
  let bandwidthGranularity = 1;
  if (bw instanceof DomainError && rounding === 'round' && bw.reason !== 'HMAT_ADIST_LATENCY_OVERFLOW') {
    // Coarsen to multiples of 2^j MiB/s (nearest, never below one unit) until the lists fit.
    for (let g = 2; g <= 2 ** 40; g *= 2) {
      const r = exactSearch(hostRead.map((v) => roundTo(v, g)), hostWrite.map((v) => roundTo(v, g)));
      if (!(r instanceof DomainError)) {
        bw = r;
        bandwidthGranularity = g;
        break;
      }
    }
  }
  if (bw instanceof DomainError) {
    if (bw.reason === 'HMAT_ADIST_LATENCY_OVERFLOW') throw bw;
    throw new DomainError(
      bw.code,
      bw.reason,
      `${bw.message}; no common divisor of all bandwidths makes it representable while keeping their ratios` +
        (rounding === 'exact' ? " (policy hmatRounding 'round' would round them to a coarser granularity instead)" : ''),
      [],
      bw.metadata,
    );
  }
  const { read, write, guest, divisor, readMiB, writeMiB } = bw;

  const cells: HmatCell[] = raw.map((c, idx) => {
    const cell: HmatCell = {
      initiator: c.initiator,
      target: c.target,
      host: c.host,
      qemu: {
        readLatencyNs: lat.readNs[idx] as number,
        writeLatencyNs: lat.writeNs[idx] as number,
        readBandwidthBps: ((readMiB[idx] as number) / divisor) * MiB,
        writeBandwidthBps: ((writeMiB[idx] as number) / divisor) * MiB,
      },
      guest: guest[idx] as PerfValues,
    };
    if (c.derivation) cell.derivation = c.derivation;
    return cell;
  });

  const structure = (dataType: HmatDataType, enc: EncodedHmatList): HmatStructure => ({
    dataType,
    qemuBase: enc.qemuBase,
    entryBaseUnit: enc.entryBaseUnit,
    entries: initiators.map((_, ii) => enc.entries.slice(ii * targets.length, (ii + 1) * targets.length)),
  });
  const plan: HmatPlan = {
    initiators,
    targets,
    cells,
    bandwidthDivisor: divisor,
    rounding: { latencyGranularityNs: lat.granularityNs, bandwidthGranularityMBps: bandwidthGranularity },
    structures: [
      structure('read-latency', lat.read),
      structure('write-latency', lat.write),
      structure('read-bandwidth', read),
      structure('write-bandwidth', write),
    ],
  };
  if (divisor !== 1)
    plan.bandwidthDivisorReason = `all bandwidths divided by ${divisor} (ratios and tiers unchanged) so that QEMU can encode them and the guest's u32 adistance arithmetic does not wrap`;
  return plan;
}

interface BandwidthAttempt {
  read: EncodedHmatList;
  write: EncodedHmatList;
  guest: PerfValues[];
  divisor: number;
  /** Values (MiB/s, before the divisor) actually encoded. */
  readMiB: number[];
  writeMiB: number[];
}

/** Nearest multiple of g, never below g (0 would read as "no data"). */
function roundTo(v: number, g: number): number {
  return Math.max(g, Math.round(v / g) * g);
}

/**
 * Latencies are encoded as given; with rounding 'round', a range too wide for one base is
 * rounded to the nearest multiple of the smallest power of ten that makes it fit.
 */
function encodeLatencyLists(
  raw: RawCell[],
  rounding: HmatRounding,
  label: (i: number) => string,
): { read: EncodedHmatList; write: EncodedHmatList; readNs: number[]; writeNs: number[]; granularityNs: number } {
  const readNs = raw.map((c) => c.host.readLatencyNs);
  const writeNs = raw.map((c) => c.host.writeLatencyNs);
  try {
    return { read: encodeLatencies('read-latency', readNs, label), write: encodeLatencies('write-latency', writeNs, label), readNs, writeNs, granularityNs: 1 };
  } catch (e) {
    if (rounding !== 'round' || !isDomainError(e)) throw e;
    for (let g = 10; g <= 1e6; g *= 10) {
      const r = readNs.map((v) => roundTo(v, g));
      const w = writeNs.map((v) => roundTo(v, g));
      try {
        return { read: encodeLatencies('read-latency', r, label), write: encodeLatencies('write-latency', w, label), readNs: r, writeNs: w, granularityNs: g };
      } catch {
        // try the next power of ten
      }
    }
    throw e;
  }
}

function isBetterInitiator(a: PerfValues, b: PerfValues): boolean {
  const la = a.readLatencyNs + a.writeLatencyNs;
  const lb = b.readLatencyNs + b.writeLatencyNs;
  if (la !== lb) return la < lb;
  return a.readBandwidthMBps + a.writeBandwidthMBps > b.readBandwidthMBps + b.writeBandwidthMBps;
}

/**
 * The kernel's reference is the lowest-id CPU node (all CPU nodes have boot memory and so an
 * HMAT target); each node's access1 is the cell from its initiator. Returns an error if any
 * node's calculation would wrap u32 or not fit the int it is stored in.
 */
function adistWrap(
  guest: PerfValues[],
  initiators: number[],
  targets: number[],
  access1Initiator: Map<number, number>,
): DomainError | undefined {
  const at = (i: number, t: number) => guest[i * targets.length + t] as PerfValues;
  const refNode = initiators[0] as number;
  const ref = at(refNode, refNode);
  for (const t of targets) {
    const perf = at(access1Initiator.get(t) as number, t);
    const r = mtPerfToAdistance(perf, ref);
    if (!r.ok) continue;
    const [s1] = r.calculation.steps;
    const lt = r.calculation.latencySumNs;
    if (576 * lt >= 2 ** 32)
      return new DomainError(
        'FAILED_PRECONDITION',
        'HMAT_ADIST_LATENCY_OVERFLOW',
        `guest node ${t}'s latency sum ${lt} ns makes 576·Lt = ${576 * lt} ≥ 2^32 in mt_perf_to_adistance (mm/memory-tiers.c); ` +
          `the kernel's u32 arithmetic would wrap and no bandwidth rescaling can fix it`,
        [],
        { guestNodeId: String(t) },
      );
    if (r.calculation.wrapped || r.adistance < 0) {
      const db = r.calculation.referenceBandwidthSumMBps;
      return new DomainError(
        'FAILED_PRECONDITION',
        'HMAT_ADIST_WRAP',
        `guest node ${t}: floor(576·Lt/DL)·DB = ${Math.floor(s1 / r.calculation.referenceLatencySumNs)}·${db} ≥ 2^32 ` +
          `(or the result exceeds INT_MAX): the kernel's u32 adistance arithmetic would wrap (mm/memory-tiers.c mt_perf_to_adistance, domain-spec G5)`,
        [],
        { guestNodeId: String(t), referenceBandwidthSumMBps: String(db) },
      );
    }
  }
  return undefined;
}

function gcd(a: number, b: number): number {
  while (b !== 0) [a, b] = [b, a % b];
  return a;
}

function divisorsAscending(n: number): number[] {
  const small: number[] = [];
  const large: number[] = [];
  for (let d = 1; d * d <= n; d++) {
    if (n % d !== 0) continue;
    small.push(d);
    if (d * d !== n) large.push(n / d);
  }
  return [...small, ...large.reverse()];
}
