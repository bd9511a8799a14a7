import { DomainError } from '../errors';

/**
 * AIP-134 field masks: an empty mask means every updatable field that was
 * sent; naming an immutable or unknown field is refused rather than ignored.
 */
export function resolveUpdateMask(mask: readonly string[], updatable: readonly string[], known: readonly string[]): string[] {
  const paths = mask.length === 0 || (mask.length === 1 && mask[0] === '*') ? [...updatable] : [...mask];
  const violations = [];
  for (const p of paths) {
    if (updatable.includes(p)) continue;
    violations.push({
      field: 'updateMask',
      description: known.includes(p) ? `${p} cannot be changed after creation` : `${p} is not a field of this resource (updatable: ${updatable.join(', ')})`,
    });
  }
  if (violations.length) throw DomainError.invalid('INVALID_UPDATE_MASK', violations);
  return [...new Set(paths)];
}

export function etagOf(version: number): string {
  return `W/"${version}"`;
}

export function checkEtag(resource: string, name: string, given: string | undefined, current: string): void {
  if (given && given !== current) {
    throw new DomainError('ABORTED', 'ETAG_MISMATCH', `${resource} ${name} was changed since etag ${given} (now ${current}); read it again and retry`, [], {
      currentEtag: current,
    });
  }
}
