import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { assertPoolCanBackGuestRam, type GuestRamPoolFacts } from './pool-eligibility';
import { expectDomainError, violationsOn } from './spec-helpers';

const pool = (o: Partial<GuestRamPoolFacts> = {}): GuestRamPoolFacts => ({
  name: 'cxl0',
  state: 'ACTIVE',
  memoryType: 'VOLATILE',
  ...o,
});

describe('pools as guest RAM', () => {
  const ok: { name: string; p: GuestRamPoolFacts }[] = [
    { name: 'active volatile', p: pool() },
    { name: 'active persistent (used as volatile RAM)', p: pool({ memoryType: 'PERSISTENT' }) },
    { name: 'explicitly CPU-addressable', p: pool({ cpuAddressable: true }) },
  ];
  for (const c of ok) it(`accepts ${c.name}`, () => assert.doesNotThrow(() => assertPoolCanBackGuestRam(c.p)));

  const refused: { name: string; p: GuestRamPoolFacts; code: string; reason: string }[] = [
    { name: 'draining', p: pool({ state: 'DRAINING' }), code: 'FAILED_PRECONDITION', reason: 'POOL_NOT_ACTIVE' },
    { name: 'disabled', p: pool({ state: 'DISABLED' }), code: 'FAILED_PRECONDITION', reason: 'POOL_NOT_ACTIVE' },
    {
      name: 'device memory the CPU cannot address',
      p: pool({ cpuAddressable: false }),
      code: 'INVALID_ARGUMENT',
      reason: 'POOL_MEMORY_NOT_CPU_ADDRESSABLE',
    },
    {
      name: 'device memory, even when the pool is also not active (the permanent reason wins)',
      p: pool({ cpuAddressable: false, state: 'DISABLED', memoryType: 'PERSISTENT' }),
      code: 'INVALID_ARGUMENT',
      reason: 'POOL_MEMORY_NOT_CPU_ADDRESSABLE',
    },
  ];
  for (const c of refused) it(`refuses ${c.name}`, () => void expectDomainError(() => assertPoolCanBackGuestRam(c.p), c.code, c.reason));

  it('names the pool and its state', () => {
    const e = expectDomainError(() => assertPoolCanBackGuestRam(pool({ state: 'DRAINING' })), 'FAILED_PRECONDITION', 'POOL_NOT_ACTIVE');
    assert.equal(e.message, 'pool cxl0 is DRAINING, not ACTIVE: it takes no new guest memory');
    assert.deepEqual(e.metadata, { pool: 'cxl0', state: 'DRAINING' });
    const d = expectDomainError(
      () => assertPoolCanBackGuestRam(pool({ cpuAddressable: false }), 'memoryGroup.pool'),
      'INVALID_ARGUMENT',
      'POOL_MEMORY_NOT_CPU_ADDRESSABLE',
    );
    assert.equal(violationsOn(d, 'memoryGroup.pool').length, 1);
  });
});
