/**
 * The pool ledger: which part of a pool's capacity each memory group holds.
 *
 * The state is plain data so the persistence layer can load it under a row lock
 * on the pool, run one of the pure operations in allocator.ts, and write the
 * returned extents back in the same transaction.
 */
import { DomainError, Violations } from '../errors';
import { DEFAULT_GRANULE_BYTES } from '../inventory/pool';
import { alignDown, alignUp, formatBytes, isPowerOfTwo } from '../units';

export interface LedgerExtent {
  readonly groupId: string;
  readonly offsetBytes: number;
  readonly sizeBytes: number;
}

export interface LedgerState {
  readonly capacityBytes: number;
  /** Power of two; every extent's offset and size is a multiple of it. */
  readonly granuleBytes: number;
  readonly extents: readonly LedgerExtent[];
}

export interface FreeExtent {
  readonly offsetBytes: number;
  readonly sizeBytes: number;
}

export interface LedgerUsage {
  readonly capacityBytes: number;
  /**
   * capacity rounded down to the granule: a ragged tail of a capacity that is
   * not a granule multiple is never handed out.
   */
  readonly usableCapacityBytes: number;
  readonly allocatedBytes: number;
  readonly freeBytes: number;
  readonly largestFreeBytes: number;
  readonly freeExtentCount: number;
  /**
   * 1 − largestFree / free, in basis points (0 … 9999), rounded down; 0 when
   * nothing is free. It answers "how much of the free space cannot serve one
   * contiguous request": 0 = all free space is one extent.
   */
  readonly fragmentationBasisPoints: number;
}

export function emptyLedger(capacityBytes: number, granuleBytes = DEFAULT_GRANULE_BYTES): LedgerState {
  const v = new Violations();
  if (!Number.isSafeInteger(capacityBytes) || capacityBytes <= 0) {
    v.add('capacityBytes', `capacityBytes ${String(capacityBytes)} must be a positive integer number of bytes`);
  }
  if (!isPowerOfTwo(granuleBytes)) {
    v.add('granuleBytes', `granuleBytes ${String(granuleBytes)} must be a power of two`);
  }
  v.throwIfAny('INVALID_POOL_LEDGER');
  return { capacityBytes, granuleBytes, extents: [] };
}

export function usableCapacityBytes(state: LedgerState): number {
  return alignDown(state.capacityBytes, state.granuleBytes);
}

/** Bytes a group holds for `bytes` of memory: rounded up to the granule. */
export function holdingBytes(bytes: number, granuleBytes: number): number {
  return alignUp(bytes, granuleBytes);
}

/**
 * What a memory group holds in its pool: a STATIC group its whole size, a
 * DYNAMIC group its requested size (not its max: unrequested virtio-mem space
 * is never backed by the host), both rounded up to the granule.
 */
export function groupHoldingBytes(
  group: { kind: 'STATIC'; sizeBytes: number } | { kind: 'DYNAMIC'; requestedBytes: number },
  granuleBytes: number,
): number {
  return holdingBytes(group.kind === 'STATIC' ? group.sizeBytes : group.requestedBytes, granuleBytes);
}

export function sortExtents<T extends FreeExtent>(extents: readonly T[]): T[] {
  return [...extents].sort((a, b) => a.offsetBytes - b.offsetBytes);
}

/** Maximal free ranges of [0, usable capacity), by offset; adjacent free space is always one range. */
export function ledgerFreeExtents(state: LedgerState): FreeExtent[] {
  return freeFromSorted(sortExtents(state.extents), usableCapacityBytes(state));
}

export function freeFromSorted(sorted: readonly FreeExtent[], usableBytes: number): FreeExtent[] {
  const free: FreeExtent[] = [];
  let cursor = 0;
  for (const e of sorted) {
    if (e.offsetBytes > cursor) free.push({ offsetBytes: cursor, sizeBytes: e.offsetBytes - cursor });
    cursor = Math.max(cursor, e.offsetBytes + e.sizeBytes);
  }
  if (cursor < usableBytes) free.push({ offsetBytes: cursor, sizeBytes: usableBytes - cursor });
  return free;
}

export function ledgerGroupExtents(state: LedgerState, groupId: string): LedgerExtent[] {
  return sortExtents(state.extents.filter((e) => e.groupId === groupId));
}

export function ledgerGroupBytes(state: LedgerState, groupId: string): number {
  return state.extents.reduce((sum, e) => (e.groupId === groupId ? sum + e.sizeBytes : sum), 0);
}

export function ledgerUsage(state: LedgerState): LedgerUsage {
  const usable = usableCapacityBytes(state);
  const free = ledgerFreeExtents(state);
  const freeBytes = free.reduce((sum, f) => sum + f.sizeBytes, 0);
  const largestFreeBytes = free.reduce((max, f) => Math.max(max, f.sizeBytes), 0);
  return {
    capacityBytes: state.capacityBytes,
    usableCapacityBytes: usable,
    allocatedBytes: state.extents.reduce((sum, e) => sum + e.sizeBytes, 0),
    freeBytes,
    largestFreeBytes,
    freeExtentCount: free.length,
    fragmentationBasisPoints: fragmentationBasisPoints(freeBytes, largestFreeBytes),
  };
}

/** floor((free − largest) · 10000 / free), in BigInt: free · 10000 can pass 2^53. */
export function fragmentationBasisPoints(freeBytes: number, largestFreeBytes: number): number {
  if (freeBytes <= 0) return 0;
  return Number((BigInt(freeBytes - largestFreeBytes) * 10000n) / BigInt(freeBytes));
}

/** For display only ("12.34 %"); stored and compared figures stay integers. */
export function formatBasisPoints(bp: number): string {
  return `${Math.floor(bp / 100)}.${String(bp % 100).padStart(2, '0')} %`;
}

export function describeExtent(e: FreeExtent): string {
  return `[${formatBytes(e.offsetBytes)}, +${formatBytes(e.sizeBytes)})`;
}

/** A state the operations refuse to touch: its stored extents break an invariant. */
export function corruptLedger(message: string): DomainError {
  return new DomainError('INTERNAL', 'POOL_LEDGER_CORRUPT', message);
}
