import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { GiB, MiB } from '../units';
import { resolveGuestMemorySettings } from './guest-memory-profile';
import { blockSupportsMemmapOnMemory, memmapEffect, vmemmapBytesPerBlock } from './memmap-on-memory';
import { planMemoryGroup } from './memory-group';
import { virtioMemGuestUnit } from './virtio-mem';

describe('vmemmap size per memory block (64-byte struct page)', () => {
  const cases = [
    { block: 128 * MiB, vmemmap: 2 * MiB },
    { block: 256 * MiB, vmemmap: 4 * MiB },
    { block: 2 * GiB, vmemmap: 32 * MiB },
  ];
  for (const c of cases) {
    it(`${c.block / MiB} MiB block → ${c.vmemmap / MiB} MiB, and qualifies`, () => {
      assert.equal(vmemmapBytesPerBlock(c.block), c.vmemmap);
      assert.equal(blockSupportsMemmapOnMemory(c.block), true);
    });
  }
  it('a 64 MiB block (1 MiB vmemmap: not a pageblock, not a PMD) would not qualify', () => {
    assert.equal(blockSupportsMemmapOnMemory(64 * MiB), false);
  });
  it('a 2 MiB block (32 KiB vmemmap) fails the pageblock check', () => {
    assert.equal(blockSupportsMemmapOnMemory(2 * MiB), false);
  });
});

describe('memmap_on_memory effect on groups', () => {
  const on612 = resolveGuestMemorySettings('linux-6.12', { memmapOnMemory: true });
  const on61 = resolveGuestMemorySettings('linux-6.1', { memmapOnMemory: true });
  const cases: {
    name: string;
    kind: 'STATIC' | 'DYNAMIC';
    size: number;
    settings: ReturnType<typeof resolveGuestMemorySettings>;
    placement: string;
    usable: number;
  }[] = [
    { name: '6.12, 128 MiB DIMM', kind: 'STATIC', size: 128 * MiB, settings: on612, placement: 'SELF_HOSTED', usable: 126 * MiB },
    { name: '6.12, 1 GiB DIMM: 2 MiB from each of 8 blocks', kind: 'STATIC', size: GiB, settings: on612, placement: 'SELF_HOSTED', usable: 1008 * MiB },
    { name: '6.1, one-block DIMM', kind: 'STATIC', size: 128 * MiB, settings: on61, placement: 'SELF_HOSTED', usable: 126 * MiB },
    { name: '6.1, two-block DIMM: not one block', kind: 'STATIC', size: 256 * MiB, settings: on61, placement: 'RANGE_NOT_ONE_BLOCK', usable: 256 * MiB },
    {
      name: 'off by default',
      kind: 'STATIC',
      size: GiB,
      settings: resolveGuestMemorySettings('linux-6.12'),
      placement: 'DISABLED',
      usable: GiB,
    },
    { name: 'virtio-mem never asks for it', kind: 'DYNAMIC', size: GiB, settings: on612, placement: 'NOT_REQUESTED_BY_DRIVER', usable: GiB },
  ];
  for (const c of cases) {
    it(c.name, () => {
      const e = memmapEffect(c.kind, c.size, c.settings);
      assert.equal(e.placement, c.placement);
      assert.equal(e.usableBytes, c.usable);
      assert.equal(e.vmemmapBytes, (c.size / (128 * MiB)) * 2 * MiB);
    });
  }

  it('2 GiB memory blocks lose 32 MiB each', () => {
    const s = resolveGuestMemorySettings('linux-6.12', { memmapOnMemory: true, memoryBlockSizeBytes: 2 * GiB });
    assert.equal(memmapEffect('STATIC', 4 * GiB, s).usableBytes, 4 * GiB - 64 * MiB);
  });

  it('shows up in the group plan', () => {
    const plan = planMemoryGroup({ kind: 'STATIC', sizeBytes: 512 * MiB, guestNodeId: 0, onlineType: 'AUTO' }, on612);
    assert.equal(plan.usableBytes, 504 * MiB);
    assert.equal(plan.memmap.vmemmapBytesPerBlock, 2 * MiB);
  });
});

describe('virtioMemGuestUnit boundaries', () => {
  it('a device block below the pageblock still gives 2 MiB sub-blocks', () => {
    assert.deepEqual(virtioMemGuestUnit(MiB, 128 * MiB), { mode: 'SBM', unitBytes: 2 * MiB, memoryGroupUnitBytes: 128 * MiB });
  });
  it('sub-block just below the memory block is SBM, equal is BBM', () => {
    assert.equal(virtioMemGuestUnit(64 * MiB, 128 * MiB).mode, 'SBM');
    assert.equal(virtioMemGuestUnit(128 * MiB, 128 * MiB).mode, 'BBM');
    assert.equal(virtioMemGuestUnit(GiB, 2 * GiB).mode, 'SBM');
  });
});
