/**
 * The ledger's invariants, checked over any state (also a corrupt one read
 * back from the database). Used before every operation, by the tests, and by
 * the benchmark's final check.
 */
import { isPowerOfTwo } from '../units';
import { sortExtents, type LedgerExtent, type LedgerState } from './ledger-state';

export interface LedgerOverlap {
  readonly first: LedgerExtent;
  readonly second: LedgerExtent;
  readonly overlapBytes: number;
}

export interface LedgerInvariantReport {
  readonly ok: boolean;
  /** capacity or granule unusable, or an extent with a bad number or group id. */
  readonly invalid: readonly string[];
  readonly overlaps: readonly LedgerOverlap[];
  /** Extents reaching past capacityBytes. */
  readonly overCapacity: readonly LedgerExtent[];
  /** Extents whose offset or size is not a multiple of granuleBytes. */
  readonly misaligned: readonly LedgerExtent[];
}

export function checkLedgerInvariants(state: LedgerState): LedgerInvariantReport {
  const invalid: string[] = [];
  const overCapacity: LedgerExtent[] = [];
  const misaligned: LedgerExtent[] = [];
  const overlaps: LedgerOverlap[] = [];
  const { capacityBytes: cap, granuleBytes: granule } = state;

  if (!Number.isSafeInteger(cap) || cap <= 0) invalid.push(`capacityBytes ${String(cap)} is not a positive safe integer`);
  const granuleOk = isPowerOfTwo(granule);
  if (!granuleOk) invalid.push(`granuleBytes ${String(granule)} is not a power of two`);

  const valid: LedgerExtent[] = [];
  for (const e of state.extents) {
    const bad =
      typeof e.groupId !== 'string' ||
      e.groupId.length === 0 ||
      !Number.isSafeInteger(e.offsetBytes) ||
      !Number.isSafeInteger(e.sizeBytes) ||
      e.offsetBytes < 0 ||
      e.sizeBytes <= 0 ||
      !Number.isSafeInteger(e.offsetBytes + e.sizeBytes);
    if (bad) {
      invalid.push(`extent ${JSON.stringify(e)} needs a group id, an offset ≥ 0 and a size > 0 in safe integers`);
      continue;
    }
    valid.push(e);
    if (e.offsetBytes + e.sizeBytes > cap) overCapacity.push(e);
    if (granuleOk && (e.offsetBytes % granule !== 0 || e.sizeBytes % granule !== 0)) misaligned.push(e);
  }

  // Sweep by offset, comparing each extent with the one reaching furthest so far:
  // every overlapping extent is reported at least once, in O(n log n).
  let reach: LedgerExtent | undefined;
  for (const e of sortExtents(valid)) {
    if (reach && e.offsetBytes < reach.offsetBytes + reach.sizeBytes) {
      const overlapBytes = Math.min(reach.offsetBytes + reach.sizeBytes, e.offsetBytes + e.sizeBytes) - e.offsetBytes;
      overlaps.push({ first: reach, second: e, overlapBytes });
    }
    if (!reach || e.offsetBytes + e.sizeBytes > reach.offsetBytes + reach.sizeBytes) reach = e;
  }

  return {
    ok: invalid.length === 0 && overlaps.length === 0 && overCapacity.length === 0 && misaligned.length === 0,
    invalid,
    overlaps,
    overCapacity,
    misaligned,
  };
}
