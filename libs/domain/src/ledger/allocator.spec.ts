import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { DomainError } from '../errors';
import { GiB, MiB } from '../units';
import { ledgerRelease, ledgerReserve, ledgerResize } from './allocator';
import { checkLedgerInvariants } from './invariants';
import {
  emptyLedger,
  formatBasisPoints,
  fragmentationBasisPoints,
  groupHoldingBytes,
  ledgerFreeExtents,
  ledgerGroupExtents,
  ledgerUsage,
  type LedgerExtent,
  type LedgerState,
} from './ledger-state';

const G = 128 * MiB; // default granule
const ext = (groupId: string, offsetG: number, sizeG: number): LedgerExtent => ({ groupId, offsetBytes: offsetG * G, sizeBytes: sizeG * G });
const state = (capacityG: number, extents: LedgerExtent[]): LedgerState => ({ capacityBytes: capacityG * G, granuleBytes: G, extents });
const spans = (s: LedgerState, groupId: string) => ledgerGroupExtents(s, groupId).map((e) => [e.offsetBytes / G, e.sizeBytes / G]);

function expectError(fn: () => unknown, code: string, reason: string): DomainError {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof DomainError, String(e));
    assert.equal(e.code, code, e.message);
    assert.equal(e.reason, reason, e.message);
    return e;
  }
  assert.fail('nothing thrown');
}

function deepFreeze<T>(o: T): T {
  if (o && typeof o === 'object') {
    for (const v of Object.values(o)) deepFreeze(v);
    Object.freeze(o);
  }
  return o;
}

describe('holdings', () => {
  const cases = [
    { name: 'STATIC 200 MiB → 256 MiB', g: { kind: 'STATIC' as const, sizeBytes: 200 * MiB }, held: 256 * MiB },
    { name: 'STATIC exactly one granule', g: { kind: 'STATIC' as const, sizeBytes: G }, held: G },
    { name: 'DYNAMIC requested 0 → nothing', g: { kind: 'DYNAMIC' as const, requestedBytes: 0 }, held: 0 },
    { name: 'DYNAMIC requested 2 MiB → one granule', g: { kind: 'DYNAMIC' as const, requestedBytes: 2 * MiB }, held: G },
    { name: 'DYNAMIC requested one granule + 2 MiB → two', g: { kind: 'DYNAMIC' as const, requestedBytes: G + 2 * MiB }, held: 2 * G },
  ];
  for (const c of cases) it(c.name, () => assert.equal(groupHoldingBytes(c.g, G), c.held));
});

describe('ledgerReserve', () => {
  it('rounds up to the granule and starts at offset 0 in an empty pool', () => {
    const r = ledgerReserve(emptyLedger(4 * GiB), 'g1', 200 * MiB);
    assert.deepEqual(r.groupExtents, [{ groupId: 'g1', offsetBytes: 0, sizeBytes: 256 * MiB }]);
    assert.equal(r.heldBytes, 256 * MiB);
    assert.deepEqual(r.added, r.groupExtents);
    assert.deepEqual(r.removed, []);
  });

  it('best fit: the smallest free extent that fits, ties to the lowest offset', () => {
    // free: [0,4) 4G, [5,7) 2G, [8,10) 2G, [11,16) 5G (in granules)
    const s = state(16, [ext('a', 4, 1), ext('b', 7, 1), ext('c', 10, 1)]);
    assert.deepEqual(spans(ledgerReserve(s, 'x', 2 * G).state, 'x'), [[5, 2]]);
    assert.deepEqual(spans(ledgerReserve(s, 'x', 3 * G).state, 'x'), [[0, 3]]);
    assert.deepEqual(spans(ledgerReserve(s, 'x', 5 * G).state, 'x'), [[11, 5]]);
    assert.deepEqual(spans(ledgerReserve(s, 'x', 1 * G).state, 'x'), [[5, 1]]);
  });

  it('exactly the free space fits; one granule more is RESOURCE_EXHAUSTED naming needed, free and largest free', () => {
    const s = state(8, [ext('a', 2, 2)]); // free 2G + 4G
    assert.doesNotThrow(() => ledgerReserve(s, 'x', 6 * G));
    const e = expectError(() => ledgerReserve(s, 'x', 7 * G), 'RESOURCE_EXHAUSTED', 'POOL_CAPACITY_EXHAUSTED');
    assert.equal(e.message, 'pool cannot hold 896 MiB more for group x: needed 896 MiB, free 768 MiB, largest free extent 512 MiB');
    assert.deepEqual(e.metadata, {
      groupId: 'x',
      neededBytes: String(7 * G),
      freeBytes: String(6 * G),
      largestFreeBytes: String(4 * G),
    });
  });

  it('splits over several extents when no single one fits: largest whole first, best-fit rest', () => {
    // free: [0,2) 2G, [3,6) 3G, [7,8) 1G
    const s = state(8, [ext('a', 2, 1), ext('b', 6, 1)]);
    const r = ledgerReserve(s, 'x', 4 * G);
    assert.deepEqual(spans(r.state, 'x'), [
      [3, 3],
      [7, 1],
    ]);
    assert.ok(checkLedgerInvariants(r.state).ok);
  });

  it('contiguous pools refuse to split: FAILED_PRECONDITION / POOL_FRAGMENTED', () => {
    const s = state(8, [ext('a', 2, 1), ext('b', 6, 1)]);
    const e = expectError(() => ledgerReserve(s, 'x', 4 * G, { contiguous: true }), 'FAILED_PRECONDITION', 'POOL_FRAGMENTED');
    assert.match(e.message, /needed 512 MiB, free 768 MiB, largest free extent 384 MiB/);
  });

  it('a group that already holds extents is ALREADY_EXISTS', () => {
    const r = ledgerReserve(emptyLedger(GiB), 'g', G);
    expectError(() => ledgerReserve(r.state, 'g', G), 'ALREADY_EXISTS', 'POOL_LEDGER_GROUP_EXISTS');
  });

  it('reserving 0 bytes holds nothing', () => {
    const r = ledgerReserve(emptyLedger(GiB), 'g', 0);
    assert.deepEqual(r.state.extents, []);
    assert.equal(r.heldBytes, 0);
  });

  const badRequests: { name: string; groupId: string; bytes: number; field: string }[] = [
    { name: 'negative size', groupId: 'g', bytes: -1, field: 'sizeBytes' },
    { name: 'fractional size', groupId: 'g', bytes: 1.5, field: 'sizeBytes' },
    { name: 'unsafe size', groupId: 'g', bytes: 2 ** 53, field: 'sizeBytes' },
    { name: 'empty group id', groupId: '', bytes: G, field: 'groupId' },
  ];
  for (const c of badRequests) {
    it(`refuses ${c.name} as INVALID_ARGUMENT`, () => {
      const e = expectError(() => ledgerReserve(emptyLedger(GiB), c.groupId, c.bytes), 'INVALID_ARGUMENT', 'INVALID_LEDGER_REQUEST');
      assert.deepEqual(e.violations.map((v) => v.field), [c.field]);
    });
  }
});

describe('ledgerResize', () => {
  it('grows in place when the space after the group is free', () => {
    const r = ledgerResize(state(8, [ext('g', 0, 2)]), 'g', 5 * G);
    assert.deepEqual(spans(r.state, 'g'), [[0, 5]]);
    assert.deepEqual(r.removed, [ext('g', 0, 2)]);
    assert.deepEqual(r.added, [ext('g', 0, 5)]);
  });

  it('grows in place even when a smaller gap elsewhere would fit (keeps the group in one extent)', () => {
    // g at [2,4), free after it [4,8); a 1-granule gap at [0,1) would be the best fit.
    const r = ledgerResize(state(8, [ext('a', 1, 1), ext('g', 2, 2)]), 'g', 3 * G);
    assert.deepEqual(spans(r.state, 'g'), [[2, 3]]);
  });

  it('adds a best-fit extent when the space after the group is taken', () => {
    const r = ledgerResize(state(8, [ext('g', 0, 2), ext('a', 2, 1)]), 'g', 4 * G);
    assert.deepEqual(spans(r.state, 'g'), [
      [0, 2],
      [3, 2],
    ]);
    assert.deepEqual(r.removed, []);
    assert.deepEqual(r.added, [ext('g', 3, 2)]);
  });

  it('merges a new extent that touches one of the group’s own extents', () => {
    // free [0,1) is the best fit for one granule and touches g at [1,2).
    const r = ledgerResize(state(4, [ext('g', 1, 1), ext('a', 2, 1)]), 'g', 2 * G);
    assert.deepEqual(spans(r.state, 'g'), [[0, 2]]);
  });

  it('contiguous pools only grow in place: FAILED_PRECONDITION / POOL_EXTENT_NOT_EXTENDABLE', () => {
    const s = state(8, [ext('g', 0, 2), ext('a', 3, 1)]);
    assert.deepEqual(spans(ledgerResize(s, 'g', 3 * G, { contiguous: true }).state, 'g'), [[0, 3]]);
    const e = expectError(() => ledgerResize(s, 'g', 4 * G, { contiguous: true }), 'FAILED_PRECONDITION', 'POOL_EXTENT_NOT_EXTENDABLE');
    assert.equal(e.metadata.freeAfterEndBytes, String(G));
  });

  it('growth beyond the free bytes is RESOURCE_EXHAUSTED', () => {
    const s = state(4, [ext('g', 0, 2), ext('a', 2, 1)]);
    assert.doesNotThrow(() => ledgerResize(s, 'g', 3 * G));
    const e = expectError(() => ledgerResize(s, 'g', 4 * G), 'RESOURCE_EXHAUSTED', 'POOL_CAPACITY_EXHAUSTED');
    assert.match(e.message, /needed 256 MiB, free 128 MiB, largest free extent 128 MiB/);
  });

  it('shrinking gives back the end: highest offsets first', () => {
    const s = state(16, [ext('g', 0, 2), ext('a', 2, 1), ext('g', 8, 3)]);
    assert.deepEqual(spans(ledgerResize(s, 'g', 4 * G).state, 'g'), [
      [0, 2],
      [8, 2],
    ]);
    assert.deepEqual(spans(ledgerResize(s, 'g', 2 * G).state, 'g'), [[0, 2]]);
    const r = ledgerResize(s, 'g', 1 * G);
    assert.deepEqual(spans(r.state, 'g'), [[0, 1]]);
    assert.deepEqual(r.removed, [ext('g', 0, 2), ext('g', 8, 3)]);
    assert.deepEqual(r.added, [ext('g', 0, 1)]);
  });

  it('shrinks to nothing, then grows again from nothing (DYNAMIC requested 0 → N)', () => {
    const s = state(4, [ext('g', 1, 2)]);
    const zero = ledgerResize(s, 'g', 0);
    assert.deepEqual(zero.state.extents, []);
    assert.deepEqual(spans(ledgerResize(zero.state, 'g', 2 * MiB).state, 'g'), [[0, 1]]);
  });

  it('a size within the same granule changes nothing', () => {
    const s = state(4, [ext('g', 0, 1)]);
    const r = ledgerResize(s, 'g', 100 * MiB);
    assert.deepEqual(r.state.extents, s.extents);
    assert.deepEqual([r.added, r.removed], [[], []]);
  });

  it('never mutates its input', () => {
    const s = deepFreeze(state(16, [ext('g', 0, 2), ext('a', 2, 1), ext('g', 8, 3)]));
    assert.doesNotThrow(() => ledgerResize(s, 'g', 10 * G));
    assert.doesNotThrow(() => ledgerResize(s, 'g', G));
    assert.doesNotThrow(() => ledgerRelease(s, 'g'));
    assert.doesNotThrow(() => ledgerReserve(s, 'x', G));
  });
});

describe('ledgerRelease and coalescing', () => {
  it('released space coalesces with its free neighbours', () => {
    const s = state(8, [ext('a', 0, 2), ext('b', 2, 2), ext('c', 4, 2)]);
    const noB = ledgerRelease(s, 'b').state;
    assert.deepEqual(ledgerFreeExtents(noB), [
      { offsetBytes: 2 * G, sizeBytes: 2 * G },
      { offsetBytes: 6 * G, sizeBytes: 2 * G },
    ]);
    const noC = ledgerRelease(noB, 'c').state;
    assert.deepEqual(ledgerFreeExtents(noC), [{ offsetBytes: 2 * G, sizeBytes: 6 * G }]);
    const empty = ledgerRelease(noC, 'a').state;
    assert.deepEqual(ledgerFreeExtents(empty), [{ offsetBytes: 0, sizeBytes: 8 * G }]);
  });

  it('releasing a group that holds nothing is a no-op (compensation may repeat)', () => {
    const s = state(8, [ext('a', 0, 2)]);
    const r = ledgerRelease(s, 'nobody');
    assert.deepEqual(r.state.extents, s.extents);
    assert.deepEqual(r.removed, []);
  });

  it('reports what to delete', () => {
    const r = ledgerRelease(state(8, [ext('a', 0, 2), ext('a', 4, 1)]), 'a');
    assert.deepEqual(r.removed, [ext('a', 0, 2), ext('a', 4, 1)]);
    assert.equal(r.heldBytes, 0);
  });
});

describe('ledgerUsage and fragmentation', () => {
  it('an empty pool is one free extent, 0 fragmentation', () => {
    assert.deepEqual(ledgerUsage(emptyLedger(4 * GiB)), {
      capacityBytes: 4 * GiB,
      usableCapacityBytes: 4 * GiB,
      allocatedBytes: 0,
      freeBytes: 4 * GiB,
      largestFreeBytes: 4 * GiB,
      freeExtentCount: 1,
      fragmentationBasisPoints: 0,
    });
  });

  it('a full pool has 0 free and 0 fragmentation', () => {
    const u = ledgerUsage(state(2, [ext('a', 0, 2)]));
    assert.equal(u.freeBytes, 0);
    assert.equal(u.largestFreeBytes, 0);
    assert.equal(u.fragmentationBasisPoints, 0);
  });

  it('1 − largest/free in basis points, rounded down', () => {
    // free 1G + 2G: 1 − 2/3 = 0.3333…
    const u = ledgerUsage(state(5, [ext('a', 1, 1), ext('b', 4, 1)]));
    assert.equal(u.freeBytes, 3 * G);
    assert.equal(u.largestFreeBytes, 2 * G);
    assert.equal(u.fragmentationBasisPoints, 3333);
    assert.equal(formatBasisPoints(u.fragmentationBasisPoints), '33.33 %');
  });

  it('stays exact for petabyte pools (free · 10000 > 2^53)', () => {
    const free = 2 ** 52;
    assert.equal(fragmentationBasisPoints(free, free / 4), 7500);
    assert.equal(fragmentationBasisPoints(free, free - 1), 0);
  });

  it('a capacity that is not a granule multiple never hands out its ragged tail', () => {
    const s = emptyLedger(GiB + 64 * MiB);
    assert.equal(ledgerUsage(s).usableCapacityBytes, GiB);
    expectError(() => ledgerReserve(s, 'x', GiB + G), 'RESOURCE_EXHAUSTED', 'POOL_CAPACITY_EXHAUSTED');
  });
});

describe('emptyLedger', () => {
  it('defaults to a 128 MiB granule', () => assert.equal(emptyLedger(GiB).granuleBytes, 128 * MiB));
  it('refuses a zero capacity and a granule that is not a power of two', () => {
    const e = expectError(() => emptyLedger(0, 3 * MiB), 'INVALID_ARGUMENT', 'INVALID_POOL_LEDGER');
    assert.deepEqual(e.violations.map((v) => v.field), ['capacityBytes', 'granuleBytes']);
  });
});
