import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { GiB, MiB } from '../units';
import { planVmMemory, type NamedMemoryGroup, type VmMemoryLayout } from './vm-memory';
import { expectDomainError, violationsOn } from './spec-helpers';

const vm = (o: Partial<VmMemoryLayout> = {}): VmMemoryLayout => ({
  kernelProfileId: 'linux-6.12',
  nodes: [
    { nodeId: 0, bootMemoryBytes: 4 * GiB },
    { nodeId: 1, bootMemoryBytes: 0 },
  ],
  memorySlots: 4,
  maxMemoryBytes: 64 * GiB,
  ...o,
});
const dimm = (id: string, sizeBytes = 128 * MiB): NamedMemoryGroup => ({
  id,
  kind: 'STATIC',
  sizeBytes,
  guestNodeId: 1,
  onlineType: 'ONLINE_MOVABLE',
});
const vmem = (id: string, maxSizeBytes: number, requestedBytes = 0): NamedMemoryGroup => ({
  id,
  kind: 'DYNAMIC',
  maxSizeBytes,
  blockSizeBytes: 2 * MiB,
  requestedBytes,
  guestNodeId: 1,
  onlineType: 'ONLINE_MOVABLE',
});
const dimms = (n: number) => Array.from({ length: n }, (_, i) => dimm(`d${i}`));

describe('VM memory slots', () => {
  it('256 slots are accepted, 257 refused (ACPI_MAX_RAM_SLOTS)', () => {
    assert.doesNotThrow(() => planVmMemory(vm({ memorySlots: 256 }), []));
    const e = expectDomainError(() => planVmMemory(vm({ memorySlots: 257 }), []), 'INVALID_ARGUMENT', 'INVALID_VM_MEMORY_LAYOUT');
    assert.deepEqual(violationsOn(e, 'memorySlots'), ['memorySlots 257 must be an integer between 0 and 256']);
  });

  it('256 static groups fit 256 slots', () => {
    const plan = planVmMemory(vm({ memorySlots: 256 }), dimms(256));
    assert.equal(plan.staticGroupCount, 256);
  });

  it('257 static groups do not fit 256 slots', () => {
    const e = expectDomainError(
      () => planVmMemory(vm({ memorySlots: 256 }), dimms(257)),
      'FAILED_PRECONDITION',
      'VM_HOTPLUG_HEADROOM_EXCEEDED',
    );
    assert.deepEqual(violationsOn(e, 'memorySlots'), ['257 static memory groups need 257 memory slots but the VM has 256']);
  });

  it('static groups = slots is accepted, one more refused; virtio-mem takes no slot', () => {
    assert.doesNotThrow(() => planVmMemory(vm({ memorySlots: 2 }), [...dimms(2), vmem('v0', GiB)]));
    expectDomainError(() => planVmMemory(vm({ memorySlots: 2 }), dimms(3)), 'FAILED_PRECONDITION', 'VM_HOTPLUG_HEADROOM_EXCEEDED');
    assert.doesNotThrow(() => planVmMemory(vm({ memorySlots: 0, maxMemoryBytes: 8 * GiB }), [vmem('v0', 4 * GiB)]));
  });
});

describe('VM maximum memory', () => {
  it('boot + every group max = maxmem is accepted', () => {
    const plan = planVmMemory(vm({ maxMemoryBytes: 4 * GiB + GiB + 3 * GiB }), [dimm('d0', GiB), vmem('v0', 3 * GiB)]);
    assert.equal(plan.totalMemoryBytes, 8 * GiB);
    assert.equal(plan.bootMemoryBytes, 4 * GiB);
  });

  it('one memory block over maxmem is refused, naming the numbers; virtio-mem counts at its max', () => {
    const e = expectDomainError(
      () => planVmMemory(vm({ maxMemoryBytes: 8 * GiB }), [dimm('d0', GiB), vmem('v0', 3 * GiB + 128 * MiB, 0)]),
      'FAILED_PRECONDITION',
      'VM_HOTPLUG_HEADROOM_EXCEEDED',
    );
    assert.deepEqual(violationsOn(e, 'maxMemoryBytes'), [
      'boot memory 4 GiB + memory groups 4224 MiB = 8320 MiB exceeds maxMemoryBytes 8 GiB',
    ]);
  });

  it('names both limits when both are exceeded', () => {
    const e = expectDomainError(
      () => planVmMemory(vm({ memorySlots: 1, maxMemoryBytes: 4 * GiB + 128 * MiB }), dimms(2)),
      'FAILED_PRECONDITION',
      'VM_HOTPLUG_HEADROOM_EXCEEDED',
    );
    assert.deepEqual(e.violations.map((v) => v.field), ['memorySlots', 'maxMemoryBytes']);
  });

  const layoutCases: { name: string; o: Partial<VmMemoryLayout>; field: string; description: string }[] = [
    {
      name: 'maxmem below boot memory',
      o: { maxMemoryBytes: 2 * GiB },
      field: 'maxMemoryBytes',
      description: 'maxMemoryBytes 2 GiB is less than the boot memory 4 GiB',
    },
    {
      name: 'maxmem equal to boot memory with slots',
      o: { maxMemoryBytes: 4 * GiB },
      field: 'maxMemoryBytes',
      description: 'maxMemoryBytes 4 GiB equals the boot memory, leaving no room for the 4 memory slots',
    },
    {
      name: 'maxmem not page-aligned',
      o: { maxMemoryBytes: 8 * GiB + 512 },
      field: 'maxMemoryBytes',
      description: `maxMemoryBytes ${8 * GiB + 512} B is not a multiple of the 4096 B page`,
    },
    {
      name: 'negative slots',
      o: { memorySlots: -1 },
      field: 'memorySlots',
      description: 'memorySlots -1 must be an integer between 0 and 256',
    },
    {
      name: 'duplicate guest node',
      o: { nodes: [{ nodeId: 0, bootMemoryBytes: GiB }, { nodeId: 0, bootMemoryBytes: GiB }] },
      field: 'nodes[1].nodeId',
      description: 'nodeId 0 appears twice',
    },
  ];
  for (const c of layoutCases) {
    it(`refuses ${c.name}`, () => {
      const e = expectDomainError(() => planVmMemory(vm(c.o), []), 'INVALID_ARGUMENT', 'INVALID_VM_MEMORY_LAYOUT');
      assert.deepEqual(violationsOn(e, c.field), [c.description]);
    });
  }

  it('maxmem = boot memory is fine without slots', () => {
    assert.doesNotThrow(() => planVmMemory(vm({ memorySlots: 0, maxMemoryBytes: 4 * GiB }), []));
  });
});

describe('VM group validation', () => {
  it('prefixes group violations with memoryGroups[i] and checks the guest node exists', () => {
    const e = expectDomainError(
      () => planVmMemory(vm(), [dimm('ok'), { ...dimm('bad', 200 * MiB), guestNodeId: 7 }, dimm('ok')]),
      'INVALID_ARGUMENT',
      'INVALID_VM_MEMORY_LAYOUT',
    );
    assert.deepEqual(violationsOn(e, 'memoryGroups[1].sizeBytes'), [
      'sizeBytes 200 MiB is not a multiple of the guest memory block size 128 MiB',
    ]);
    assert.deepEqual(violationsOn(e, 'memoryGroups[1].guestNodeId'), ['guestNodeId 7 is not a guest NUMA node of this VM']);
    assert.deepEqual(violationsOn(e, 'memoryGroups[2].id'), ['memory group id "ok" appears twice']);
  });

  it('uses the VM profile overrides for every group', () => {
    const e = expectDomainError(
      () => planVmMemory(vm({ guestMemory: { memoryBlockSizeBytes: 256 * MiB } }), [dimm('d0', 128 * MiB)]),
      'INVALID_ARGUMENT',
      'INVALID_VM_MEMORY_LAYOUT',
    );
    assert.deepEqual(violationsOn(e, 'memoryGroups[0].sizeBytes'), [
      'sizeBytes 128 MiB is not a multiple of the guest memory block size 256 MiB',
    ]);
  });

  it('derives the block size from bootMemoryEndBytes: a 65 GiB guest refuses a 128 MiB DIMM', () => {
    const big = vm({ nodes: [{ nodeId: 0, bootMemoryBytes: 64 * GiB }, { nodeId: 1, bootMemoryBytes: 0 }], bootMemoryEndBytes: 65 * GiB, maxMemoryBytes: 128 * GiB });
    const e = expectDomainError(() => planVmMemory(big, [dimm('d0', 128 * MiB)]), 'INVALID_ARGUMENT', 'INVALID_VM_MEMORY_LAYOUT');
    assert.deepEqual(violationsOn(e, 'memoryGroups[0].sizeBytes'), ['sizeBytes 128 MiB is not a multiple of the guest memory block size 1 GiB']);
    assert.equal(planVmMemory(big, [dimm('d0', GiB)]).settings.memoryBlockSizeBytes, GiB);
  });

  it('refuses an unknown kernel profile', () => {
    const e = expectDomainError(() => planVmMemory(vm({ kernelProfileId: 'linux-4.19' }), [dimm('d0')]), 'INVALID_ARGUMENT', 'INVALID_VM_MEMORY_LAYOUT');
    assert.equal(violationsOn(e, 'kernelProfileId').length, 1);
  });

  it('returns plans and the zone report', () => {
    const plan = planVmMemory(vm(), [dimm('d0', GiB), vmem('v0', 4 * GiB, 512 * MiB)]);
    assert.deepEqual(plan.groups.map((g) => [g.id, g.guestUnit.mode]), [
      ['d0', 'DIMM'],
      ['v0', 'SBM'],
    ]);
    assert.deepEqual(plan.onlineZones.groups.map((g) => g.zone), ['MOVABLE', 'MOVABLE']);
    assert.equal(plan.onlineZones.global.movableBytes, GiB + 512 * MiB);
  });
});
