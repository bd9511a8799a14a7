import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { DomainError } from '../errors';
import { MiB } from '../units';
import { ledgerReserve } from './allocator';
import { checkLedgerInvariants } from './invariants';
import type { LedgerExtent, LedgerState } from './ledger-state';

const G = 128 * MiB;
const ext = (groupId: string, offsetBytes: number, sizeBytes: number): LedgerExtent => ({ groupId, offsetBytes, sizeBytes });
const state = (extents: LedgerExtent[], capacityBytes = 8 * G, granuleBytes = G): LedgerState => ({ capacityBytes, granuleBytes, extents });

describe('checkLedgerInvariants', () => {
  it('a clean state is ok', () => {
    const r = checkLedgerInvariants(state([ext('a', 0, G), ext('b', G, 2 * G), ext('c', 7 * G, G)]));
    assert.deepEqual(r, { ok: true, invalid: [], overlaps: [], overCapacity: [], misaligned: [] });
  });

  it('touching extents do not overlap; one byte more does', () => {
    assert.equal(checkLedgerInvariants(state([ext('a', 0, 2 * G), ext('b', 2 * G, G)])).ok, true);
    const r = checkLedgerInvariants(state([ext('a', 0, 2 * G), ext('b', 2 * G - G, 2 * G)]));
    assert.equal(r.ok, false);
    assert.deepEqual(r.overlaps, [{ first: ext('a', 0, 2 * G), second: ext('b', G, 2 * G), overlapBytes: G }]);
  });

  it('finds an overlap hidden behind a long extent', () => {
    // a covers everything: b and c each overlap a (not each other).
    const r = checkLedgerInvariants(state([ext('a', 0, 8 * G), ext('b', G, G), ext('c', 4 * G, G)]));
    assert.deepEqual(
      r.overlaps.map((o) => [o.first.groupId, o.second.groupId]),
      [
        ['a', 'b'],
        ['a', 'c'],
      ],
    );
  });

  it('ending exactly at capacity is fine; one granule past is over capacity', () => {
    assert.equal(checkLedgerInvariants(state([ext('a', 6 * G, 2 * G)])).ok, true);
    const r = checkLedgerInvariants(state([ext('a', 7 * G, 2 * G)]));
    assert.deepEqual(r.overCapacity, [ext('a', 7 * G, 2 * G)]);
  });

  it('reports misaligned offsets and sizes', () => {
    const r = checkLedgerInvariants(state([ext('a', 2 * MiB, G), ext('b', 2 * G, G + 2 * MiB)]));
    assert.equal(r.misaligned.length, 2);
  });

  it('reports invalid numbers, group ids, capacity and granule', () => {
    const r = checkLedgerInvariants({
      capacityBytes: -1,
      granuleBytes: 3,
      extents: [ext('', 0, G), ext('a', -G, G), ext('b', 0, 0), ext('c', 0.5, G), ext('d', 0, Number.NaN)],
    });
    assert.equal(r.invalid.length, 2 + 5);
    assert.equal(r.ok, false);
  });

  it('operations refuse a corrupt state with INTERNAL / POOL_LEDGER_CORRUPT', () => {
    assert.throws(
      () => ledgerReserve(state([ext('a', 0, 2 * G), ext('b', G, G)]), 'x', G),
      (e: unknown) => e instanceof DomainError && e.code === 'INTERNAL' && e.reason === 'POOL_LEDGER_CORRUPT' && /overlap/.test(e.message),
    );
  });
});
