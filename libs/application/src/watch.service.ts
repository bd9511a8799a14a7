import type { Operation, OperationState } from '#domain';
import type { CallContext } from './context';
import type { OperationService } from './operation.service';
import type { VmService, VmView } from './vm.service';

/** States after which an operation never changes again: its watch ends. */
export const TERMINAL_OPERATION_STATES: ReadonlySet<OperationState> = new Set<OperationState>(['SUCCEEDED', 'FAILED', 'CANCELLED']);

export interface WatchOptions {
  /** How often Postgres is read for changes; 200 ms unless given. */
  intervalMs?: number;
  /**
   * Subscribes to "this operation changed state" (an operation id), for reading again at once
   * instead of at the next interval, and to "listening (again)", after which a change may
   * have gone unheard; returns the unsubscribe function.
   */
  operationChanges?: (listener: (operationId: string) => void, onListening: () => void) => () => void;
}

/** A stable fingerprint of a view, to tell a change from a re-read (bigint-safe). */
function fingerprint(value: unknown): string {
  return JSON.stringify(value, (_k, v: unknown) => (typeof v === 'bigint' ? `${v}n` : v instanceof Date ? v.toISOString() : v));
}

/** A pause that a change notification can cut short (also one that came before the pause began). */
class Wakeable {
  private woken = false;
  private wake: (() => void) | undefined;

  notify(): void {
    this.woken = true;
    this.wake?.();
  }

  /** Resolves after `ms`, at a notification, or at once when the signal aborts. */
  pause(ms: number, signal: AbortSignal): Promise<void> {
    if (signal.aborted || this.woken) {
      this.woken = false;
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        signal.removeEventListener('abort', done);
        this.wake = undefined;
        this.woken = false;
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.wake = done;
      signal.addEventListener('abort', done, { once: true });
    });
  }
}

/**
 * Watching a resource: its current state at once, then every change. Changes
 * are found by reading Postgres (one read per watcher every `intervalMs`,
 * comparing the whole view, so any visible change — state, progress, steps,
 * update time — is sent), and for an operation also at once when Postgres
 * notifies that it changed state (`operationChanges`, LISTEN/NOTIFY): the
 * timer cannot miss a change that is still visible at the next read, the
 * notification makes state changes arrive without waiting for it
 * (intermediate states shorter than the interval can be coalesced, which
 * watchers must tolerate anyway).
 *
 * Each read goes through the ordinary service, so the caller's role is
 * checked and NOT_FOUND thrown (from the first `next()`) for an unknown name.
 * The iteration stops when `signal` aborts (the client went away).
 */
export class WatchService {
  private readonly intervalMs: number;
  private readonly operationChanges: WatchOptions['operationChanges'];

  constructor(
    private readonly operations: OperationService,
    private readonly vms: VmService,
    options: WatchOptions = {},
  ) {
    this.intervalMs = Math.max(10, options.intervalMs ?? 200);
    this.operationChanges = options.operationChanges;
  }

  /** Ends after yielding a SUCCEEDED, FAILED or CANCELLED operation. */
  watchOperation(ctx: CallContext, name: string, signal: AbortSignal): AsyncGenerator<Operation> {
    const wakeable = new Wakeable();
    const id = name.toLowerCase();
    const subscribe = this.operationChanges
      ? () =>
          this.operationChanges!(
            (changed) => changed === id && wakeable.notify(),
            () => wakeable.notify(),
          )
      : undefined;
    return this.watch(() => this.operations.get(ctx, name), (op) => TERMINAL_OPERATION_STATES.has(op.state), signal, wakeable, subscribe);
  }

  /** Runs until `signal` aborts; throws NOT_FOUND if the VM is deleted meanwhile. */
  watchVm(ctx: CallContext, name: string, signal: AbortSignal): AsyncGenerator<VmView> {
    return this.watch(() => this.vms.get(ctx, name), () => false, signal, new Wakeable());
  }

  private async *watch<T>(
    read: () => Promise<T>,
    last: (value: T) => boolean,
    signal: AbortSignal,
    wakeable: Wakeable,
    subscribe?: () => () => void,
  ): AsyncGenerator<T> {
    // Subscribed before the first read, so a change right after it is not missed.
    const unsubscribe = subscribe?.();
    try {
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
        await wakeable.pause(this.intervalMs, signal);
      }
    } finally {
      unsubscribe?.();
    }
  }
}
