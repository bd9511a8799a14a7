import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { DomainError } from '../errors';
import { GiB, MiB } from '../units';
import { compileTopology } from './compile';
import { mtPerfToAdistance } from './tiers';
import { renderQemuArgv } from './qemu-argv';
import type { HostPerformanceInput, MemoryGroupInput, Topology, TopologyInput } from './types';

/**
 * Random hosts with arbitrary (not pre-rounded) performance numbers: the compiler must either
 * produce a topology that keeps every invariant, or refuse with a DomainError.
 */
const perf = fc.record({
  lat: fc.integer({ min: 60, max: 2000 }),
  latW: fc.integer({ min: 0, max: 40 }),
  bw: fc.integer({ min: 500, max: 500_000 }),
  bwW: fc.integer({ min: 0, max: 3000 }),
});

const inputArb: fc.Arbitrary<TopologyInput> = fc
  .record({
    sockets: fc.integer({ min: 1, max: 3 }),
    cxl: fc.integer({ min: 1, max: 3 }),
    perfs: fc.array(perf, { minLength: 24, maxLength: 24 }),
    guestCpus: fc.array(fc.record({ vcpus: fc.integer({ min: 1, max: 3 }), mem: fc.integer({ min: 1, max: 8 }), pin: fc.option(fc.nat(), { nil: undefined }) }), { minLength: 1, maxLength: 4 }),
    groups: fc.array(
      fc.record({ pool: fc.nat(), dynamic: fc.boolean(), blocks: fc.integer({ min: 1, max: 8 }), plugged: fc.boolean(), online: fc.constantFrom('ONLINE_MOVABLE', 'ONLINE_KERNEL', 'AUTO') as fc.Arbitrary<MemoryGroupInput['onlineType']> }),
      { minLength: 1, maxLength: 5 },
    ),
    profile: fc.constantFrom('linux-6.1', 'linux-6.12') as fc.Arbitrary<'linux-6.1' | 'linux-6.12'>,
    spare: fc.integer({ min: 0, max: 3 }),
    withDistances: fc.boolean(),
    round: fc.boolean(),
  })
  .map((r) => {
    const nodes: TopologyInput['host']['nodes'] = [];
    for (let s = 0; s < r.sockets; s++) nodes.push({ nodeId: s, cpus: [s], memoryBytes: 64 * GiB, kind: 'DRAM' });
    for (let c = 0; c < r.cxl; c++) nodes.push({ nodeId: r.sockets + c, cpus: [], memoryBytes: 64 * GiB, kind: 'CXL' });
    const performance: HostPerformanceInput[] = [];
    let k = 0;
    for (let s = 0; s < r.sockets; s++)
      for (const n of nodes) {
        const p = r.perfs[k++ % r.perfs.length] as (typeof r.perfs)[number];
        performance.push({ cpuNodeId: s, memoryNodeId: n.nodeId, readLatencyNs: p.lat, writeLatencyNs: p.lat + p.latW, readBandwidthMBps: p.bw, writeBandwidthMBps: p.bw + p.bwW });
      }
    const pools = Array.from({ length: r.cxl }, (_, c) => ({ id: `p${c}`, hostNodeId: r.sockets + c, memoryType: 'VOLATILE' as const }));
    const groups: MemoryGroupInput[] = r.groups.map((g, i) => {
      const poolId = `p${g.pool % r.cxl}`;
      const size = g.blocks * 128 * MiB;
      return g.dynamic
        ? { id: `g${i}`, name: `g${i}`, kind: 'DYNAMIC', poolId, maxSizeBytes: size, requestedBytes: 0, onlineType: g.online, plugged: g.plugged }
        : { id: `g${i}`, name: `g${i}`, kind: 'STATIC', poolId, sizeBytes: size, onlineType: g.online, plugged: g.plugged };
    });
    const guestNodes = r.guestCpus.map((g, i) => ({
      guestNodeId: i,
      vcpus: g.vcpus,
      memoryBytes: g.mem * 256 * MiB,
      ...(g.pin === undefined ? {} : { hostNodeId: g.pin % r.sockets }),
    }));
    const boot = guestNodes.reduce((s, g) => s + g.memoryBytes, 0) + r.cxl * 128 * MiB;
    const later = groups.filter((g) => g.kind === 'DYNAMIC' && !g.plugged).length;
    const input: TopologyInput = {
      host: { nodes, performance, ...(r.withDistances ? { distances: [] } : {}) },
      vm: {
        name: 'prop',
        kernelProfile: r.profile,
        guestNodes,
        maxMemoryBytes: boot + groups.reduce((s, g) => s + (g.sizeBytes ?? g.maxSizeBytes ?? 0), 0),
        memorySlots: groups.length,
        sparePciePorts: r.spare > 0 ? later + r.spare : 0,
      },
      pools,
      groups,
      policy: { hmatRounding: r.round ? 'round' : 'exact' },
    };
    return input;
  });

function checkInvariants(input: TopologyInput, topo: Topology): void {
  const n = topo.guestNodes.length;
  assert.deepEqual(topo.guestNodes.map((g) => g.guestNodeId), [...Array(n).keys()]);
  assert.equal(topo.bootMemoryBytes, topo.guestNodes.reduce((s, g) => s + (g.bootBackend?.sizeBytes ?? 0), 0));
  const last = topo.guestNodes[n - 1];
  for (const g of topo.guestNodes)
    if (g.kind === 'CXL') assert.ok(g.bootMemoryBytes > 0 || (g === last && topo.maxMemoryBytes > topo.bootMemoryBytes), `CXL node ${g.guestNodeId} is no HMAT target`);
  for (const s of topo.hmat.structures) for (const row of s.entries) for (const e of row) assert.ok(Number.isInteger(e) && e >= 1 && e <= 65534);
  const { latencyGranularityNs: gl, bandwidthGranularityMBps: gb } = topo.hmat.rounding;
  if (input.policy?.hmatRounding !== 'round') assert.deepEqual([gl, gb], [1, 1]);
  const near = (rounded: number, exact: number, g: number) => Math.abs(rounded - exact) <= g / 2 || (rounded === g && exact < g);
  for (const c of topo.hmat.cells) {
    // What the guest decodes is what QEMU was given, and that is the host value up to rounding.
    assert.equal(c.guest.readLatencyNs, c.qemu.readLatencyNs);
    assert.ok(near(c.guest.writeLatencyNs, c.host.writeLatencyNs, gl));
    assert.equal(c.guest.readBandwidthMBps * MiB, c.qemu.readBandwidthBps);
    assert.ok(near(c.guest.readBandwidthMBps * topo.hmat.bandwidthDivisor, c.host.readBandwidthMBps, gb));
    assert.ok(near(c.guest.writeBandwidthMBps * topo.hmat.bandwidthDivisor, c.host.writeBandwidthMBps, gb));
    assert.equal(c.qemu.readBandwidthBps % MiB, 0);
  }
  const ref = topo.hmat.cells[0]?.guest;
  for (const t of topo.tiers.nodes) {
    assert.equal(t.tier, t.adistance >> 7);
    if (t.source === 'hmat') assert.equal(t.calculation?.wrapped, false);
    // The wrap rule holds for every target whatever the profile (the HMAT belongs to the VM).
    const g = topo.guestNodes[t.guestNodeId];
    const cell = topo.hmat.cells[(g?.initiatorGuestNodeId ?? 0) * n + t.guestNodeId];
    if (ref && cell) {
      const r = mtPerfToAdistance(cell.guest, ref);
      assert.ok(r.ok && !r.calculation.wrapped && r.adistance >= 0);
    }
  }
  for (const d of topo.tiers.demotion) for (const p of d.preferred) assert.ok(d.fallback.includes(p));
  const kinds = renderQemuArgv(topo)
    .filter((_, i, a) => a[i - 1] === '-numa')
    .map((v) => v.split(',')[0]);
  assert.ok(kinds.lastIndexOf('node') < kinds.indexOf('hmat-lb') && (kinds.indexOf('dist') < 0 || kinds.lastIndexOf('dist') < kinds.indexOf('hmat-lb')));
  assert.equal(input.vm.name, topo.vmName);
}

describe('compileTopology on random hosts', () => {
  it('compiles a topology that keeps every invariant, or refuses with a DomainError', () => {
    let compiled = 0;
    let compiledRounded = 0;
    const refused = new Map<string, number>();
    fc.assert(
      fc.property(inputArb, (input) => {
        let topo: Topology;
        try {
          topo = compileTopology(input);
        } catch (e) {
          assert.ok(e instanceof DomainError, `not a DomainError: ${String(e)}`);
          assert.notEqual(e.code, 'INTERNAL', e.message);
          refused.set(e.reason, (refused.get(e.reason) ?? 0) + 1);
          return;
        }
        compiled++;
        if (input.policy?.hmatRounding === 'round') compiledRounded++;
        checkInvariants(input, topo);
      }),
      { numRuns: 400, seed: 4242 },
    );
    // Arbitrary host numbers rarely fit HMAT exactly; rounding makes (nearly) all of them compile.
    assert.ok(compiledRounded > 150, `only ${compiledRounded} rounded cases compiled; refusals ${JSON.stringify([...refused])}`);
    assert.ok(compiled > compiledRounded, 'some exact cases compile too');
  });
});
