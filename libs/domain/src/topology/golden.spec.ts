import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { compileTopology } from './compile';
import { mtPerfToAdistance, tierOf } from './tiers';
import { oneCxlInput, perfOf } from './spec-helpers';
import type { PerfValues } from './types';

/** domain-spec "Golden examples": reference DRAM 100/100 ns, 51200/51200 MB/s unless stated. */
const DRAM = perfOf(100, 100, 51200, 51200);

interface Golden {
  id: string;
  dram: PerfValues;
  target: PerfValues;
  adistance: number;
  tier: number;
  steps?: [number, number, number, number];
  wrapped?: boolean;
}

const GOLDEN: Golden[] = [
  { id: 'G1 DRAM vs CXL', dram: DRAM, target: perfOf(250, 250, 20480, 20480), adistance: 3600, tier: 28, steps: [288000, 1440, 147_456_000, 3600] },
  { id: 'G2 111 ns stays in the DRAM tier', dram: DRAM, target: perfOf(111, 111, 51200, 51200), adistance: 639, tier: 4, steps: [127872, 639, 65_433_600, 639] },
  { id: 'G2 112 ns drops to tier 5', dram: DRAM, target: perfOf(112, 112, 51200, 51200), adistance: 645, tier: 5 },
  { id: 'G3 HBM-like node', dram: DRAM, target: perfOf(80, 80, 204800, 204800), adistance: 115, tier: 0, steps: [92160, 460, 47_104_000, 115] },
  { id: 'G4 truncation changes the tier', dram: DRAM, target: perfOf(75, 74, 17163, 17162), adistance: 1279, tier: 9, steps: [85824, 429, 43_929_600, 1279] },
  {
    id: 'G5 u32 wrap',
    dram: perfOf(100, 100, 409600, 409600),
    target: perfOf(1000, 1000, 10240, 10240),
    adistance: 20684,
    tier: 161,
    steps: [1_152_000, 5760, 423_624_704, 20684],
    wrapped: true,
  },
];

describe('golden examples G1–G5: mt_perf_to_adistance in u32, left to right', () => {
  for (const g of GOLDEN) {
    it(g.id, () => {
      const r = mtPerfToAdistance(g.target, g.dram);
      assert.ok(r.ok);
      assert.equal(r.adistance, g.adistance);
      assert.equal(tierOf(r.adistance), g.tier);
      if (g.steps) assert.deepEqual(r.calculation.steps, g.steps);
      assert.equal(r.calculation.wrapped, g.wrapped ?? false);
    });
  }

  it('G4: real-number maths would give 1280.17 (tier 10); the integer order gives tier 9', () => {
    const real = (576 * 149 * 102400) / 200 / 34325;
    assert.equal(tierOf(Math.floor(real)), 10);
    const r = mtPerfToAdistance(perfOf(75, 74, 17163, 17162), DRAM);
    assert.ok(r.ok);
    assert.equal(r.adistance >> 7, 9);
  });
});

describe('golden examples through the whole compiler (what the guest will build)', () => {
  for (const g of GOLDEN.filter((x) => !x.wrapped)) {
    it(`${g.id}: guest node 1 is predicted in memory_tier${g.tier}`, () => {
      const topo = compileTopology(oneCxlInput(g.dram, g.target));
      const node1 = topo.tiers.nodes.find((n) => n.guestNodeId === 1);
      assert.equal(node1?.adistance, g.adistance);
      assert.equal(node1?.tier, g.tier);
      assert.equal(node1?.source, 'hmat');
      const node0 = topo.tiers.nodes.find((n) => n.guestNodeId === 0);
      assert.equal(node0?.adistance, 576);
      assert.equal(topo.hmat.bandwidthDivisor, 1);
    });
  }

  it('G1: QEMU encoding, decoded sysfs values, tiers and demotion', () => {
    const topo = compileTopology(oneCxlInput(DRAM, perfOf(250, 250, 20480, 20480)));
    const lat = topo.hmat.structures.find((s) => s.dataType === 'read-latency');
    assert.equal(lat?.qemuBase, 10);
    assert.equal(lat?.entryBaseUnit, 10000);
    assert.deepEqual(lat?.entries, [[10, 25]]);
    const bw = topo.hmat.structures.find((s) => s.dataType === 'read-bandwidth');
    assert.equal(bw?.qemuBase, 2 ** 31);
    assert.equal(bw?.entryBaseUnit, 2048);
    assert.deepEqual(bw?.entries, [[25, 10]]);
    const cell = topo.hmat.cells.find((c) => c.initiator === 0 && c.target === 1);
    assert.equal(cell?.qemu.readBandwidthBps, 20 * 2 ** 30);
    assert.deepEqual(cell?.guest, perfOf(250, 250, 20480, 20480));
    assert.deepEqual(
      topo.tiers.tiers.map((t) => [t.tier, t.nodelist]),
      [
        [4, '0'],
        [28, '1'],
      ],
    );
    assert.deepEqual(topo.tiers.demotion.find((d) => d.guestNodeId === 0)?.preferred, [1]);
    assert.deepEqual(topo.tiers.demotion.find((d) => d.guestNodeId === 1)?.preferred, []);
  });

  it('G1 on linux-6.1: no HMAT tiering, both nodes in memory_tier4, no demotion', () => {
    const topo = compileTopology(oneCxlInput(DRAM, perfOf(250, 250, 20480, 20480), 'linux-6.1'));
    assert.equal(topo.tiers.hmatTiering.enabled, false);
    assert.deepEqual(topo.tiers.nodes.map((n) => [n.adistance, n.tier]), [
      [576, 4],
      [576, 4],
    ]);
    assert.deepEqual(topo.tiers.tiers.map((t) => t.nodelist), ['0-1']);
    assert.ok(topo.tiers.demotion.every((d) => d.preferred.length === 0));
  });

  it('G3: the faster CPU-less node is tier 0 and demotes to the DRAM node', () => {
    const topo = compileTopology(oneCxlInput(DRAM, perfOf(80, 80, 204800, 204800)));
    assert.deepEqual(topo.tiers.demotion.find((d) => d.guestNodeId === 1)?.preferred, [0]);
    assert.deepEqual(topo.tiers.demotion.find((d) => d.guestNodeId === 0)?.preferred, []);
  });

  it('G5: the compiler rescales bandwidth by a common factor so the guest computes the true 230400 (tier 1800)', () => {
    const g5 = GOLDEN.find((g) => g.wrapped) as Golden;
    const topo = compileTopology(oneCxlInput(g5.dram, g5.target));
    assert.equal(topo.hmat.bandwidthDivisor, 2);
    const node1 = topo.tiers.nodes.find((n) => n.guestNodeId === 1);
    assert.equal(node1?.adistance, 230400);
    assert.equal(node1?.tier, 1800);
    assert.equal(node1?.calculation?.wrapped, false);
    // floor(576·Lt/DL)·DB now stays below 2^32.
    assert.ok((node1?.calculation?.steps[1] ?? 0) * (node1?.calculation?.referenceBandwidthSumMBps ?? 0) < 2 ** 32);
    const dram = topo.hmat.cells.find((c) => c.initiator === 0 && c.target === 0);
    assert.equal(dram?.guest.readBandwidthMBps, 204800);
    assert.equal(dram?.host.readBandwidthMBps, 409600);
    assert.ok(topo.warnings.some((w) => w.includes('divided by 2')));
  });
});
