import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { DomainError } from '../errors';
import { GiB, MiB, PiB } from '../units';
import { validateHostSpec, requirePoolNode, type HostSpec } from './host';
import { checkNodeCapacity, validatePoolSpec, type PoolSpec } from './pool';
import { resolveUpdateMask, checkEtag, etagOf } from './update-mask';

const host = (patch: Partial<HostSpec> = {}): HostSpec => ({
  name: 'hv-01',
  description: '',
  labels: {},
  state: 'READY',
  nodes: [
    { nodeId: 0, cpus: [0, 1], memoryBytes: 16 * GiB, kind: 'DRAM' },
    { nodeId: 1, cpus: [], memoryBytes: 64 * GiB, kind: 'CXL' },
  ],
  performance: [{ cpuNodeId: 0, memoryNodeId: 1, readLatencyNs: 250, writeLatencyNs: 250, readBandwidthMBps: 20480, writeBandwidthMBps: 20480 }],
  distances: [
    { fromNodeId: 0, toNodeId: 0, distance: 10 },
    { fromNodeId: 0, toNodeId: 1, distance: 24 },
  ],
  ...patch,
});

function violations(fn: () => void): string[] {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof DomainError);
    return e.violations.map((v) => `${v.field}: ${v.description}`);
  }
  return [];
}

describe('host rules', () => {
  it('accepts a well-formed host', () => assert.deepEqual(violations(() => validateHostSpec(host())), []));

  const cases: [string, Partial<HostSpec>, RegExp][] = [
    ['a CXL node with CPUs', { nodes: [{ nodeId: 0, cpus: [0], memoryBytes: GiB, kind: 'DRAM' }, { nodeId: 1, cpus: [3], memoryBytes: GiB, kind: 'CXL' }] }, /^nodes\[1\]\.cpus: a CXL node has no CPUs/],
    ['a duplicate node id', { nodes: [{ nodeId: 0, cpus: [0], memoryBytes: GiB, kind: 'DRAM' }, { nodeId: 0, cpus: [], memoryBytes: GiB, kind: 'CXL' }], performance: [], distances: [] }, /^nodes\[1\]\.nodeId: node 0 is listed twice/],
    ['a CPU in two nodes', { nodes: [{ nodeId: 0, cpus: [0], memoryBytes: GiB, kind: 'DRAM' }, { nodeId: 1, cpus: [0], memoryBytes: GiB, kind: 'DRAM' }], performance: [], distances: [] }, /^nodes\[1\]\.cpus\[0\]: CPU 0 already belongs to node 0/],
    ['no nodes', { nodes: [], performance: [], distances: [] }, /^nodes: a host has at least one NUMA node/],
    ['zero memory', { nodes: [{ nodeId: 0, cpus: [0], memoryBytes: 0, kind: 'DRAM' }], performance: [], distances: [] }, /^nodes\[0\]\.memoryBytes: must be a positive integer/],
    ['fractional memory', { nodes: [{ nodeId: 0, cpus: [0], memoryBytes: 1.5, kind: 'DRAM' }], performance: [], distances: [] }, /^nodes\[0\]\.memoryBytes: must be a positive integer/],
    ['absurd memory', { nodes: [{ nodeId: 0, cpus: [0], memoryBytes: 5 * PiB, kind: 'DRAM' }], performance: [], distances: [] }, /^nodes\[0\]\.memoryBytes: 5 PiB is more than the 4 PiB/],
    ['node id past MAX_NUMNODES', { nodes: [{ nodeId: 1024, cpus: [0], memoryBytes: GiB, kind: 'DRAM' }], performance: [], distances: [] }, /^nodes\[0\]\.nodeId: must be an integer from 0 to 1023/],
    ['performance from a CPU-less node', { performance: [{ cpuNodeId: 1, memoryNodeId: 1, readLatencyNs: 1, writeLatencyNs: 1, readBandwidthMBps: 1, writeBandwidthMBps: 1 }] }, /^performance\[0\]\.cpuNodeId: node 1 has no CPUs/],
    ['performance to a missing node', { performance: [{ cpuNodeId: 0, memoryNodeId: 7, readLatencyNs: 1, writeLatencyNs: 1, readBandwidthMBps: 1, writeBandwidthMBps: 1 }] }, /^performance\[0\]\.memoryNodeId: node 7 is not a node/],
    ['zero latency', { performance: [{ cpuNodeId: 0, memoryNodeId: 1, readLatencyNs: 0, writeLatencyNs: 1, readBandwidthMBps: 1, writeBandwidthMBps: 1 }] }, /^performance\[0\]\.readLatencyNs: must be a positive integer \(ns\), got 0/],
    ['latency past 10 ms', { performance: [{ cpuNodeId: 0, memoryNodeId: 1, readLatencyNs: 1, writeLatencyNs: 10_000_001, readBandwidthMBps: 1, writeBandwidthMBps: 1 }] }, /^performance\[0\]\.writeLatencyNs: 10000001 ns is out of range/],
    ['a duplicate performance pair', { performance: [...host().performance, ...host().performance] }, /^performance\[1\]: the pair cpuNodeId 0 -> memoryNodeId 1 is listed twice/],
    ['self distance other than 10', { distances: [{ fromNodeId: 1, toNodeId: 1, distance: 11 }] }, /^distances\[0\]\.distance: a node's distance to itself is 10/],
    ['remote distance of 10', { distances: [{ fromNodeId: 0, toNodeId: 1, distance: 10 }] }, /^distances\[0\]\.distance: the distance between two different nodes must be from 11 to 254/],
    ['remote distance of 255', { distances: [{ fromNodeId: 0, toNodeId: 1, distance: 255 }] }, /must be from 11 to 254/],
    ['a bad name', { name: 'HV_01' }, /^name: "HV_01" is not a valid name/],
  ];
  for (const [what, patch, expected] of cases) {
    it(`refuses ${what}`, () => {
      const v = violations(() => validateHostSpec(host(patch)));
      assert.ok(v.some((x) => expected.test(x)), v.join('\n'));
    });
  }

  it('accepts the boundaries: distance 11 and 254, latency 10 ms, node 1023', () => {
    const ok = host({
      nodes: [
        { nodeId: 0, cpus: [0], memoryBytes: GiB, kind: 'DRAM' },
        { nodeId: 1023, cpus: [], memoryBytes: 4 * PiB, kind: 'CXL' },
      ],
      performance: [{ cpuNodeId: 0, memoryNodeId: 1023, readLatencyNs: 10_000_000, writeLatencyNs: 1, readBandwidthMBps: 100_000_000, writeBandwidthMBps: 1 }],
      distances: [
        { fromNodeId: 0, toNodeId: 1023, distance: 11 },
        { fromNodeId: 1023, toNodeId: 0, distance: 254 },
      ],
    });
    assert.deepEqual(violations(() => validateHostSpec(ok)), []);
  });
});

describe('pool rules', () => {
  const pool = (patch: Partial<PoolSpec> = {}): PoolSpec => ({
    name: 'cxl-a',
    description: '',
    labels: {},
    host: 'hv-01',
    hostNodeId: 1,
    capacityBytes: 32 * GiB,
    granuleBytes: 128 * MiB,
    memoryType: 'VOLATILE',
    state: 'ACTIVE',
    ...patch,
  });

  it('needs a CPU-less node of the host', () => {
    assert.equal(requirePoolNode(host(), 1).nodeId, 1);
    assert.throws(() => requirePoolNode(host(), 0), (e: DomainError) => e.reason === 'POOL_NODE_HAS_CPUS' && e.violations[0]!.field === 'hostNodeId');
    assert.throws(() => requirePoolNode(host(), 5), (e: DomainError) => e.reason === 'POOL_NODE_NOT_FOUND');
  });

  it('keeps the capacities on one node within its memory, exactly at the limit included', () => {
    const node = host().nodes[1]!;
    checkNodeCapacity(node, 32 * GiB, [{ name: 'other', capacityBytes: 32 * GiB }]);
    assert.throws(
      () => checkNodeCapacity(node, 32 * GiB + 128 * MiB, [{ name: 'other', capacityBytes: 32 * GiB }]),
      (e: DomainError) => e.reason === 'POOL_EXCEEDS_NODE_MEMORY' && /does not fit on node 1, which has 64 GiB \(other pools on the node hold 32 GiB: other\)/.test(e.message),
    );
  });

  const cases: [string, Partial<PoolSpec>, RegExp][] = [
    ['a granule that is not a power of two', { granuleBytes: 3 * MiB }, /^granuleBytes: must be a power of two/],
    ['a granule below 2 MiB', { granuleBytes: MiB, capacityBytes: 32 * MiB }, /^granuleBytes: 1 MiB is out of range \(2 MiB to 64 GiB\)/],
    ['a capacity off the granule', { capacityBytes: 32 * GiB + MiB }, /^capacityBytes: 32769 MiB is not a multiple of the allocation granule 128 MiB/],
    ['a zero capacity', { capacityBytes: 0 }, /^capacityBytes: must be a positive integer/],
    ['a DAX path that is not one', { daxDevicePath: '/dev/sda' }, /^daxDevicePath: "\/dev\/sda" is not a device-DAX path/],
  ];
  for (const [what, patch, expected] of cases) {
    it(`refuses ${what}`, () => {
      const v = violations(() => validatePoolSpec(pool(patch)));
      assert.ok(v.some((x) => expected.test(x)), v.join('\n'));
    });
  }
  it('accepts a 2 MiB granule and a DAX device path', () => assert.deepEqual(violations(() => validatePoolSpec(pool({ granuleBytes: 2 * MiB, daxDevicePath: '/dev/dax0.0' }))), []));
});

describe('update masks and etags', () => {
  it('defaults to the updatable fields and refuses immutable or unknown ones', () => {
    assert.deepEqual(resolveUpdateMask([], ['a', 'b'], ['a', 'b', 'c']), ['a', 'b']);
    assert.deepEqual(resolveUpdateMask(['*'], ['a'], ['a']), ['a']);
    assert.throws(() => resolveUpdateMask(['c'], ['a'], ['a', 'c']), /c cannot be changed after creation/);
    assert.throws(() => resolveUpdateMask(['zz'], ['a'], ['a']), /zz is not a field of this resource/);
  });
  it('refuses a stale etag with ABORTED and passes the current one', () => {
    checkEtag('pool', 'p', etagOf(3), etagOf(3));
    checkEtag('pool', 'p', undefined, etagOf(3));
    assert.throws(() => checkEtag('pool', 'p', etagOf(2), etagOf(3)), (e: DomainError) => e.code === 'ABORTED' && e.reason === 'ETAG_MISMATCH');
  });
});
