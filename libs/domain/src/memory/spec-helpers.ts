/** Shared by the memory specs only. */
import assert from 'node:assert/strict';
import { DomainError } from '../errors';

/** Runs `fn`, asserts it throws a DomainError with `code`/`reason`, and returns it. */
export function expectDomainError(fn: () => unknown, code: string, reason: string): DomainError {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof DomainError, `expected a DomainError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    assert.equal(e.reason, reason, e.message);
    return e;
  }
  assert.fail(`expected ${code}/${reason}, but nothing was thrown`);
}

/** The descriptions of the violations on `field`. */
export function violationsOn(e: DomainError, field: string): string[] {
  return e.violations.filter((v) => v.field === field).map((v) => v.description);
}
