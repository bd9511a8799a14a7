/**
 * Pure ledger operations: each takes a state and returns a new one (the input
 * is never mutated) plus the extent diff to persist.
 *
 * Policy:
 * - Holdings are whole granules (requests are rounded up).
 * - A new holding takes the smallest free extent that fits (best fit; ties go to
 *   the lowest offset), which keeps large free extents whole for large groups.
 * - Growing first extends the group's last extent (its highest offset) in place,
 *   which keeps a group in one extent as long as the space after it is free;
 *   otherwise the growth is a new best-fit extent.
 * - A holding may span several extents: when no single free extent fits but the
 *   pool's free bytes do, the request takes the largest free extents whole
 *   (fewest pieces) and a best-fit piece for the rest. Pools are host NUMA nodes
 *   whose backend (memory-backend-ram, host-nodes=, policy=bind) needs no
 *   physical contiguity, so refusing would waste capacity. `contiguous: true`
 *   turns this off for backends that map one range (a devdax file at an offset):
 *   then a holding is one extent and can only grow in place.
 * - Shrinking gives back the end: the highest offsets first.
 * - A group's adjacent extents are merged, and free space is never stored, so
 *   it is always coalesced.
 */
import { DomainError, type FieldViolation } from '../errors';
import { formatBytes } from '../units';
import { checkLedgerInvariants } from './invariants';
import {
  corruptLedger,
  freeFromSorted,
  holdingBytes,
  sortExtents,
  usableCapacityBytes,
  type FreeExtent,
  type LedgerExtent,
  type LedgerState,
} from './ledger-state';

export interface LedgerOptions {
  /** Keep every holding in one extent (see the policy above). Default false. */
  contiguous?: boolean;
}

export interface LedgerChange {
  readonly state: LedgerState;
  readonly groupId: string;
  /** What the group holds now. */
  readonly heldBytes: number;
  /** The group's extents now, by offset. */
  readonly groupExtents: readonly LedgerExtent[];
  /** Rows to insert and rows to delete, to turn the stored extents into `state.extents`. */
  readonly added: readonly LedgerExtent[];
  readonly removed: readonly LedgerExtent[];
}

/** A group that holds nothing yet takes `bytes` (rounded up to the granule). */
export function ledgerReserve(state: LedgerState, groupId: string, bytes: number, opts: LedgerOptions = {}): LedgerChange {
  const ctx = prepare(state, groupId, bytes);
  if (ctx.own.length > 0) {
    throw DomainError.exists(
      'POOL_LEDGER_GROUP_EXISTS',
      `group ${groupId} already holds ${formatBytes(sum(ctx.own))} of this pool; resize it instead`,
      { groupId },
    );
  }
  return change(state, ctx, grow(state, ctx, holdingBytes(bytes, state.granuleBytes), opts));
}

/** The group's holding becomes `bytes` rounded up to the granule: grows, shrinks or stays. */
export function ledgerResize(state: LedgerState, groupId: string, bytes: number, opts: LedgerOptions = {}): LedgerChange {
  const ctx = prepare(state, groupId, bytes);
  const target = holdingBytes(bytes, state.granuleBytes);
  const held = sum(ctx.own);
  if (target > held) return change(state, ctx, grow(state, ctx, target - held, opts));
  if (target < held) return change(state, ctx, shrink(ctx.own, held - target));
  return change(state, ctx, ctx.own);
}

/** Drops everything the group holds; releasing a group that holds nothing is a no-op (safe to repeat). */
export function ledgerRelease(state: LedgerState, groupId: string): LedgerChange {
  const ctx = prepare(state, groupId, 0);
  return change(state, ctx, []);
}

interface Context {
  readonly groupId: string;
  readonly sorted: readonly LedgerExtent[];
  readonly own: readonly LedgerExtent[];
  readonly others: readonly LedgerExtent[];
}

function prepare(state: LedgerState, groupId: string, bytes: number): Context {
  const report = checkLedgerInvariants(state);
  if (!report.ok) {
    const parts = [
      ...report.invalid,
      ...report.overlaps.map((o) => `overlap of ${o.overlapBytes} B between ${o.first.groupId} and ${o.second.groupId}`),
      ...report.overCapacity.map((e) => `extent of ${e.groupId} at ${e.offsetBytes} ends past capacity ${state.capacityBytes}`),
      ...report.misaligned.map((e) => `extent of ${e.groupId} at ${e.offsetBytes} (+${e.sizeBytes}) is not granule-aligned`),
    ];
    throw corruptLedger(`pool ledger breaks its invariants: ${parts.join('; ')}`);
  }
  const violations: FieldViolation[] = [];
  if (typeof groupId !== 'string' || groupId.length === 0) violations.push({ field: 'groupId', description: 'groupId must be a non-empty string' });
  if (!Number.isSafeInteger(bytes) || bytes < 0) {
    violations.push({ field: 'sizeBytes', description: `sizeBytes ${String(bytes)} must be an integer number of bytes ≥ 0` });
  }
  if (violations.length > 0) throw DomainError.invalid('INVALID_LEDGER_REQUEST', violations);
  const sorted = sortExtents(state.extents);
  return {
    groupId,
    sorted,
    own: sorted.filter((e) => e.groupId === groupId),
    others: sorted.filter((e) => e.groupId !== groupId),
  };
}

/** Returns the group's new extents after adding `delta` bytes (a granule multiple > 0). */
function grow(state: LedgerState, ctx: Context, delta: number, opts: LedgerOptions): LedgerExtent[] {
  if (delta === 0) return [...ctx.own];
  const free = freeFromSorted(ctx.sorted, usableCapacityBytes(state));
  const freeBytes = sum(free);
  const largest = largestFirst(free)[0];
  const largestBytes = largest?.sizeBytes ?? 0;
  const numbers = { groupId: ctx.groupId, neededBytes: String(delta), freeBytes: String(freeBytes), largestFreeBytes: String(largestBytes) };
  const tail = `needed ${formatBytes(delta)}, free ${formatBytes(freeBytes)}, largest free extent ${formatBytes(largestBytes)}`;

  if (delta > freeBytes) {
    throw new DomainError('RESOURCE_EXHAUSTED', 'POOL_CAPACITY_EXHAUSTED', `pool cannot hold ${formatBytes(delta)} more for group ${ctx.groupId}: ${tail}`, [], numbers);
  }
  const last = ctx.own[ctx.own.length - 1];
  if (last) {
    const end = last.offsetBytes + last.sizeBytes;
    const after = free.find((f) => f.offsetBytes === end);
    if (after && after.sizeBytes >= delta) {
      return [...ctx.own.slice(0, -1), { ...last, sizeBytes: last.sizeBytes + delta }];
    }
    if (opts.contiguous) {
      throw DomainError.precondition(
        'POOL_EXTENT_NOT_EXTENDABLE',
        `group ${ctx.groupId} must stay contiguous but only ${formatBytes(after?.sizeBytes ?? 0)} is free after its end at ${formatBytes(end)}: ${tail}`,
        { ...numbers, freeAfterEndBytes: String(after?.sizeBytes ?? 0) },
      );
    }
  }
  const fit = bestFit(free, delta);
  if (fit) return mergeOwn([...ctx.own, { groupId: ctx.groupId, offsetBytes: fit.offsetBytes, sizeBytes: delta }]);
  if (opts.contiguous) {
    throw DomainError.precondition('POOL_FRAGMENTED', `no single free extent of the pool fits group ${ctx.groupId}: ${tail}`, numbers);
  }
  return mergeOwn([...ctx.own, ...split(free, delta).map((p) => ({ groupId: ctx.groupId, ...p }))]);
}

/** Smallest free extent of at least `bytes`; ties go to the lowest offset (free is sorted by offset). */
function bestFit(free: readonly FreeExtent[], bytes: number): FreeExtent | undefined {
  let best: FreeExtent | undefined;
  for (const f of free) if (f.sizeBytes >= bytes && (!best || f.sizeBytes < best.sizeBytes)) best = f;
  return best;
}

function largestFirst(free: readonly FreeExtent[]): FreeExtent[] {
  return [...free].sort((a, b) => b.sizeBytes - a.sizeBytes || a.offsetBytes - b.offsetBytes);
}

/** Pieces for `bytes` when no single extent fits: largest extents whole, then a best-fit remainder. */
function split(free: readonly FreeExtent[], bytes: number): FreeExtent[] {
  const pieces: FreeExtent[] = [];
  let pool = sortExtents(free);
  let remaining = bytes;
  while (remaining > 0) {
    const fit = bestFit(pool, remaining);
    if (fit) {
      pieces.push({ offsetBytes: fit.offsetBytes, sizeBytes: remaining });
      break;
    }
    const largest = largestFirst(pool)[0];
    if (!largest) throw new Error('unreachable: free space was counted before splitting');
    pieces.push(largest);
    remaining -= largest.sizeBytes;
    pool = pool.filter((f) => f !== largest);
  }
  return pieces;
}

/** Gives back `delta` bytes from the highest offsets. */
function shrink(own: readonly LedgerExtent[], delta: number): LedgerExtent[] {
  const kept = [...own];
  let remaining = delta;
  while (remaining > 0) {
    const last = kept.pop();
    if (!last) throw new Error('unreachable: shrinking below zero');
    if (last.sizeBytes > remaining) {
      kept.push({ ...last, sizeBytes: last.sizeBytes - remaining });
      remaining = 0;
    } else {
      remaining -= last.sizeBytes;
    }
  }
  return kept;
}

function mergeOwn(extents: readonly LedgerExtent[]): LedgerExtent[] {
  const out: LedgerExtent[] = [];
  for (const e of sortExtents(extents)) {
    const prev = out[out.length - 1];
    if (prev && prev.offsetBytes + prev.sizeBytes === e.offsetBytes) {
      out[out.length - 1] = { ...prev, sizeBytes: prev.sizeBytes + e.sizeBytes };
    } else {
      out.push(e);
    }
  }
  return out;
}

function change(state: LedgerState, ctx: Context, ownAfter: readonly LedgerExtent[]): LedgerChange {
  const key = (e: LedgerExtent) => `${e.offsetBytes}+${e.sizeBytes}`;
  const before = new Set(ctx.own.map(key));
  const after = new Set(ownAfter.map(key));
  return {
    state: { ...state, extents: sortExtents([...ctx.others, ...ownAfter]) },
    groupId: ctx.groupId,
    heldBytes: sum(ownAfter),
    groupExtents: ownAfter,
    added: ownAfter.filter((e) => !before.has(key(e))),
    removed: ctx.own.filter((e) => !after.has(key(e))),
  };
}

function sum(extents: readonly { sizeBytes: number }[]): number {
  return extents.reduce((s, e) => s + e.sizeBytes, 0);
}
