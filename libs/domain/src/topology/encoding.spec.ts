import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { DomainError } from '../errors';
import { MiB } from '../units';
import { compileTopology } from './compile';
import { encodeBandwidths, encodeLatencies, hmatNormalize } from './encoding';
import { oneCxlInput, perfOf } from './spec-helpers';

const vals = (...values: number[]): number[] => values;

function refusal(reason: string, pattern?: RegExp) {
  return (e: unknown) => {
    assert.ok(e instanceof DomainError, `expected DomainError, got ${String(e)}`);
    assert.equal(e.reason, reason);
    if (pattern) assert.match(e.message, pattern);
    return true;
  };
}

describe('latency encoding (QEMU parse_numa_hmat_lb / build_hmat_lb)', () => {
  it('base = min over values of the largest power of 10 dividing each', () => {
    assert.deepEqual(encodeLatencies('read-latency', vals(100, 250)), { qemuBase: 10, entryBaseUnit: 10000, entries: [10, 25] });
    assert.deepEqual(encodeLatencies('read-latency', vals(1000, 20000)).qemuBase, 1000);
    assert.deepEqual(encodeLatencies('read-latency', vals(75, 74, 100)).entries, [75, 74, 100]);
  });

  it('accepts a range of exactly 65534 entries', () => {
    assert.equal(encodeLatencies('read-latency', vals(1, 65534)).entries[1], 65534);
  });

  it('refuses a range wider than 65534 with the final base, naming the numbers', () => {
    assert.throws(() => encodeLatencies('write-latency', vals(7, 100000)), refusal('HMAT_LATENCY_NOT_REPRESENTABLE', /7 ns \(entry 0\) to 100000 ns \(entry 1\).*base of 1 ns.*100000 > 65534/));
    assert.throws(() => encodeLatencies('read-latency', vals(1, 65535)), refusal('HMAT_LATENCY_NOT_REPRESENTABLE'));
  });

  it("refuses latencies whose picoseconds overflow the kernel's u32", () => {
    assert.throws(() => encodeLatencies('read-latency', vals(5_000_000)), refusal('HMAT_LATENCY_NOT_REPRESENTABLE', /u32/));
  });

  it('the guest decodes entry·base ps and rounds up to ns (revision 2)', () => {
    assert.equal(hmatNormalize(25, 10000, 'read-latency'), 250);
    assert.equal(hmatNormalize(0, 10000, 'read-latency'), 0);
    assert.equal(hmatNormalize(0xffff, 10, 'read-latency'), 0);
    assert.equal(hmatNormalize(2, 0xffffffff, 'read-latency'), 0, 'base > UINT_MAX/entry reads as 0');
    assert.equal(hmatNormalize(15, 1, 'read-latency', 1), 2, 'revision 1 divides by 10, rounding up');
  });
});

describe('bandwidth encoding', () => {
  it('G1: OR = 0xD80000000, ctz 31 → base 2 GiB/s, Entry Base Unit 2048 MB/s, entries 25 and 10', () => {
    const enc = encodeBandwidths('read-bandwidth', vals(51200 * MiB, 20480 * MiB));
    assert.deepEqual(enc, { qemuBase: 2 ** 31, entryBaseUnit: 2048, entries: [25, 10] });
    assert.equal(hmatNormalize(10, 2048, 'read-bandwidth'), 20480, 'MB/s in the guest are MiB/s');
  });

  it('refuses a bandwidth that is not 1 MiB aligned in B/s', () => {
    assert.throws(() => encodeBandwidths('read-bandwidth', vals(50_000_000_000)), refusal('HMAT_BANDWIDTH_NOT_MIB_ALIGNED', /50000000000 B\/s.*1MB aligned/));
  });

  it('accepts highbit−lowbit = 16 and refuses 17', () => {
    assert.equal(encodeBandwidths('read-bandwidth', vals(1 * MiB, 65534 * MiB)).entries[1], 65534);
    assert.throws(() => encodeBandwidths('read-bandwidth', vals(1 * MiB, 65536 * MiB)), refusal('HMAT_BANDWIDTH_NOT_REPRESENTABLE', /highbit−lowbit = 17 \(limit 16\)/));
  });

  it('refuses entry 0xFFFF, which the kernel reads as "no data"', () => {
    assert.throws(() => encodeBandwidths('read-bandwidth', vals(65535 * MiB)), refusal('HMAT_BANDWIDTH_NOT_REPRESENTABLE'));
  });
});

describe('compiler: rescaling and refusals', () => {
  const DRAM = perfOf(100, 100, 51200, 51200);

  it('rescales by the smallest common divisor that makes the bandwidths representable, keeping ratios exactly', () => {
    // 5·X MiB/s values: 163840 needs bits 15..17 and 5 needs bits 0..2: span 18. Dividing by 5 → 32768 and 1: span 16.
    const topo = compileTopology(oneCxlInput(perfOf(100, 100, 163840, 163840), perfOf(250, 250, 5, 5)));
    assert.equal(topo.hmat.bandwidthDivisor, 5);
    const [dram, cxl] = [0, 1].map((t) => topo.hmat.cells.find((c) => c.target === t));
    assert.equal(dram?.guest.readBandwidthMBps, 32768);
    assert.equal(cxl?.guest.readBandwidthMBps, 1);
    assert.equal((dram?.host.readBandwidthMBps ?? 0) / (cxl?.host.readBandwidthMBps ?? 1), (dram?.guest.readBandwidthMBps ?? 0) / (cxl?.guest.readBandwidthMBps ?? 1));
    assert.ok(topo.warnings.some((w) => /divided by 5/.test(w)));
  });

  it('rescales to avoid the u32 wrap and the tier equals the unwrapped one', () => {
    const topo = compileTopology(oneCxlInput(perfOf(100, 100, 409600, 409600), perfOf(1000, 1000, 10240, 10240)));
    const calc = topo.tiers.nodes[1]?.calculation;
    assert.ok(calc);
    assert.equal(calc.wrapped, false);
    assert.ok(calc.steps[1] * calc.referenceBandwidthSumMBps < 2 ** 32);
    assert.equal(topo.tiers.nodes[1]?.adistance, Math.floor((576 * 2000) / 200) * 819200 / 20480);
  });

  it('refuses when no common divisor keeps the ratios', () => {
    // 102401 and 3 are coprime; the span 0..17 cannot shrink.
    assert.throws(
      () => compileTopology(oneCxlInput(perfOf(100, 100, 102401, 102401), perfOf(250, 250, 3, 3))),
      refusal('HMAT_BANDWIDTH_NOT_REPRESENTABLE', /no common divisor/),
    );
  });

  it('refuses a latency range too wide for one base', () => {
    assert.throws(
      () => compileTopology(oneCxlInput(perfOf(7, 7, 51200, 51200), perfOf(70001, 70001, 20480, 20480))),
      refusal('HMAT_LATENCY_NOT_REPRESENTABLE', /7 ns \(initiator=0 target=0\) to 70001 ns \(initiator=0 target=1\)/),
    );
  });

  it("policy hmatRounding 'round': rounds instead of refusing, and reports the granularity", () => {
    const input = oneCxlInput(perfOf(100, 100, 102401, 102401), perfOf(250, 250, 3, 3));
    input.policy = { hmatRounding: 'round' };
    const topo = compileTopology(input);
    assert.deepEqual(topo.hmat.rounding, { latencyGranularityNs: 1, bandwidthGranularityMBps: 2 });
    assert.deepEqual(topo.hmat.cells.map((c) => c.guest.readBandwidthMBps), [102402, 4]);
    assert.ok(topo.warnings.some((w) => /rounded to multiples of 2 MiB\/s/.test(w)));
    const lat = oneCxlInput(perfOf(7, 7, 51200, 51200), perfOf(70001, 70001, 20480, 20480));
    lat.policy = { hmatRounding: 'round' };
    const t2 = compileTopology(lat);
    assert.equal(t2.hmat.rounding.latencyGranularityNs, 10);
    assert.deepEqual(t2.hmat.cells.map((c) => c.guest.readLatencyNs), [10, 70000]);
  });

  it('never emits a 0 value and never the access-* types', () => {
    const topo = compileTopology(oneCxlInput(DRAM, perfOf(250, 250, 20480, 20480)));
    assert.deepEqual(topo.hmat.structures.map((s) => s.dataType), ['read-latency', 'write-latency', 'read-bandwidth', 'write-bandwidth']);
    for (const s of topo.hmat.structures) for (const row of s.entries) for (const e of row) assert.ok(e > 0 && e <= 65534);
  });
});
