import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Violations } from '../errors';
import { GiB, MiB } from '../units';
import { resolveGuestMemorySettings } from './guest-memory-profile';
import {
  collectMemoryGroup,
  planMemoryGroup,
  type DynamicMemoryGroupSpec,
  type MemoryGroupSpec,
  type StaticMemoryGroupSpec,
} from './memory-group';
import { expectDomainError, violationsOn } from './spec-helpers';

const s612 = resolveGuestMemorySettings('linux-6.12');
const staticGroup = (sizeBytes: number): StaticMemoryGroupSpec => ({ kind: 'STATIC', sizeBytes, guestNodeId: 1, onlineType: 'ONLINE_MOVABLE' });
const dyn = (o: Partial<DynamicMemoryGroupSpec> = {}): DynamicMemoryGroupSpec => ({
  kind: 'DYNAMIC',
  maxSizeBytes: 4 * GiB,
  blockSizeBytes: 2 * MiB,
  requestedBytes: 0,
  guestNodeId: 1,
  onlineType: 'ONLINE_MOVABLE',
  ...o,
});

/** Violations of one field, or [] when the group is valid. */
function problems(spec: MemoryGroupSpec, field: string, settings = s612): string[] {
  const v = new Violations();
  collectMemoryGroup(spec, settings, v);
  return v.items.filter((i) => i.field === field).map((i) => i.description);
}

describe('STATIC group sizeBytes', () => {
  const cases: { name: string; size: number; expect: string[] }[] = [
    { name: 'one memory block (128 MiB)', size: 128 * MiB, expect: [] },
    { name: 'several blocks (1 GiB)', size: GiB, expect: [] },
    {
      name: '200 MiB: a 2 MiB multiple but not a block multiple',
      size: 200 * MiB,
      expect: ['sizeBytes 200 MiB is not a multiple of the guest memory block size 128 MiB'],
    },
    {
      name: 'just below one block (126 MiB)',
      size: 126 * MiB,
      expect: ['sizeBytes 126 MiB is not a multiple of the guest memory block size 128 MiB'],
    },
    {
      name: 'exactly 2 MiB: QEMU-aligned, still not a block',
      size: 2 * MiB,
      expect: ['sizeBytes 2 MiB is not a multiple of the guest memory block size 128 MiB'],
    },
    {
      name: 'just below 2 MiB (1 MiB): both rules',
      size: MiB,
      expect: [
        'sizeBytes 1 MiB is not a multiple of 2 MiB (QEMU pc-dimm backend alignment)',
        'sizeBytes 1 MiB is not a multiple of the guest memory block size 128 MiB',
      ],
    },
    {
      name: 'one block plus 1 MiB',
      size: 129 * MiB,
      expect: [
        'sizeBytes 129 MiB is not a multiple of 2 MiB (QEMU pc-dimm backend alignment)',
        'sizeBytes 129 MiB is not a multiple of the guest memory block size 128 MiB',
      ],
    },
    { name: 'zero', size: 0, expect: ['sizeBytes 0 must be a positive integer number of bytes'] },
    { name: 'negative', size: -128 * MiB, expect: [`sizeBytes ${-128 * MiB} must be a positive integer number of bytes`] },
    { name: 'fractional', size: 1.5, expect: ['sizeBytes 1.5 must be a positive integer number of bytes'] },
    { name: 'unsafe integer', size: 2 ** 53, expect: [`sizeBytes ${2 ** 53} must be a positive integer number of bytes`] },
  ];
  for (const c of cases) {
    it(c.name, () => assert.deepEqual(problems(staticGroup(c.size), 'sizeBytes'), c.expect));
  }

  it('follows a per-VM memory block override (256 MiB blocks refuse 128 MiB)', () => {
    const s = resolveGuestMemorySettings('linux-6.12', { memoryBlockSizeBytes: 256 * MiB });
    assert.deepEqual(problems(staticGroup(128 * MiB), 'sizeBytes', s), [
      'sizeBytes 128 MiB is not a multiple of the guest memory block size 256 MiB',
    ]);
    assert.deepEqual(problems(staticGroup(512 * MiB), 'sizeBytes', s), []);
  });

  it('plans a DIMM: plugged whole, one static memory group of its size', () => {
    const plan = planMemoryGroup(staticGroup(GiB), s612);
    assert.deepEqual(plan.guestUnit, { mode: 'DIMM', unitBytes: GiB, memoryGroupUnitBytes: GiB });
    assert.equal(plan.regionBytes, GiB);
    assert.equal(plan.pluggedBytes, GiB);
    assert.equal(plan.presentBytes, GiB);
    assert.equal(plan.usableBytes, GiB); // memmap_on_memory is off by default
  });

  it('throws INVALID_ARGUMENT / INVALID_MEMORY_GROUP naming every violation', () => {
    const e = expectDomainError(
      () => planMemoryGroup({ ...staticGroup(200 * MiB), guestNodeId: -1, onlineType: 'ONLINE' as never }, s612),
      'INVALID_ARGUMENT',
      'INVALID_MEMORY_GROUP',
    );
    assert.deepEqual(
      e.violations.map((v) => v.field),
      ['guestNodeId', 'onlineType', 'sizeBytes'],
    );
    assert.match(violationsOn(e, 'onlineType')[0] ?? '', /must be one of ONLINE_MOVABLE, ONLINE_KERNEL, AUTO/);
  });
});

describe('DYNAMIC group blockSizeBytes', () => {
  const cases: { name: string; block: number; ok: boolean }[] = [
    { name: 'exactly 2 MiB', block: 2 * MiB, ok: true },
    { name: 'just below 2 MiB (1 MiB, what QEMU would still accept)', block: MiB, ok: false },
    { name: '2 MiB − 1 B', block: 2 * MiB - 1, ok: false },
    { name: '3 MiB: not a power of two', block: 3 * MiB, ok: false },
    { name: '4 MiB', block: 4 * MiB, ok: true },
    { name: '128 MiB (one memory block)', block: 128 * MiB, ok: true },
    { name: '1 GiB', block: GiB, ok: true },
    { name: 'zero', block: 0, ok: false },
    { name: 'negative', block: -2 * MiB, ok: false },
  ];
  for (const c of cases) {
    it(`${c.name} → ${c.ok ? 'accepted' : 'refused'}`, () => {
      const got = problems(dyn({ blockSizeBytes: c.block }), 'blockSizeBytes');
      if (c.ok) assert.deepEqual(got, []);
      else assert.equal(got.length, 1, `expected one violation, got ${JSON.stringify(got)}`);
    });
  }
  it('names the rule and the number', () => {
    assert.deepEqual(problems(dyn({ blockSizeBytes: MiB }), 'blockSizeBytes'), [
      'blockSizeBytes 1 MiB must be a power of two of at least 2 MiB',
    ]);
  });
});

describe('DYNAMIC group maxSizeBytes', () => {
  const cases: { name: string; o: Partial<DynamicMemoryGroupSpec>; expect: string[] }[] = [
    { name: 'one memory block', o: { maxSizeBytes: 128 * MiB }, expect: [] },
    {
      name: 'a block multiple but not a memory-block multiple (130 MiB)',
      o: { maxSizeBytes: 130 * MiB },
      expect: ['maxSizeBytes 130 MiB is not a multiple of the guest memory block size 128 MiB'],
    },
    {
      name: 'not a multiple of the device block (1 GiB blocks, 1.5 GiB max)',
      o: { blockSizeBytes: GiB, maxSizeBytes: 1536 * MiB },
      expect: ['maxSizeBytes 1536 MiB is not a multiple of blockSizeBytes 1 GiB'],
    },
    {
      name: 'max equal to one device block (1 GiB)',
      o: { blockSizeBytes: GiB, maxSizeBytes: GiB },
      expect: [],
    },
    { name: 'zero', o: { maxSizeBytes: 0 }, expect: ['maxSizeBytes 0 must be a positive integer number of bytes'] },
  ];
  for (const c of cases) it(c.name, () => assert.deepEqual(problems(dyn(c.o), 'maxSizeBytes'), c.expect));
});

describe('DYNAMIC group requestedBytes', () => {
  const cases: { name: string; o: Partial<DynamicMemoryGroupSpec>; expect: string[] }[] = [
    { name: 'requested = 0', o: { requestedBytes: 0 }, expect: [] },
    { name: 'requested = max', o: { requestedBytes: 4 * GiB }, expect: [] },
    {
      name: 'requested = max + one block',
      o: { requestedBytes: 4 * GiB + 2 * MiB },
      expect: ['requestedBytes 4098 MiB exceeds maxSizeBytes 4 GiB'],
    },
    { name: 'requested = one device block', o: { requestedBytes: 2 * MiB }, expect: [] },
    {
      name: 'requested not a multiple of the device block',
      o: { blockSizeBytes: 4 * MiB, requestedBytes: 6 * MiB },
      expect: ['requestedBytes 6 MiB is not a multiple of blockSizeBytes 4 MiB'],
    },
    { name: 'negative', o: { requestedBytes: -2 * MiB }, expect: [`requestedBytes ${-2 * MiB} must be an integer number of bytes ≥ 0`] },
    { name: 'fractional', o: { requestedBytes: 0.5 }, expect: ['requestedBytes 0.5 must be an integer number of bytes ≥ 0'] },
  ];
  for (const c of cases) it(c.name, () => assert.deepEqual(problems(dyn(c.o), 'requestedBytes'), c.expect));
});

describe('DYNAMIC group guest unit (virtio-mem SBM/BBM)', () => {
  const cases: { name: string; block: number; overrides?: Parameters<typeof resolveGuestMemorySettings>[1]; unit: object }[] = [
    { name: '2 MiB block → SBM, 2 MiB sub-blocks', block: 2 * MiB, unit: { mode: 'SBM', unitBytes: 2 * MiB, memoryGroupUnitBytes: 128 * MiB } },
    { name: '64 MiB block → SBM', block: 64 * MiB, unit: { mode: 'SBM', unitBytes: 64 * MiB, memoryGroupUnitBytes: 128 * MiB } },
    {
      name: '128 MiB block = memory block → BBM (sb_size is not < memory block)',
      block: 128 * MiB,
      unit: { mode: 'BBM', unitBytes: 128 * MiB, memoryGroupUnitBytes: 128 * MiB },
    },
    { name: '1 GiB block → BBM 1 GiB', block: GiB, unit: { mode: 'BBM', unitBytes: GiB, memoryGroupUnitBytes: GiB } },
    {
      name: 'force_bbm with 2 MiB blocks → BBM of one memory block',
      block: 2 * MiB,
      overrides: { virtioMemForceBbm: true },
      unit: { mode: 'BBM', unitBytes: 128 * MiB, memoryGroupUnitBytes: 128 * MiB },
    },
    {
      name: 'bbm_block_size 1 GiB raises a 128 MiB BBM',
      block: 128 * MiB,
      overrides: { virtioMemBbmBlockSizeBytes: GiB },
      unit: { mode: 'BBM', unitBytes: GiB, memoryGroupUnitBytes: GiB },
    },
    {
      name: 'bbm_block_size below bb_size is ignored',
      block: 256 * MiB,
      overrides: { virtioMemBbmBlockSizeBytes: 128 * MiB },
      unit: { mode: 'BBM', unitBytes: 256 * MiB, memoryGroupUnitBytes: 256 * MiB },
    },
  ];
  for (const c of cases) {
    it(c.name, () => {
      const s = resolveGuestMemorySettings('linux-6.12', c.overrides);
      assert.deepEqual(planMemoryGroup(dyn({ blockSizeBytes: c.block }), s).guestUnit, c.unit);
    });
  }

  it('a forced big block refuses sizes between two big blocks', () => {
    const s = resolveGuestMemorySettings('linux-6.12', { virtioMemForceBbm: true });
    assert.deepEqual(problems(dyn({ requestedBytes: 2 * MiB }), 'requestedBytes', s), [
      "requestedBytes 2 MiB is not a multiple of the guest's Big Block Mode unit 128 MiB",
    ]);
    const s2 = resolveGuestMemorySettings('linux-6.12', { virtioMemBbmBlockSizeBytes: GiB });
    assert.deepEqual(problems(dyn({ blockSizeBytes: 128 * MiB, maxSizeBytes: 1536 * MiB }), 'maxSizeBytes', s2), [
      "maxSizeBytes 1536 MiB is not a multiple of the guest's Big Block Mode unit 1 GiB",
    ]);
  });

  it('SBM makes whole memory blocks present but only the plugged bytes usable', () => {
    const plan = planMemoryGroup(dyn({ requestedBytes: 130 * MiB }), s612);
    assert.equal(plan.pluggedBytes, 130 * MiB);
    assert.equal(plan.presentBytes, 256 * MiB);
    assert.equal(plan.usableBytes, 130 * MiB);
    assert.equal(plan.regionBytes, 4 * GiB);
  });

  it('requested 0 makes nothing present', () => {
    const plan = planMemoryGroup(dyn(), s612);
    assert.equal(plan.presentBytes, 0);
    assert.equal(plan.memmap.vmemmapBytes, 0);
  });
});
