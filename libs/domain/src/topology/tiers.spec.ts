import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { compileTopology } from './compile';
import { dramPerfMismatch, formatNodeList, mtPerfToAdistance, predictTiers, type TierNodeInput } from './tiers';
import { perfEntry, perfOf, twoSocketInput } from './spec-helpers';

const DRAM = perfOf(100, 100, 51200, 51200);
const CXL = perfOf(250, 250, 20480, 20480);

const cpu = (nodeId: number, access1 = DRAM): TierNodeInput => ({ nodeId, hasCpus: true, hasBootMemory: true, hmatTarget: true, access1 });
const mem = (nodeId: number, access1 = CXL, extra: Partial<TierNodeInput> = {}): TierNodeInput => ({
  nodeId,
  hasCpus: false,
  hasBootMemory: false,
  hmatTarget: true,
  access1,
  ...extra,
});
const matrix = (n: number, d: (a: number, b: number) => number) =>
  Array.from({ length: n }, (_, a) => Array.from({ length: n }, (_, b) => (a === b ? 10 : d(a, b))));

describe('10 % DRAM reference mismatch rule (mt_set_default_dram_perf)', () => {
  it('exactly 10 % passes, one unit more fails', () => {
    assert.equal(dramPerfMismatch(DRAM, perfOf(110, 110, 51200, 51200)), undefined);
    assert.equal(dramPerfMismatch(DRAM, perfOf(90, 100, 46080, 56320)), undefined);
    assert.equal(dramPerfMismatch(DRAM, perfOf(111, 100, 51200, 51200)), 'readLatencyNs');
    assert.equal(dramPerfMismatch(DRAM, perfOf(100, 89, 51200, 51200)), 'writeLatencyNs');
    assert.equal(dramPerfMismatch(DRAM, perfOf(100, 100, 51200, 56321)), 'writeBandwidthMBps');
  });

  it('a second CPU node within 10 % keeps HMAT tiering on', () => {
    const t = predictTiers('linux-6.12', [cpu(0), cpu(1, perfOf(110, 110, 51200, 51200)), mem(2)], matrix(3, () => 20));
    assert.equal(t.hmatTiering.enabled, true);
    assert.equal(t.hmatTiering.referenceNodeId, 0);
    assert.equal(t.nodes[2]?.tier, 28);
  });

  it('a second CPU node more than 10 % off disables HMAT tiering: every node stays in tier 4', () => {
    const t = predictTiers('linux-6.12', [cpu(0), cpu(1, perfOf(111, 110, 51200, 51200)), mem(2)], matrix(3, () => 20));
    assert.equal(t.hmatTiering.enabled, false);
    assert.match(t.hmatTiering.reason, /CPU node 1 readLatencyNs 111 mismatches reference DRAM node 0 \(100\)/);
    assert.deepEqual(t.nodes.map((n) => n.adistance), [576, 576, 576]);
    assert.deepEqual(t.tiers.map((x) => x.nodelist), ['0-2']);
  });

  it('compiled: two host sockets whose local/remote values differ by > 10 % disable tiering', () => {
    const input = twoSocketInput();
    input.host.performance = input.host.performance.map((p) => (p.cpuNodeId === 1 && p.memoryNodeId === 1 ? perfEntry(1, 1, perfOf(120, 120, 51200, 51200)) : p));
    const topo = compileTopology(input);
    assert.equal(topo.tiers.hmatTiering.enabled, false);
    assert.ok(topo.warnings.some((w) => w.startsWith('HMAT-based tiering disabled')));
  });
});

describe('adistance edge cases', () => {
  it('-EINVAL for a zero latency or bandwidth sum', () => {
    assert.deepEqual(mtPerfToAdistance(perfOf(0, 0, 1, 1), DRAM), { ok: false, errno: 'EINVAL', reason: 'latency or bandwidth sum is 0' });
  });

  it('a zero sum on the reference CPU node keeps the algorithm unregistered', () => {
    const t = predictTiers('linux-6.12', [cpu(0, perfOf(0, 0, 0, 0)), mem(1)], matrix(2, () => 20));
    assert.equal(t.hmatTiering.enabled, false);
    assert.deepEqual(t.nodes.map((n) => n.tier), [4, 4]);
  });

  it('a CPU-less node without an HMAT target keeps the default 576 while others are computed', () => {
    const t = predictTiers('linux-6.12', [cpu(0), mem(1, CXL, { hmatTarget: false }), mem(2)], matrix(3, () => 20));
    assert.equal(t.nodes[1]?.adistance, 576);
    assert.equal(t.nodes[1]?.source, 'default');
    assert.equal(t.nodes[2]?.adistance, 3600);
  });

  it('no CPU node with an HMAT target: -ENOENT, all default', () => {
    const t = predictTiers('linux-6.12', [{ ...cpu(0), hmatTarget: false }, mem(1)], matrix(2, () => 20));
    assert.equal(t.hmatTiering.enabled, false);
    assert.match(t.hmatTiering.reason, /ENOENT/);
  });
});

describe('demotion targets (establish_demotion_targets + find_next_best_node)', () => {
  it('only the next lower tier; every candidate at the best distance is preferred; fallback is all lower tiers', () => {
    const slower = perfOf(500, 500, 10240, 10240);
    // 0: DRAM (tier 4); 1, 2: CXL (tier 28) at equal distance; 3: slower CXL (tier 112).
    const t = predictTiers('linux-6.12', [cpu(0), mem(1), mem(2), mem(3, slower)], matrix(4, (a, b) => (a === 0 || b === 0 ? 25 : 30)));
    assert.deepEqual(t.tiers.map((x) => [x.tier, x.nodelist]), [
      [4, '0'],
      [28, '1-2'],
      [112, '3'],
    ]);
    assert.deepEqual(t.demotion.find((d) => d.guestNodeId === 0), { guestNodeId: 0, preferred: [1, 2], fallback: [1, 2, 3] });
    assert.deepEqual(t.demotion.find((d) => d.guestNodeId === 1)?.preferred, [3]);
    assert.deepEqual(t.demotion.find((d) => d.guestNodeId === 3), { guestNodeId: 3, preferred: [], fallback: [] });
    assert.equal(t.topTierAdistance, 639);
  });

  it('nearest by SLIT wins when distances differ', () => {
    const t = predictTiers('linux-6.12', [cpu(0), mem(1), mem(2)], matrix(3, (a, b) => (a + b === 1 ? 30 : a + b === 2 ? 25 : 40)));
    assert.deepEqual(t.demotion.find((d) => d.guestNodeId === 0)?.preferred, [2]);
  });

  it('a penalised closer node picked second ends the preferred set (find_next_best_node order, not raw distance)', () => {
    // Node 2 (CPU, fast tier) demotes into tier {0 (CPU), 3}: d(2,0)=20 but +1 (0 < 2) +1 (CPUs) = 22;
    // d(2,3)=21 → 21: node 3 is picked first, then node 0 at a different distance stops the loop.
    const fast = perfOf(50, 50, 102400, 102400);
    const nodes = [cpu(0), cpu(1, perfOf(100, 100, 51200, 51200)), { ...mem(2, fast), hasCpus: true }, mem(3, DRAM)];
    const d = [
      [10, 20, 20, 20],
      [20, 10, 20, 20],
      [20, 20, 10, 21],
      [20, 20, 21, 10],
    ];
    const t = predictTiers('linux-6.12', nodes, d);
    assert.equal(t.nodes[2]?.tier, 1);
    assert.deepEqual(t.demotion.find((x) => x.guestNodeId === 2)?.preferred, [3]);
  });

  it('linux-6.1: one tier, no demotion', () => {
    const t = predictTiers('linux-6.1', [cpu(0), mem(1)], matrix(2, () => 20));
    assert.deepEqual(t.tiers, [{ tier: 4, adistanceStart: 512, nodes: [0, 1], nodelist: '0-1' }]);
    assert.ok(t.demotion.every((d) => d.preferred.length === 0 && d.fallback.length === 0));
  });
});

describe('nodelist format (%*pbl)', () => {
  it('prints ranges', () => {
    assert.equal(formatNodeList([3, 0, 1]), '0-1,3');
    assert.equal(formatNodeList([2]), '2');
    assert.equal(formatNodeList([0, 1, 2, 4, 5, 7]), '0-2,4-5,7');
  });
});

describe('u32 arithmetic against a BigInt model of the C expression', () => {
  const u32 = (x: bigint) => BigInt.asUintN(32, x);
  function reference(p: ReturnType<typeof perfOf>, r: ReturnType<typeof perfOf>): number | 'EINVAL' {
    const lt = u32(BigInt(p.readLatencyNs) + BigInt(p.writeLatencyNs));
    const bt = u32(BigInt(p.readBandwidthMBps) + BigInt(p.writeBandwidthMBps));
    const dl = u32(BigInt(r.readLatencyNs) + BigInt(r.writeLatencyNs));
    const db = u32(BigInt(r.readBandwidthMBps) + BigInt(r.writeBandwidthMBps));
    if (lt === 0n || bt === 0n || dl === 0n || db === 0n) return 'EINVAL';
    return Number(BigInt.asIntN(32, u32(u32(u32(576n * lt) / dl) * db) / bt));
  }
  const u32Arb = fc.oneof(fc.integer({ min: 0, max: 0xffffffff }), fc.integer({ min: 1, max: 100_000 }));
  const perfArb = fc.tuple(u32Arb, u32Arb, u32Arb, u32Arb).map(([a, b, c, d]) => perfOf(a, b, c, d));

  it('mtPerfToAdistance equals the BigInt model, wraps included', () => {
    fc.assert(
      fc.property(perfArb, perfArb, (p, r) => {
        const got = mtPerfToAdistance(p, r);
        const want = reference(p, r);
        assert.equal(got.ok ? got.adistance : got.errno, want);
      }),
      { numRuns: 2000, seed: 7 },
    );
  });

  it('dramPerfMismatch equals the C expression abs((int)(x - ref)) * 10 > ref', () => {
    const i32 = (x: bigint) => BigInt.asIntN(32, x);
    fc.assert(
      fc.property(perfArb, perfArb, (p, r) => {
        const metric = (['readLatencyNs', 'writeLatencyNs', 'readBandwidthMBps', 'writeBandwidthMBps'] as const).find((m) => {
          const d = i32(u32(BigInt(p[m]) - BigInt(r[m])));
          const a = d < 0n ? i32(-d) : d;
          return u32(i32(a * 10n)) > BigInt(r[m]);
        });
        assert.equal(dramPerfMismatch(r, p), metric);
      }),
      { numRuns: 2000, seed: 11 },
    );
  });
});
