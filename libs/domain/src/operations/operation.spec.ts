import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { DomainError } from '../errors';
import {
  applyOperationEvent,
  assertNoActiveGroupOperation,
  isTerminal,
  nextOperationState,
  OPERATION_STATES,
  plannedSteps,
  progressOf,
  type Operation,
  type OperationEvent,
  type OperationState,
} from './operation';

function expectError(fn: () => unknown, code: string, reason: string): DomainError {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof DomainError, String(e));
    assert.equal(e.code, code, e.message);
    assert.equal(e.reason, reason, e.message);
    return e;
  }
  assert.fail(`expected ${code}/${reason}`);
}

type EventType = OperationEvent['type'];
const EVENTS: EventType[] = ['START', 'SUCCEED', 'FAIL', 'REQUEUE', 'CANCEL'];

/** The whole transition table, row by row: every state × every event. */
const TABLE: Record<OperationState, Partial<Record<EventType, OperationState>>> = {
  PENDING: { START: 'RUNNING', FAIL: 'FAILED', CANCEL: 'CANCELLED' },
  RUNNING: { SUCCEED: 'SUCCEEDED', FAIL: 'FAILED', REQUEUE: 'PENDING' },
  SUCCEEDED: {},
  FAILED: {},
  CANCELLED: {},
};

const op = (state: OperationState): Operation => ({
  name: '6f1d3a52-0000-4000-8000-000000000001',
  vm: 'vm-1',
  memoryGroup: 'g-1',
  kind: 'PLUG',
  state,
  steps: plannedSteps('PLUG', 'DYNAMIC'),
  progressPercent: 0,
  attempts: 0,
  principal: 'test',
  createTime: new Date(0),
  updateTime: new Date(0),
});

describe('operation state machine', () => {
  for (const state of OPERATION_STATES) {
    for (const event of EVENTS) {
      const expected = TABLE[state][event];
      it(`${state} --${event}--> ${expected ?? 'refused'}`, () => {
        if (expected) {
          assert.equal(nextOperationState('op', state, event), expected);
        } else if (event === 'CANCEL') {
          const e = expectError(() => nextOperationState('op', state, event), 'FAILED_PRECONDITION', 'OPERATION_NOT_CANCELLABLE');
          assert.match(e.message, new RegExp(`operation op is ${state}: only PENDING operations can be cancelled`));
        } else {
          const e = expectError(() => nextOperationState('op', state, event), 'FAILED_PRECONDITION', 'OPERATION_STATE_CONFLICT');
          assert.deepEqual(e.metadata, { operation: 'op', state, event });
        }
      });
    }
  }

  it('terminal states are exactly the ones with no way out', () => {
    for (const s of OPERATION_STATES) assert.equal(isTerminal(s), Object.keys(TABLE[s]).length === 0, s);
  });

  it('a RUNNING operation cannot be cancelled: its steps may have left QEMU objects behind', () => {
    const e = expectError(() => nextOperationState('op-9', 'RUNNING', 'CANCEL'), 'FAILED_PRECONDITION', 'OPERATION_NOT_CANCELLABLE');
    assert.match(e.message, /a worker is running its steps/);
  });

  it('a full life: start, requeue after a transient failure, start again, succeed', () => {
    const t = (s: number) => new Date(s * 1000);
    let o = applyOperationEvent(op('PENDING'), { type: 'START' }, t(1));
    assert.deepEqual([o.state, o.attempts, o.startTime], ['RUNNING', 1, t(1)]);
    o = applyOperationEvent(o, { type: 'REQUEUE' }, t(2));
    assert.equal(o.state, 'PENDING');
    o = applyOperationEvent(o, { type: 'START' }, t(3));
    assert.deepEqual([o.state, o.attempts, o.startTime], ['RUNNING', 2, t(1)], 'the first start time stays');
    assert.equal(o.endTime, undefined);
    o = applyOperationEvent(o, { type: 'SUCCEED' }, t(4));
    assert.deepEqual([o.state, o.progressPercent, o.endTime], ['SUCCEEDED', 100, t(4)]);
    assert.ok(o.steps.every((s) => s.state === 'DONE'));
  });

  it('a failure records its reason and ends the operation', () => {
    const error = { code: 'FAILED_PRECONDITION', reason: 'QEMU_DEVICE_ADD_FAILED', message: 'no free slots available' };
    const o = applyOperationEvent(op('RUNNING'), { type: 'FAIL', error }, new Date(5));
    assert.equal(o.state, 'FAILED');
    assert.deepEqual(o.error, error);
    assert.deepEqual(o.endTime, new Date(5));
  });

  it('cancelling a PENDING operation ends it; the input is never mutated', () => {
    const before = Object.freeze(op('PENDING'));
    const o = applyOperationEvent(before, { type: 'CANCEL' }, new Date(7));
    assert.equal(o.state, 'CANCELLED');
    assert.equal(before.state, 'PENDING');
    assert.deepEqual(o.endTime, new Date(7));
  });

  it('planned steps and progress', () => {
    assert.deepEqual(
      plannedSteps('PLUG', 'STATIC').map((s) => s.name),
      ['object-add memory-backend', 'device_add pc-dimm', 'online-memory-blocks'],
    );
    assert.deepEqual(
      plannedSteps('UNPLUG', 'DYNAMIC').map((s) => s.name),
      ['qom-set requested-size 0', 'wait-plugged-size', 'device_del virtio-mem-pci', 'object-del memory-backend'],
    );
    const steps = plannedSteps('RESIZE');
    assert.equal(progressOf(steps), 0);
    assert.equal(progressOf(steps.map((s, i) => (i === 0 ? { ...s, state: 'DONE' as const } : s))), 33);
    assert.equal(progressOf([]), 0);
  });

  it('one active operation per group', () => {
    assert.doesNotThrow(() => assertNoActiveGroupOperation('vm-1', 'g-1', undefined));
    const e = expectError(
      () => assertNoActiveGroupOperation('vm-1', 'g-1', { name: 'op-7', kind: 'RESIZE', state: 'PENDING' }),
      'FAILED_PRECONDITION',
      'GROUP_OPERATION_IN_PROGRESS',
    );
    assert.equal(e.message, 'group vm-1/g-1 has RESIZE operation op-7 PENDING; wait for it to finish or cancel it first');
  });
});
