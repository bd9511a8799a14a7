import { DomainError } from '../errors';
import { MiB } from '../units';
import type { HmatDataType } from './types';

/**
 * QEMU's HMAT encoding and what the guest kernel decodes from it.
 *
 * QEMU (hw/core/numa.c parse_numa_hmat_lb, hw/acpi/hmat.c build_hmat_lb) keeps one base per
 * (hierarchy, data type) list and writes every entry as a u16 `value / base`:
 * - latency: base = the minimum over the values of the largest power of 10 dividing each; the
 *   ACPI Entry Base Unit is base·1000 ps, computed into a u32;
 * - bandwidth (B/s, must be 1 MiB aligned): base = 2^ctz(OR of the values); the Entry Base Unit
 *   is base/2^20 "MB/s", i.e. the guest's MB/s are MiB/s.
 * QEMU's own range checks compare against the base known *so far*, so they depend on option
 * order, and the final `(uint16_t)(data / base)` is not checked at all: an entry above 0xFFFF
 * silently wraps. We therefore check the final base ourselves: every entry ≤ 65534 (0xFFFF
 * reads as "no data"), and for bandwidth highbit−lowbit ≤ 16. These final checks imply that
 * QEMU's incremental checks pass in any option order (its bases only shrink).
 *
 * The kernel (drivers/acpi/numa/hmat.c hmat_normalize) reads entry 0 or 0xFFFF as 0, returns 0
 * when base > UINT_MAX/entry, else entry·base, converted for HMAT revision 2 (QEMU's) from ps
 * to ns with DIV_ROUND_UP for latencies.
 */

export const HMAT_ENTRY_MAX = 0xfffe;
const U32_MAX = 0xffffffff;

/** Names the pair behind value i in error messages, e.g. `initiator=0 target=1`. */
export type HmatValueLabel = (index: number) => string;
const byIndex: HmatValueLabel = (i) => `entry ${i}`;

export interface EncodedHmatList {
  /** ns (latency) or B/s (bandwidth). */
  qemuBase: number;
  /** ps (latency) or MB/s (bandwidth), as written to the ACPI table. */
  entryBaseUnit: number;
  /** One u16 entry per input value, same order. */
  entries: number[];
}

export function isLatencyType(t: HmatDataType): boolean {
  return t.endsWith('latency');
}

function largestPowerOf10Dividing(v: number): number {
  let p = 1;
  while (v % (p * 10) === 0) p *= 10;
  return p;
}

/** Values in ns; 0 = not given. */
export function encodeLatencies(dataType: HmatDataType, values: readonly number[], label: HmatValueLabel = byIndex): EncodedHmatList {
  let base = Number.POSITIVE_INFINITY;
  for (const v of values) if (v > 0) base = Math.min(base, largestPowerOf10Dividing(v));
  if (!Number.isFinite(base)) base = 1;
  const entries = values.map((v) => v / base);
  let maxAt = 0;
  let minAt = -1;
  values.forEach((v, i) => {
    if (v > (values[maxAt] ?? 0)) maxAt = i;
    if (v > 0 && (minAt < 0 || v < (values[minAt] ?? 0))) minAt = i;
  });
  const maxV = values[maxAt] ?? 0;
  const maxEntry = entries[maxAt] ?? 0;
  if (maxEntry > HMAT_ENTRY_MAX) {
    const minV = values[minAt] ?? maxV;
    throw new DomainError(
      'FAILED_PRECONDITION',
      'HMAT_LATENCY_NOT_REPRESENTABLE',
      `HMAT ${dataType} range too wide: values ${minV} ns (${label(minAt)}) to ${maxV} ns (${label(maxAt)}) ` +
        `share one base of ${base} ns (the largest power of 10 dividing every value), giving entry ${maxEntry} > ${HMAT_ENTRY_MAX}; ` +
        `HMAT entries are u16 (hw/acpi/hmat.c build_hmat_lb) — round the latencies to a common power of ten or narrow their range`,
      [],
      { dataType, baseNs: String(base), maxEntry: String(maxEntry) },
    );
  }
  const entryBaseUnit = base * 1000;
  if (entryBaseUnit > U32_MAX || (maxEntry > 0 && hmatNormalize(maxEntry, entryBaseUnit, dataType) === 0))
    throw new DomainError(
      'FAILED_PRECONDITION',
      'HMAT_LATENCY_NOT_REPRESENTABLE',
      `HMAT ${dataType} ${maxV} ns overflows the kernel's u32 picoseconds (entry·base > ${U32_MAX} in hmat_normalize, drivers/acpi/numa/hmat.c)`,
      [],
      { dataType },
    );
  return { qemuBase: base, entryBaseUnit, entries };
}

function ctz(v: number): number {
  const lo = v % 2 ** 32;
  if (lo !== 0) return 31 - Math.clz32(lo & -lo);
  const hi = Math.floor(v / 2 ** 32);
  return 32 + 31 - Math.clz32(hi & -hi);
}

/** 1-based position of the highest set bit (QEMU's `64 - clz64(x)`). */
function highBit(v: number): number {
  const hi = Math.floor(v / 2 ** 32);
  if (hi > 0) return 64 - Math.clz32(hi);
  return 32 - Math.clz32(v >>> 0);
}

/** Values in B/s; 0 = not given. */
export function encodeBandwidths(dataType: HmatDataType, values: readonly number[], label: HmatValueLabel = byIndex): EncodedHmatList {
  let first = 64;
  let last = 0;
  let minAt = -1;
  let maxAt = -1;
  values.forEach((v, i) => {
    if (v === 0) return;
    if (v % MiB !== 0)
      throw new DomainError(
        'FAILED_PRECONDITION',
        'HMAT_BANDWIDTH_NOT_MIB_ALIGNED',
        `HMAT ${dataType} ${v} B/s (${label(i)}) should be 1MB aligned: QEMU refuses bandwidths that are not a multiple of 1 MiB/s (hw/core/numa.c parse_numa_hmat_lb)`,
        [],
        { dataType, bandwidthBps: String(v) },
      );
    first = Math.min(first, ctz(v));
    last = Math.max(last, highBit(v));
    if (minAt < 0 || v < (values[minAt] ?? 0)) minAt = i;
    if (maxAt < 0 || v > (values[maxAt] ?? 0)) maxAt = i;
  });
  if (maxAt < 0) return { qemuBase: MiB, entryBaseUnit: 1, entries: values.map(() => 0) };
  const minV = values[minAt] ?? 0;
  const maxV = values[maxAt] ?? 0;
  const base = 2 ** first;
  const entries = values.map((v) => v / base);
  const maxEntry = maxV / base;
  if (last - first > 16 || maxEntry > HMAT_ENTRY_MAX)
    throw new DomainError(
      'FAILED_PRECONDITION',
      'HMAT_BANDWIDTH_NOT_REPRESENTABLE',
      `HMAT ${dataType} values ${minV / MiB} MiB/s (${label(minAt)}) to ${maxV / MiB} MiB/s (${label(maxAt)}) ` +
        `need bits ${first}..${last - 1} of B/s: highbit−lowbit = ${last - first} (limit 16) and largest entry ${maxEntry} (limit ${HMAT_ENTRY_MAX}) ` +
        `with base 2^${first} B/s; one u16 entry list cannot hold them (hw/core/numa.c parse_numa_hmat_lb, hw/acpi/hmat.c build_hmat_lb)`,
      [],
      { dataType, lowBit: String(first), highBit: String(last), maxEntry: String(maxEntry) },
    );
  const entryBaseUnit = base / MiB;
  if (hmatNormalize(maxEntry, entryBaseUnit, dataType) === 0)
    throw new DomainError(
      'FAILED_PRECONDITION',
      'HMAT_BANDWIDTH_NOT_REPRESENTABLE',
      `HMAT ${dataType} ${maxV / MiB} MiB/s overflows the kernel's u32 (entry·base > ${U32_MAX} in hmat_normalize)`,
      [],
      { dataType },
    );
  return { qemuBase: base, entryBaseUnit, entries };
}

export function encodeHmatList(dataType: HmatDataType, values: readonly number[], label: HmatValueLabel = byIndex): EncodedHmatList {
  return isLatencyType(dataType) ? encodeLatencies(dataType, values, label) : encodeBandwidths(dataType, values, label);
}

/** drivers/acpi/numa/hmat.c hmat_normalize; ns for latencies, MB/s for bandwidths. */
export function hmatNormalize(entry: number, entryBaseUnit: number, dataType: HmatDataType, revision: 1 | 2 = 2): number {
  if (entry === 0xffff || entry === 0) return 0;
  if (entryBaseUnit > Math.floor(U32_MAX / entry)) return 0;
  const value = entry * entryBaseUnit;
  if (revision === 1) return value < 10 ? 0 : Math.ceil(value / 10);
  return isLatencyType(dataType) ? Math.ceil(value / 1000) : value;
}
