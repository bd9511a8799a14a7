import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { requestJsonSchema, RequestV1 } from './requests';

describe('automation request schema', () => {
  it('the JSON Schema in the repository is the one the intake validates with', () => {
    const file = join(__dirname, '..', '..', '..', '..', 'libs', 'queue', 'schemas', 'memplane-request.v1.schema.json');
    assert.deepEqual(JSON.parse(readFileSync(file, 'utf8')), requestJsonSchema());
  });
  it('accepts each action and refuses unknown fields', () => {
    assert.ok(RequestV1.safeParse({ version: 1, action: 'vm.start', vm: 'vm1' }).success);
    assert.ok(RequestV1.safeParse({ version: 1, action: 'group.resize', vm: 'vm1', group: 'g', requestedBytes: 0 }).success);
    assert.ok(!RequestV1.safeParse({ version: 1, action: 'vm.start', vm: 'vm1', colour: 'blue' }).success);
    assert.ok(!RequestV1.safeParse({ version: 1, action: 'vm.reboot', vm: 'vm1' }).success);
  });
});
