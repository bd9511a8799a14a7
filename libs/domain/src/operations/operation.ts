/**
 * Operations: one unit of asynchronous work on a VM (launch, stop, plug,
 * resize, unplug), recorded in the same transaction as the desired-state
 * change that needs it. This module is the state machine; workers (a later
 * issue) drive it, and cancelling a PENDING operation puts the desired state
 * back (see `OperationRollback`).
 */
import { DomainError } from '../errors';
import type { MemoryGroupKind } from '../memory';
import type { GroupObservedState } from '../vm/memory-group-resource';
import type { VmState } from '../vm/vm';

export type OperationKind = 'START' | 'STOP' | 'PLUG' | 'UNPLUG' | 'RESIZE';
export const OPERATION_KINDS: readonly OperationKind[] = ['START', 'STOP', 'PLUG', 'UNPLUG', 'RESIZE'];

export type OperationState = 'PENDING' | 'RUNNING' | 'SUCCEEDED' | 'FAILED' | 'CANCELLED';
export const OPERATION_STATES: readonly OperationState[] = ['PENDING', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED'];
export const TERMINAL_OPERATION_STATES: readonly OperationState[] = ['SUCCEEDED', 'FAILED', 'CANCELLED'];
export const ACTIVE_OPERATION_STATES: readonly OperationState[] = ['PENDING', 'RUNNING'];

export type OperationEvent =
  /** A worker picked it up. */
  | { type: 'START' }
  /** Every step is done. */
  | { type: 'SUCCEED' }
  /** Terminal failure, with its reason. */
  | { type: 'FAIL'; error: OperationError }
  /** A transient failure: back to the queue for another attempt. */
  | { type: 'REQUEUE' }
  /** The caller withdraws it. */
  | { type: 'CANCEL' };

export interface OperationError {
  code: string;
  reason: string;
  message: string;
}

export type StepState = 'PENDING' | 'DONE' | 'FAILED';

export interface OperationStep {
  /** What the worker does, in QEMU / guest-agent terms. */
  name: string;
  state: StepState;
}

/** What cancelling a PENDING operation restores. */
export type OperationRollback =
  | { kind: 'START'; vmState: VmState }
  | { kind: 'STOP'; vmState: VmState }
  /** The group was created by this operation: cancelling removes it and releases its extents. */
  | { kind: 'PLUG' }
  /** The group goes back to PRESENT and its observed state to what it was. */
  | { kind: 'UNPLUG'; groupState: GroupObservedState }
  /** requestedBytes, the ledger holding and the observed state go back. */
  | { kind: 'RESIZE'; requestedBytes: number; heldBytes: number; groupState: GroupObservedState };

export interface Operation {
  /** A UUID; the resource id. */
  name: string;
  vm: string;
  /** Group name, for PLUG/UNPLUG/RESIZE. */
  memoryGroup?: string;
  kind: OperationKind;
  state: OperationState;
  steps: OperationStep[];
  /** 0..100, from the steps done. */
  progressPercent: number;
  attempts: number;
  error?: OperationError;
  requestId?: string;
  /** Who asked (API key name and id). */
  principal: string;
  createTime: Date;
  updateTime: Date;
  startTime?: Date;
  endTime?: Date;
}

/** The transitions; anything else is FAILED_PRECONDITION naming the state and what is allowed. */
const NEXT: Record<OperationState, Partial<Record<OperationEvent['type'], OperationState>>> = {
  PENDING: { START: 'RUNNING', FAIL: 'FAILED', CANCEL: 'CANCELLED' },
  RUNNING: { SUCCEED: 'SUCCEEDED', FAIL: 'FAILED', REQUEUE: 'PENDING' },
  SUCCEEDED: {},
  FAILED: {},
  CANCELLED: {},
};

export function isTerminal(state: OperationState): boolean {
  return TERMINAL_OPERATION_STATES.includes(state);
}

/**
 * The state after `event`. Cancelling is only possible before a worker takes
 * the operation: once steps run, QEMU may hold half-made objects, and undoing
 * them is the worker's compensation, not a cancel.
 */
export function nextOperationState(name: string, state: OperationState, event: OperationEvent['type']): OperationState {
  const next = NEXT[state][event];
  if (next !== undefined) return next;
  if (event === 'CANCEL') {
    const why = state === 'RUNNING' ? 'a worker is running its steps' : `it already ended ${state}`;
    throw DomainError.precondition('OPERATION_NOT_CANCELLABLE', `operation ${name} is ${state}: only PENDING operations can be cancelled, and ${why}`, {
      operation: name,
      state,
    });
  }
  const allowed = (Object.keys(NEXT) as OperationState[]).filter((s) => NEXT[s][event] !== undefined);
  throw DomainError.precondition('OPERATION_STATE_CONFLICT', `operation ${name} is ${state}; ${event} needs ${allowed.join(' or ')}`, {
    operation: name,
    state,
    event,
  });
}

/** Applies an event to an operation (pure: returns a new one). */
export function applyOperationEvent(op: Operation, event: OperationEvent, now: Date): Operation {
  const state = nextOperationState(op.name, op.state, event.type);
  const out: Operation = { ...op, state, updateTime: now };
  if (event.type === 'START') {
    out.attempts = op.attempts + 1;
    out.startTime = op.startTime ?? now;
  }
  if (event.type === 'FAIL') out.error = event.error;
  if (event.type === 'SUCCEED') {
    out.steps = op.steps.map((s) => ({ ...s, state: 'DONE' }));
    out.progressPercent = 100;
  }
  if (isTerminal(state)) out.endTime = now;
  return out;
}

export function progressOf(steps: readonly OperationStep[]): number {
  if (steps.length === 0) return 0;
  return Math.floor((steps.filter((s) => s.state === 'DONE').length * 100) / steps.length);
}

/**
 * The steps a worker will take, in order (QMP / QGA vocabulary). A plan, not
 * a script: each run re-reads desired and observed state when it starts and
 * decides every step from what it observed and what its own steps answered.
 */
export function plannedSteps(kind: OperationKind, groupKind?: MemoryGroupKind): OperationStep[] {
  const names: Record<OperationKind, string[]> = {
    START: ['compile-topology', 'launch-qemu', 'wait-guest-agent'],
    STOP: ['guest-shutdown', 'wait-qemu-exit'],
    PLUG:
      groupKind === 'STATIC'
        ? ['object-add memory-backend', 'device_add pc-dimm', 'online-memory-blocks']
        : ['object-add memory-backend', 'device_add virtio-mem-pci', 'qom-set requested-size', 'online-memory-blocks'],
    RESIZE: ['qom-set requested-size', 'wait-plugged-size', 'online-memory-blocks'],
    UNPLUG:
      groupKind === 'STATIC'
        ? ['offline-memory-blocks', 'device_del pc-dimm', 'object-del memory-backend']
        : ['qom-set requested-size 0', 'wait-plugged-size', 'device_del virtio-mem-pci', 'object-del memory-backend'],
  };
  return names[kind].map((name) => ({ name, state: 'PENDING' }));
}

/** One active operation per memory group at a time: the next change waits, or cancels it. */
export function assertNoActiveGroupOperation(vm: string, group: string, active: { name: string; kind: OperationKind; state: OperationState } | undefined): void {
  if (!active) return;
  throw DomainError.precondition(
    'GROUP_OPERATION_IN_PROGRESS',
    `group ${vm}/${group} has ${active.kind} operation ${active.name} ${active.state}; wait for it to finish or cancel it first`,
    { vm, group, operation: active.name, state: active.state },
  );
}

/** The outbox message that tells the dispatcher (a later issue) to queue an operation. */
export const OPERATIONS_TOPIC = 'operations';
export interface OperationMessage {
  /** Payload schema version. */
  v: 1;
  operation: string;
  vm: string;
  kind: OperationKind;
  memoryGroup?: string;
}
