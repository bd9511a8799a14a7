import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { DomainError } from '../errors';
import { GiB, MiB } from '../units';
import { checkGroupPool, checkSparePciePorts, effectiveGuestNodes, normalizeGroupInput, type GroupPoolFacts, type StoredMemoryGroup } from './memory-group-resource';
import { buildVmMemoryReport, checkVmHeadroom } from './report';
import { checkVmHostNodes, groupChangeMode, startTransition, stopTransition, validateVmSpec, VM_STATES, type VmSpec, type VmState } from './vm';

function expectError(fn: () => unknown, code: string, reason: string): DomainError {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof DomainError, String(e));
    assert.equal(e.code, code, e.message);
    assert.equal(e.reason, reason, e.message);
    return e;
  }
  assert.fail(`expected ${code}/${reason}`);
}

const vm = (o: Partial<VmSpec> = {}): VmSpec => ({
  name: 'vm-1',
  description: '',
  labels: {},
  host: 'hv-1',
  kernelProfile: 'linux-6.12',
  guestMemory: {},
  guestNodes: [
    { guestNodeId: 0, vcpus: 2, bootMemoryBytes: 2 * GiB },
    { guestNodeId: 1, vcpus: 2, bootMemoryBytes: 2 * GiB },
  ],
  memorySlots: 2,
  maxMemoryBytes: 16 * GiB,
  sparePciePorts: 1,
  ...o,
});

const group = (o: Partial<StoredMemoryGroup> & Pick<StoredMemoryGroup, 'uid'>): StoredMemoryGroup => ({
  name: o.uid,
  pool: 'p',
  poolHostNodeId: 2,
  kind: 'STATIC',
  sizeBytes: GiB,
  maxSizeBytes: 0,
  blockSizeBytes: 0,
  requestedBytes: 0,
  onlineType: 'ONLINE_MOVABLE',
  desiredState: 'PRESENT',
  heldBytes: GiB,
  hotplugged: false,
  ...o,
});

describe('VM description', () => {
  const cases: { name: string; spec: VmSpec; fields: string[] }[] = [
    { name: 'unknown kernel profile', spec: vm({ kernelProfile: 'linux-5.4' }), fields: ['kernelProfile'] },
    { name: 'guest node ids with a gap', spec: vm({ guestNodes: [{ guestNodeId: 0, vcpus: 1, bootMemoryBytes: GiB }, { guestNodeId: 2, vcpus: 1, bootMemoryBytes: GiB }] }), fields: ['guestNodes'] },
    { name: 'no guest node', spec: vm({ guestNodes: [] }), fields: ['guestNodes'] },
    { name: 'a node without vCPUs', spec: vm({ guestNodes: [{ guestNodeId: 0, vcpus: 0, bootMemoryBytes: GiB }] }), fields: ['guestNodes[0].vcpus'] },
    { name: 'boot memory not 2 MiB aligned', spec: vm({ guestNodes: [{ guestNodeId: 0, vcpus: 1, bootMemoryBytes: GiB + MiB }] }), fields: ['guestNodes[0].bootMemoryBytes'] },
    { name: '257 slots', spec: vm({ memorySlots: 257 }), fields: ['memorySlots'] },
    { name: 'maxmem below boot memory', spec: vm({ maxMemoryBytes: 2 * GiB }), fields: ['maxMemoryBytes'] },
    { name: '25 spare PCIe ports', spec: vm({ sparePciePorts: 25 }), fields: ['sparePciePorts'] },
    { name: 'a bad online policy override', spec: vm({ guestMemory: { onlinePolicy: 'SOMETIMES' as never } }), fields: ['guestMemory.onlinePolicy'] },
    { name: 'an upper-case name', spec: vm({ name: 'VM_1' }), fields: ['name'] },
  ];
  for (const c of cases) {
    it(`refuses ${c.name}`, () => {
      const e = expectError(() => validateVmSpec(c.spec), 'INVALID_ARGUMENT', 'INVALID_VM');
      assert.deepEqual([...new Set(e.violations.map((v) => v.field))], c.fields, JSON.stringify(e.violations));
    });
  }

  it('accepts a valid VM and resolves the guest settings of its kernel profile', () => {
    const s = validateVmSpec(vm({ guestMemory: { memmapOnMemory: true } }));
    assert.equal(s.memoryBlockSizeBytes, 128 * MiB);
    assert.equal(s.memmapOnMemory, true);
    assert.equal(s.autoMovableRatioPercent, 301);
  });

  it('pinned guest nodes need a DRAM host node with CPUs', () => {
    const host = {
      name: 'hv-1',
      nodes: [
        { nodeId: 0, cpus: [0, 1], memoryBytes: 64 * GiB, kind: 'DRAM' as const },
        { nodeId: 2, cpus: [], memoryBytes: 64 * GiB, kind: 'CXL' as const },
      ],
    };
    assert.doesNotThrow(() => checkVmHostNodes(vm({ guestNodes: [{ guestNodeId: 0, vcpus: 1, bootMemoryBytes: GiB, hostNodeId: 0 }] }), host));
    const e = expectError(() => checkVmHostNodes(vm({ guestNodes: [{ guestNodeId: 0, vcpus: 1, bootMemoryBytes: GiB, hostNodeId: 2 }] }), host), 'INVALID_ARGUMENT', 'INVALID_VM');
    assert.match(e.violations[0]!.description, /node 2 of host hv-1 is CXL with 0 CPUs/);
    expectError(() => checkVmHostNodes(vm({ guestNodes: [{ guestNodeId: 0, vcpus: 1, bootMemoryBytes: GiB, hostNodeId: 7 }] }), host), 'INVALID_ARGUMENT', 'INVALID_VM');
  });
});

describe('VM transitions (AIP-216)', () => {
  const starts: Record<VmState, boolean> = { DEFINED: true, STOPPED: true, FAILED: true, STARTING: false, RUNNING: false, STOPPING: false };
  for (const s of VM_STATES) {
    it(`:start from ${s} ${starts[s] ? '→ STARTING' : 'is refused'}`, () => {
      if (starts[s]) assert.equal(startTransition('vm-1', s, 'READY', 'hv-1'), 'STARTING');
      else expectError(() => startTransition('vm-1', s, 'READY', 'hv-1'), 'FAILED_PRECONDITION', 'VM_STATE_CONFLICT');
    });
    it(`:stop from ${s} ${s === 'RUNNING' ? '→ STOPPING' : 'is refused'}`, () => {
      if (s === 'RUNNING') assert.equal(stopTransition('vm-1', s), 'STOPPING');
      else expectError(() => stopTransition('vm-1', s), 'FAILED_PRECONDITION', 'VM_STATE_CONFLICT');
    });
  }
  it('a VM does not start on a host that is not READY', () => {
    const e = expectError(() => startTransition('vm-1', 'DEFINED', 'MAINTENANCE', 'hv-1'), 'FAILED_PRECONDITION', 'HOST_NOT_READY');
    assert.equal(e.message, 'host hv-1 is MAINTENANCE, not READY: no VM starts on it');
  });
  it('group changes: direct at rest, an operation while starting or running, refused while stopping', () => {
    for (const s of ['DEFINED', 'STOPPED', 'FAILED'] as const) assert.equal(groupChangeMode('vm-1', s), 'DIRECT');
    for (const s of ['STARTING', 'RUNNING'] as const) assert.equal(groupChangeMode('vm-1', s), 'OPERATION');
    expectError(() => groupChangeMode('vm-1', 'STOPPING'), 'FAILED_PRECONDITION', 'VM_STATE_CONFLICT');
  });
});

describe('memory group resource rules', () => {
  it('field checks per kind, and CPU-less guest nodes only', () => {
    const base = { name: 'g', vm: 'vm-1', pool: 'p', onlineType: 'ONLINE_MOVABLE' as const };
    const e = expectError(
      () => normalizeGroupInput({ ...base, kind: 'STATIC', sizeBytes: GiB, requestedBytes: GiB, guestNodeId: 1 }, vm()),
      'INVALID_ARGUMENT',
      'INVALID_MEMORY_GROUP',
    );
    assert.deepEqual(e.violations.map((v) => v.field), ['guestNodeId', 'requestedBytes']);
    assert.match(e.violations[0]!.description, /guestNodeId 1 is a guest CPU node \(0\.\.1\)/);
    assert.deepEqual(normalizeGroupInput({ ...base, kind: 'DYNAMIC', maxSizeBytes: GiB }, vm()), {
      kind: 'DYNAMIC',
      sizeBytes: 0,
      maxSizeBytes: GiB,
      blockSizeBytes: 2 * MiB,
      requestedBytes: 0,
      onlineType: 'ONLINE_MOVABLE',
    });
  });

  it('the pool must be on the VM host, CPU-addressable, ACTIVE, and RAM for virtio-mem', () => {
    const pool: GroupPoolFacts = { name: 'p', host: 'hv-1', hostNodeId: 2, state: 'ACTIVE', memoryType: 'VOLATILE', cpuAddressable: true };
    assert.doesNotThrow(() => checkGroupPool(pool, 'hv-1', 'STATIC'));
    expectError(() => checkGroupPool(pool, 'hv-2', 'STATIC'), 'INVALID_ARGUMENT', 'POOL_ON_OTHER_HOST');
    expectError(() => checkGroupPool({ ...pool, cpuAddressable: false }, 'hv-1', 'STATIC'), 'INVALID_ARGUMENT', 'POOL_MEMORY_NOT_CPU_ADDRESSABLE');
    expectError(() => checkGroupPool({ ...pool, state: 'DRAINING' }, 'hv-1', 'STATIC'), 'FAILED_PRECONDITION', 'POOL_NOT_ACTIVE');
    expectError(() => checkGroupPool({ ...pool, daxDevicePath: '/dev/dax0.0' }, 'hv-1', 'DYNAMIC'), 'INVALID_ARGUMENT', 'DAX_POOL_NOT_DISCARDABLE');
  });

  it('hotplugged DYNAMIC groups need spare PCIe ports', () => {
    assert.doesNotThrow(() => checkSparePciePorts({ name: 'vm-1', sparePciePorts: 1 }, 1));
    const e = expectError(() => checkSparePciePorts({ name: 'vm-1', sparePciePorts: 1 }, 2), 'FAILED_PRECONDITION', 'VM_PCIE_PORTS_EXHAUSTED');
    assert.match(e.message, /2 DYNAMIC groups added while vm vm-1 runs need 2 spare PCIe root ports but the VM was launched with 1/);
  });

  it('guest nodes: explicit ones stay, the others get one CPU-less node per pool host node, after the CPU nodes', () => {
    const nodes = effectiveGuestNodes(2, [
      { uid: 'a', poolHostNodeId: 5 },
      { uid: 'b', poolHostNodeId: 3 },
      { uid: 'c', poolHostNodeId: 5 },
      { uid: 'd', poolHostNodeId: 3, guestNodeId: 9 },
    ]);
    assert.deepEqual(Object.fromEntries(nodes), { a: 3, b: 2, c: 3, d: 9 });
  });

  it('headroom: slots and maxmem name both numbers', () => {
    const spec = vm({ memorySlots: 1, maxMemoryBytes: 6 * GiB });
    assert.doesNotThrow(() => checkVmHeadroom(spec, [group({ uid: 'a' })]));
    const slots = expectError(() => checkVmHeadroom(spec, [group({ uid: 'a' }), group({ uid: 'b' })]), 'FAILED_PRECONDITION', 'VM_HOTPLUG_HEADROOM_EXCEEDED');
    assert.deepEqual(slots.violations, [{ field: 'memorySlots', description: '2 static memory groups need 2 memory slots but the VM has 1' }]);
    const maxmem = expectError(
      () => checkVmHeadroom(spec, [group({ uid: 'a' }), group({ uid: 'v', kind: 'DYNAMIC', sizeBytes: 0, maxSizeBytes: 2 * GiB, blockSizeBytes: 2 * MiB })]),
      'FAILED_PRECONDITION',
      'VM_HOTPLUG_HEADROOM_EXCEEDED',
    );
    assert.deepEqual(maxmem.violations, [{ field: 'maxMemoryBytes', description: 'boot memory 4 GiB + memory groups 3 GiB = 7 GiB exceeds maxMemoryBytes 6 GiB' }]);
  });

  it('the report names groups, guest units, usable bytes and the movable ratio warning', () => {
    const spec = vm({ guestNodes: [{ guestNodeId: 0, vcpus: 1, bootMemoryBytes: GiB }], guestMemory: { memmapOnMemory: true } });
    const r = buildVmMemoryReport(spec, [
      group({ uid: 'u-dimm', name: 'dimm', sizeBytes: GiB }),
      group({ uid: 'u-vmem', name: 'vmem', kind: 'DYNAMIC', sizeBytes: 0, maxSizeBytes: 8 * GiB, blockSizeBytes: 2 * MiB, requestedBytes: 3 * GiB }),
      group({ uid: 'u-gone', name: 'gone', desiredState: 'ABSENT' }),
    ]);
    assert.deepEqual(
      r.groups.map((g) => [g.name, g.effectiveGuestNodeId, g.guestUnit.mode, g.usableBytes, g.memmapPlacement, g.zone]),
      [
        ['dimm', 1, 'DIMM', GiB - 16 * MiB, 'SELF_HOSTED', 'MOVABLE'],
        ['vmem', 1, 'SBM', 3 * GiB, 'NOT_REQUESTED_BY_DRIVER', 'MOVABLE'],
      ],
    );
    assert.equal(r.staticGroupCount, 2, 'a group being unplugged still holds its slot');
    assert.equal(r.totalMemoryBytes, GiB + GiB + 8 * GiB + GiB);
    assert.equal(r.global.ratioPercent, 400);
    assert.equal(r.global.exceeds, true);
    const w = r.warnings.find((x) => x.code === 'MOVABLE_RATIO_EXCEEDED' && x.guestNodeId === undefined);
    assert.ok(w, JSON.stringify(r.warnings));
    assert.match(w.message, /the whole VM: movable memory 4 GiB is 400 % of early kernel memory 1 GiB, above auto_movable_ratio 301 %/);
  });
});
