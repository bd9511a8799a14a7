import type { Request } from 'express';
import { DomainError } from '#domain';
import { ListQuery, parseBody } from './schemas';

/** AIP-155 request id: `?requestId=` or the conventional Idempotency-Key header. */
export function requestIdOf(req: Request): string | undefined {
  const q = req.query['requestId'];
  if (q !== undefined && typeof q !== 'string') throw DomainError.invalid('INVALID_QUERY', [{ field: 'requestId', description: 'must be given once' }]);
  return q || req.header('idempotency-key') || undefined;
}

/** AIP-154 etag: the If-Match header or the body's etag. */
export function etagOf(req: Request, bodyEtag?: string): string | undefined {
  const m = req.header('if-match');
  return m || bodyEtag || (typeof req.query['etag'] === 'string' ? req.query['etag'] : undefined);
}

export function updateMaskOf(req: Request): string[] {
  const m = req.query['updateMask'];
  if (m === undefined) return [];
  if (typeof m !== 'string') throw DomainError.invalid('INVALID_QUERY', [{ field: 'updateMask', description: 'must be one comma-separated list' }]);
  return m.split(',').map((s) => s.trim()).filter(Boolean);
}

export function listQueryOf(req: Request, allowed: readonly string[]) {
  const query = parseBody(ListQuery, { ...req.query }, '');
  for (const k of Object.keys(req.query)) {
    if (!allowed.includes(k)) throw DomainError.invalid('INVALID_QUERY', [{ field: k, description: `is not a query parameter of this list (use ${allowed.join(', ')})` }]);
  }
  return query;
}
