import type { ExecutorConfig } from '#application';
import { projectRoot } from '#platform';
import { GUEST_ACCEL, GUEST_CPU_MODEL } from '#testing/guest';
import { cachedGuestImages } from '../src/worker';

/**
 * The executor of the worker tests and bench:ops that run real guests: the cached guest
 * images under TCG, no host-node binding (this machine has one node), and timeouts with
 * room for TCG; `overrides` for what a test needs otherwise.
 */
export function guestExecutorConfig(runtimeDir: string, overrides: Partial<Omit<ExecutorConfig, 'log' | 'runtimeDir'>> = {}): Omit<ExecutorConfig, 'log'> {
  return {
    runtimeDir,
    bootImage: cachedGuestImages(projectRoot()),
    accel: GUEST_ACCEL,
    cpuModel: GUEST_CPU_MODEL,
    hostNodeBinding: 'none',
    convergeTimeoutMs: 30_000,
    deviceDelTimeoutMs: 20_000,
    bootTimeoutMs: 120_000,
    ...overrides,
  };
}
