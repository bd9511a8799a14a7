import type { Operation, OperationState } from '#domain';
import type { CallContext } from './context';
import type { OperationService } from './operation.service';
import type { VmService, VmView } from './vm.service';

/** States after which an operation never changes again: its watch ends. */
export const TERMINAL_OPERATION_STATES: ReadonlySet<OperationState> = new Set<OperationState>(['SUCCEEDED', 'FAILED', 'CANCELLED']);

export interface WatchOptions {
  /** How often Postgres is read for changes; 200 ms unless given. */
  intervalMs?: number;
}

/** A stable fingerprint of a view, to tell a change from a re-read (bigint-safe). */
function fingerprint(value: unknown): string {
  return JSON.stringify(value, (_k, v: unknown) => (typeof v === 'bigint' ? `${v}n` : v instanceof Date ? v.toISOString() : v));
}

/** Resolves after `ms`, or at once when the signal aborts. */
function pause(ms: number, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener('abort', done, { once: true });
  });
}

/**
 * Watching a resource: its current state at once, then every change. Changes
 * are found by polling Postgres (one read per watcher every `intervalMs`,
 * comparing the whole view, so any visible change — state, progress, steps,
 * update time — is sent). Postgres LISTEN/NOTIFY would cost less per watcher
 * and tell changes sooner; polling needs no triggers and cannot miss a change
 * that is still visible at the next read (intermediate states shorter than
 * the interval can be coalesced, which watchers must tolerate anyway).
 *
 * Each read goes through the ordinary service, so the caller's role is
 * checked and NOT_FOUND thrown (from the first `next()`) for an unknown name.
 * The iteration stops when `signal` aborts (the client went away).
 */
export class WatchService {
  private readonly intervalMs: number;

  constructor(
    private readonly operations: OperationService,
    private readonly vms: VmService,
    options: WatchOptions = {},
  ) {
    this.intervalMs = Math.max(10, options.intervalMs ?? 200);
  }

  /** Ends after yielding a SUCCEEDED, FAILED or CANCELLED operation. */
  watchOperation(ctx: CallContext, name: string, signal: AbortSignal): AsyncGenerator<Operation> {
    return this.watch(() => this.operations.get(ctx, name), (op) => TERMINAL_OPERATION_STATES.has(op.state), signal);
  }

  /** Runs until `signal` aborts; throws NOT_FOUND if the VM is deleted meanwhile. */
  watchVm(ctx: CallContext, name: string, signal: AbortSignal): AsyncGenerator<VmView> {
    return this.watch(() => this.vms.get(ctx, name), () => false, signal);
  }

  private async *watch<T>(read: () => Promise<T>, last: (value: T) => boolean, signal: AbortSignal): AsyncGenerator<T> {
    let previous: string | undefined;
    while (!signal.aborted) {
      const value = await read();
      if (signal.aborted) return;
      const print = fingerprint(value);
      if (print !== previous) {
        previous = print;
        yield value;
      }
      if (last(value)) return;
      await pause(this.intervalMs, signal);
    }
  }
}
