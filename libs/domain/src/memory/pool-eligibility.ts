/**
 * Which pools may back guest RAM.
 *
 * Device memory the CPU cannot address is modelled as a pool attribute,
 * `cpuAddressable`, not as a third memory type: addressability is orthogonal
 * to VOLATILE / PERSISTENT (inventory/pool.ts owns that enum), and memory a
 * device keeps private (e.g. CXL type-2 device memory not in the host's
 * System RAM or a DAX range) can be either. QEMU cannot mmap such memory into
 * a memory backend at all. Absent means addressable: a pool over a CPU-less
 * host NUMA node or a device-DAX range is CPU-addressable by construction.
 */
import { DomainError } from '../errors';
import type { PoolMemoryType, PoolState } from '../inventory/pool';

export interface GuestRamPoolFacts {
  /** Pool name or id, used in messages. */
  readonly name: string;
  readonly state: PoolState;
  readonly memoryType: PoolMemoryType;
  readonly cpuAddressable?: boolean;
}

/**
 * Throws unless the pool can back new guest RAM (a new group or a growth):
 * - not CPU-addressable: INVALID_ARGUMENT / POOL_MEMORY_NOT_CPU_ADDRESSABLE
 *   (choosing that pool is wrong whatever the system state; retrying cannot help);
 * - not ACTIVE: FAILED_PRECONDITION / POOL_NOT_ACTIVE (draining and disabled
 *   pools take no new holdings; the pool may become ACTIVE again).
 * PERSISTENT media used as volatile guest RAM is allowed: a devdax or fsdax
 * backend is CPU-addressable.
 */
export function assertPoolCanBackGuestRam(pool: GuestRamPoolFacts, field = 'pool'): void {
  if (pool.cpuAddressable === false) {
    throw DomainError.invalid(
      'POOL_MEMORY_NOT_CPU_ADDRESSABLE',
      [
        {
          field,
          description: `pool ${pool.name} is device memory the CPU cannot address (cpuAddressable false); it cannot be guest RAM`,
        },
      ],
      { pool: pool.name, memoryType: pool.memoryType },
    );
  }
  if (pool.state !== 'ACTIVE') {
    throw DomainError.precondition(
      'POOL_NOT_ACTIVE',
      `pool ${pool.name} is ${pool.state}, not ACTIVE: it takes no new guest memory`,
      { pool: pool.name, state: pool.state },
    );
  }
}
