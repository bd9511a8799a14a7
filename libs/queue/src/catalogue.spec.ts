import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { lastOperationPerVm } from './catalogue';

describe('lastOperationPerVm', () => {
  it("gives one job per VM, named by its last operation, in the order VMs first appear, and none for a row without a VM", () => {
    assert.deepEqual(
      lastOperationPerVm([
        { operationId: 'o1', vmId: 'a' },
        { operationId: 'o2', vmId: 'b' },
        { operationId: 'o3', vmId: null },
        { operationId: 'o4', vmId: 'a' },
      ]),
      [
        { vmId: 'a', operationId: 'o4' },
        { vmId: 'b', operationId: 'o2' },
      ],
    );
    assert.deepEqual(lastOperationPerVm([]), []);
  });
});
