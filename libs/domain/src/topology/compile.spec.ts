import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { DomainError } from '../errors';
import { GiB, MiB } from '../units';
import { compileTopology } from './compile';
import { predictGuestMemoryBlockBytes } from './devices';
import { dynamicGroup, oneCxlInput, perfEntry, perfOf, staticGroup, twoSocketInput } from './spec-helpers';
import type { TopologyInput } from './types';

function refusal(code: string, reason: string, pattern?: RegExp) {
  return (e: unknown) => {
    assert.ok(e instanceof DomainError, `expected DomainError, got ${String(e)}`);
    assert.equal(e.code, code);
    assert.equal(e.reason, reason);
    if (pattern) assert.match(e.message, pattern);
    return true;
  };
}

/** Adds a third CXL host node (4) with a pool, so three CXL classes exist. */
function threeClasses(): TopologyInput {
  const input = twoSocketInput();
  input.host.nodes.push({ nodeId: 4, cpus: [], memoryBytes: 64 * GiB, kind: 'CXL' });
  input.host.performance.push(perfEntry(0, 4, perfOf(300, 300, 15360, 15360)), perfEntry(1, 4, perfOf(300, 300, 15360, 15360)));
  input.pools.push({ id: 'pool-4', hostNodeId: 4, memoryType: 'VOLATILE' });
  input.groups.push(staticGroup('dimm-4', 'pool-4', 256 * MiB));
  return input;
}

describe('guest NUMA layout', () => {
  it('CPU nodes keep their ids and get contiguous vCPUs; one CXL node per host class in use', () => {
    const topo = compileTopology(twoSocketInput());
    assert.deepEqual(
      topo.guestNodes.map((n) => [n.guestNodeId, n.kind, n.vcpuIds, n.hostNodeId]),
      [
        [0, 'CPU', [0, 1], 0],
        [1, 'CPU', [2, 3], 1],
        [2, 'CXL', [], 2],
        [3, 'CXL', [], 3],
      ],
    );
    assert.equal(topo.vcpuCount, 4);
  });

  it('unpinned CPU nodes go to the least used host CPU node, lowest id on ties', () => {
    const input = twoSocketInput();
    input.vm.guestNodes = [
      { guestNodeId: 0, vcpus: 1, memoryBytes: 512 * MiB, hostNodeId: 0 },
      { guestNodeId: 1, vcpus: 1, memoryBytes: 512 * MiB },
      { guestNodeId: 2, vcpus: 1, memoryBytes: 512 * MiB },
    ];
    const topo = compileTopology(input);
    assert.deepEqual(
      topo.guestNodes.filter((n) => n.kind === 'CPU').map((n) => [n.hostNodeId, n.hostNodePinned]),
      [
        [0, true],
        [1, false],
        [0, false],
      ],
    );
  });

  it('two guest nodes on one host node get SLIT 11, not 10 (slit_valid)', () => {
    const input = twoSocketInput();
    input.vm.guestNodes = input.vm.guestNodes.map((g) => ({ ...g, hostNodeId: 0 }));
    const topo = compileTopology(input);
    assert.equal(topo.distances[0]?.[1], 11);
  });

  it('each CXL node names the CPU node with the best latency to it as initiator', () => {
    const topo = compileTopology(twoSocketInput());
    assert.equal(topo.guestNodes[2]?.initiatorGuestNodeId, 0);
    assert.equal(topo.guestNodes[3]?.initiatorGuestNodeId, 1);
    // The guest reports the initiator's values: host 1 → CXL 3 is the near path.
    assert.equal(topo.tiers.nodes[3]?.calculation?.latencySumNs, 500);
  });

  it('refuses more DRAM than the host node has', () => {
    const input = twoSocketInput();
    (input.vm.guestNodes[0] as { memoryBytes: number }).memoryBytes = 128 * GiB;
    assert.throws(() => compileTopology(input), refusal('RESOURCE_EXHAUSTED', 'HOST_NODE_DRAM_EXHAUSTED', /host node 0/));
  });

  it('collects every input violation at once', () => {
    const input = twoSocketInput();
    input.vm.guestNodes[1] = { guestNodeId: 3, vcpus: 0, memoryBytes: 1000 };
    input.groups.push(staticGroup('bad id!', 'nope', 0));
    assert.throws(
      () => compileTopology(input),
      (e: unknown) => e instanceof DomainError && e.reason === 'TOPOLOGY_INVALID' && e.violations.length >= 5,
    );
  });
});

describe('SRAT placement: every CXL node is an HMAT target', () => {
  it('last-node: the highest CXL class goes last with no boot memory; the others get a boot anchor', () => {
    const topo = compileTopology(threeClasses());
    assert.deepEqual(
      topo.guestNodes.filter((n) => n.kind === 'CXL').map((n) => [n.guestNodeId, n.hostNodeId, n.srat, n.bootMemoryBytes, n.anchorPoolId]),
      [
        [2, 2, 'boot-memory', 128 * MiB, 'pool-2'],
        [3, 3, 'boot-memory', 128 * MiB, 'pool-3'],
        [4, 4, 'hotplug-region', 0, undefined],
      ],
    );
    // Node 4's only memory is a DIMM cold-plugged at launch: 6.12 onlines it before HMAT tiering
    // exists and leaves it in the DRAM tier (seen on a real guest, topology-guests.e2e-spec.ts).
    assert.deepEqual(
      topo.tiers.nodes.map((n) => [n.guestNodeId, n.source]),
      [[0, 'hmat'], [1, 'hmat'], [2, 'hmat'], [3, 'hmat'], [4, 'default']],
    );
    assert.match(topo.tiers.nodes[4]!.reason, /cold-plugged at launch/);
    assert.ok(topo.warnings.some((w) => /guest node 4 gets the DRAM tier/.test(w)), topo.warnings.join('\n'));
  });

  it('a node whose DIMM is hotplugged after boot keeps its HMAT tier', () => {
    const input = threeClasses();
    input.groups = input.groups.map((g) => (g.id === 'dimm-4' ? { ...g, plugged: false } : g));
    const topo = compileTopology(input);
    assert.ok(topo.tiers.nodes.every((n) => n.source === 'hmat'));
    assert.ok(!topo.warnings.some((w) => /gets the DRAM tier/.test(w)));
  });

  it('boot-memory policy anchors every CXL node', () => {
    const input = threeClasses();
    input.policy = { cxlSratPlacement: 'boot-memory', cxlAnchorBytes: 256 * MiB };
    const topo = compileTopology(input);
    assert.ok(topo.guestNodes.filter((n) => n.kind === 'CXL').every((n) => n.srat === 'boot-memory' && n.bootMemoryBytes === 256 * MiB));
  });

  it('a DAX-only class takes the last position (it cannot take boot memory)', () => {
    const input = threeClasses();
    input.pools = input.pools.map((p) => (p.id === 'pool-2' ? { ...p, daxDevicePath: '/dev/dax0.0' } : p));
    input.groups = input.groups.filter((g) => g.id !== 'vmem-later');
    const topo = compileTopology(input);
    const last = topo.guestNodes[topo.guestNodes.length - 1];
    assert.equal(last?.hostNodeId, 2);
    assert.equal(last?.srat, 'hotplug-region');
    const dimm = topo.memoryDevices.find((d) => d.groupId === 'dimm-a');
    assert.equal(dimm?.backend.type, 'memory-backend-file');
    assert.equal(dimm?.backend.memPath, '/dev/dax0.0');
    assert.equal(dimm?.backend.bindHostNode, false);
  });

  it('two DAX-only classes cannot both be targets: refused', () => {
    const input = threeClasses();
    input.pools = input.pools.map((p) => (p.id === 'pool-2' ? { ...p, daxDevicePath: '/dev/dax0.0' } : p.id === 'pool-4' ? { ...p, daxDevicePath: '/dev/dax1.0' } : p));
    input.groups = input.groups.filter((g) => g.id !== 'vmem-later');
    assert.throws(() => compileTopology(input), refusal('FAILED_PRECONDITION', 'SRAT_PLACEMENT_IMPOSSIBLE', /build_srat/));
  });

  it('a CXL node with neither boot memory nor the last position would keep the default 576', () => {
    // Shown through predictTiers in tiers.spec; here: the compiler never produces one.
    const topo = compileTopology(threeClasses());
    const nonLast = topo.guestNodes.slice(0, -1).filter((n) => n.kind === 'CXL');
    assert.ok(nonLast.every((n) => n.bootMemoryBytes > 0));
  });
});

describe('memory devices', () => {
  it('STATIC → pc-dimm, DYNAMIC → virtio-mem-pci, predicted first-fit addresses from the device memory base', () => {
    const topo = compileTopology(twoSocketInput());
    assert.deepEqual(
      topo.memoryDevices.map((d) => [d.groupId, d.model, d.guestNodeId, d.plugged, d.predictedAddr]),
      [
        ['dimm-a', 'pc-dimm', 2, true, 4 * GiB],
        ['vmem-b', 'virtio-mem-pci', 3, true, 4 * GiB + 512 * MiB],
        ['vmem-later', 'virtio-mem-pci', 2, false, 4 * GiB + 2560 * MiB],
      ],
    );
    assert.equal(topo.machine.type, 'q35');
    assert.deepEqual(topo.pciePorts.map((p) => [p.id, p.purpose]), [
      ['rp-vmem-b', 'virtio-mem'],
      ['rp-spare0', 'spare'],
      ['rp-spare1', 'spare'],
    ]);
  });

  it('an expected guestNodeId must be the node of the pool class', () => {
    const input = twoSocketInput();
    input.groups[0] = { ...(input.groups[0] as (typeof input.groups)[number]), guestNodeId: 2 };
    assert.equal(compileTopology(input).memoryDevices.find((d) => d.groupId === 'dimm-a')?.guestNodeId, 2);
    input.groups[0] = { ...(input.groups[0] as (typeof input.groups)[number]), guestNodeId: 3 };
    assert.throws(() => compileTopology(input), refusal('INVALID_ARGUMENT', 'TOPOLOGY_INVALID', /asks for guest node 3.*is guest node 2/));
  });

  it('refuses groups that do not fit in maxmem − boot', () => {
    const input = twoSocketInput();
    input.vm.maxMemoryBytes = 4 * GiB;
    assert.throws(() => compileTopology(input), refusal('RESOURCE_EXHAUSTED', 'DEVICE_MEMORY_EXHAUSTED', /need 3584 MiB/));
  });

  it('refuses a DIMM that is not a whole number of guest memory blocks', () => {
    const input = oneCxlInput(perfOf(100, 100, 51200, 51200), perfOf(250, 250, 20480, 20480));
    input.groups = [staticGroup('g1', 'pool-a', 130 * MiB)];
    assert.throws(() => compileTopology(input), refusal('INVALID_ARGUMENT', 'TOPOLOGY_INVALID', /guest memory block 128 MiB/));
  });

  it('refuses more DIMMs than slots, and virtio-mem on a DAX pool', () => {
    const input = oneCxlInput(perfOf(100, 100, 51200, 51200), perfOf(250, 250, 20480, 20480));
    input.vm.memorySlots = 0;
    assert.throws(() => compileTopology(input), refusal('INVALID_ARGUMENT', 'TOPOLOGY_INVALID', /pc-dimm slots/));
    const dax = oneCxlInput(perfOf(100, 100, 51200, 51200), perfOf(250, 250, 20480, 20480));
    dax.pools = [{ id: 'pool-a', hostNodeId: 1, memoryType: 'VOLATILE', daxDevicePath: '/dev/dax0.0' }];
    dax.groups = [dynamicGroup('v', 'pool-a', GiB)];
    assert.throws(() => compileTopology(dax), refusal('INVALID_ARGUMENT', 'TOPOLOGY_INVALID', /discardable/));
  });

  it('q35 needs a spare port per virtio-mem group hotplugged later', () => {
    const input = twoSocketInput();
    input.vm.sparePciePorts = 0;
    // sparePciePorts 0 → pc: later virtio-mem goes to pci.0, allowed.
    assert.equal(compileTopology(input).machine.type, 'pc');
    input.vm.sparePciePorts = 1;
    input.groups.push(dynamicGroup('vmem-later2', 'pool-3', GiB, { plugged: false }));
    assert.throws(() => compileTopology(input), refusal('INVALID_ARGUMENT', 'TOPOLOGY_INVALID', /spare pcie-root-port/));
  });

  it('guest memory block: 128 MiB below a 64 GiB memory end, else the largest aligned power of two ≤ 2 GiB', () => {
    assert.equal(predictGuestMemoryBlockBytes('pc', 8 * GiB), 128 * MiB);
    // pc: ≥ 3.5 GiB → 3 GiB below 4G, so 64 GiB of RAM ends at 65 GiB → 1 GiB blocks.
    assert.equal(predictGuestMemoryBlockBytes('pc', 64 * GiB), 1 * GiB);
    // q35: 2 GiB below 4G, so 62 GiB ends at 64 GiB → 2 GiB blocks.
    assert.equal(predictGuestMemoryBlockBytes('q35', 62 * GiB), 2 * GiB);
  });
});

describe('host data fallbacks', () => {
  it('derives a missing performance pair from the nearest CPU node, scaled by SLIT, and says so', () => {
    const input = twoSocketInput();
    input.host.performance = input.host.performance.filter((p) => !(p.cpuNodeId === 1 && p.memoryNodeId === 2));
    const topo = compileTopology(input);
    const cell = topo.hmat.cells.find((c) => c.initiator === 1 && c.target === 2);
    // from 0→2 (250 ns, 20480) scaled by d(1,2)/d(0,2) = 34/24.
    assert.equal(cell?.host.readLatencyNs, Math.ceil((250 * 34) / 24));
    assert.equal(cell?.host.readBandwidthMBps, Math.floor((20480 * 24) / 34));
    assert.match(cell?.derivation ?? '', /derived from 0→2/);
  });

  it('derives missing distances from the latency ratio, and defaults to 20', () => {
    const input = twoSocketInput();
    delete input.host.distances;
    const topo = compileTopology(input);
    assert.equal(topo.distances[0]?.[2], 25, 'round(10·500/200)');
    assert.equal(topo.distances[0]?.[1], 15, 'round(10·300/200)');
    assert.ok(topo.warnings.some((w) => w.includes('derived (latency-ratio)')));
  });

  it('refuses when no CPU node has performance data for a memory node', () => {
    const input = twoSocketInput();
    input.host.performance = input.host.performance.filter((p) => p.memoryNodeId !== 3);
    assert.throws(() => compileTopology(input), refusal('FAILED_PRECONDITION', 'HOST_PERFORMANCE_MISSING', /memory node 3/));
  });
});
