import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { GiB, MiB } from '../units';
import {
  GUEST_MEMORY_PROFILES,
  probeGuestMemoryBlockSizeBytes,
  resolveGuestMemorySettings,
  type GuestMemoryOverrides,
} from './guest-memory-profile';
import { expectDomainError, violationsOn } from './spec-helpers';

describe('guest memory profiles', () => {
  it('linux-6.1 and linux-6.12 share the kernel defaults and differ in memmap_on_memory granularity', () => {
    for (const id of ['linux-6.1', 'linux-6.12'] as const) {
      const s = resolveGuestMemorySettings(id);
      assert.equal(s.memoryBlockSizeBytes, 128 * MiB);
      assert.equal(s.memmapOnMemory, false);
      assert.equal(s.onlinePolicy, 'CONTIG_ZONES');
      assert.equal(s.autoMovableRatioPercent, 301);
      assert.equal(s.autoMovableNumaAware, true);
      assert.equal(s.virtioMemForceBbm, false);
    }
    assert.equal(GUEST_MEMORY_PROFILES['linux-6.1'].memmapOnMemoryPerBlock, false);
    assert.equal(GUEST_MEMORY_PROFILES['linux-6.12'].memmapOnMemoryPerBlock, true);
  });

  it('applies per-VM overrides', () => {
    const s = resolveGuestMemorySettings('linux-6.1', {
      memoryBlockSizeBytes: 2 * GiB,
      memmapOnMemory: true,
      onlinePolicy: 'AUTO_MOVABLE',
      autoMovableRatioPercent: 0,
      autoMovableNumaAware: false,
    });
    assert.equal(s.memoryBlockSizeBytes, 2 * GiB);
    assert.equal(s.memmapOnMemory, true);
    assert.equal(s.onlinePolicy, 'AUTO_MOVABLE');
    assert.equal(s.autoMovableRatioPercent, 0);
    assert.equal(s.autoMovableNumaAware, false);
  });

  it('refuses an unknown profile', () => {
    const e = expectDomainError(() => resolveGuestMemorySettings('linux-5.10'), 'INVALID_ARGUMENT', 'INVALID_GUEST_MEMORY_SETTINGS');
    assert.match(violationsOn(e, 'kernelProfileId')[0] ?? '', /unknown guest kernel profile "linux-5.10"/);
  });

  const blockCases: { block: number; ok: boolean }[] = [
    { block: 128 * MiB, ok: true },
    { block: 64 * MiB, ok: false }, // below MIN_MEMORY_BLOCK_SIZE
    { block: 2 * GiB, ok: true },
    { block: 4 * GiB, ok: false }, // above MAX_BLOCK_SIZE
    { block: 192 * MiB, ok: false }, // not a power of two
  ];
  for (const c of blockCases) {
    it(`memoryBlockSizeBytes ${c.block / MiB} MiB → ${c.ok ? 'accepted' : 'refused'}`, () => {
      const run = () => resolveGuestMemorySettings('linux-6.12', { memoryBlockSizeBytes: c.block });
      if (c.ok) assert.equal(run().memoryBlockSizeBytes, c.block);
      else {
        const e = expectDomainError(run, 'INVALID_ARGUMENT', 'INVALID_GUEST_MEMORY_SETTINGS');
        assert.match(violationsOn(e, 'guestMemory.memoryBlockSizeBytes')[0] ?? '', /must be a power of two between 128 MiB and 2 GiB/);
      }
    });
  }

  const bad: { name: string; o: GuestMemoryOverrides; field: string }[] = [
    { name: 'negative ratio', o: { autoMovableRatioPercent: -1 }, field: 'guestMemory.autoMovableRatioPercent' },
    { name: 'fractional ratio', o: { autoMovableRatioPercent: 301.5 }, field: 'guestMemory.autoMovableRatioPercent' },
    { name: 'unknown online policy', o: { onlinePolicy: 'online_movable' as never }, field: 'guestMemory.onlinePolicy' },
    { name: 'bbm_block_size not a power of two', o: { virtioMemBbmBlockSizeBytes: 3 * MiB }, field: 'guestMemory.virtioMemBbmBlockSizeBytes' },
  ];
  for (const c of bad) {
    it(`refuses ${c.name}`, () => {
      const e = expectDomainError(() => resolveGuestMemorySettings('linux-6.12', c.o), 'INVALID_ARGUMENT', 'INVALID_GUEST_MEMORY_SETTINGS');
      assert.deepEqual(e.violations.map((v) => v.field), [c.field]);
    });
  }
});

describe('memory block size probed from the end of boot memory (x86_64 guest)', () => {
  const cases: { name: string; end: number; block: number }[] = [
    { name: 'just below 64 GiB', end: 64 * GiB - 128 * MiB, block: 128 * MiB },
    { name: 'exactly 64 GiB', end: 64 * GiB, block: 2 * GiB },
    { name: '65 GiB (aligned to 1 GiB)', end: 65 * GiB, block: GiB },
    { name: '64.5 GiB', end: 64 * GiB + 512 * MiB, block: 512 * MiB },
    { name: '64 GiB + 128 MiB', end: 64 * GiB + 128 * MiB, block: 128 * MiB },
    { name: '64 GiB + 2 MiB (floor 128 MiB)', end: 64 * GiB + 2 * MiB, block: 128 * MiB },
    { name: '1 TiB', end: 1024 * GiB, block: 2 * GiB },
  ];
  for (const c of cases) it(`${c.name} → ${c.block / MiB} MiB`, () => assert.equal(probeGuestMemoryBlockSizeBytes(c.end), c.block));

  it('derives the block size when the VM gives its boot memory end', () => {
    assert.equal(resolveGuestMemorySettings('linux-6.12', {}, 65 * GiB).memoryBlockSizeBytes, GiB);
    assert.equal(resolveGuestMemorySettings('linux-6.12', {}, 8 * GiB).memoryBlockSizeBytes, 128 * MiB);
  });

  it('refuses an override that disagrees with the probe, accepts one that agrees', () => {
    assert.equal(resolveGuestMemorySettings('linux-6.1', { memoryBlockSizeBytes: GiB }, 65 * GiB).memoryBlockSizeBytes, GiB);
    const e = expectDomainError(
      () => resolveGuestMemorySettings('linux-6.1', { memoryBlockSizeBytes: 128 * MiB }, 65 * GiB),
      'INVALID_ARGUMENT',
      'INVALID_GUEST_MEMORY_SETTINGS',
    );
    assert.deepEqual(violationsOn(e, 'guestMemory.memoryBlockSizeBytes'), [
      'memoryBlockSizeBytes 128 MiB disagrees with the 1 GiB the guest picks for boot memory ending at 65 GiB',
    ]);
  });
});
