import { DomainError } from '#domain';

export const DEFAULT_PAGE_SIZE = 50;
export const MAX_PAGE_SIZE = 500;

export interface PageRequest {
  pageSize: number;
  /** Name to continue after, decoded from the opaque token. */
  after?: string;
}

export interface Page<T> {
  items: T[];
  nextPageToken: string;
  totalSize: number;
}

/**
 * AIP-158. Tokens are opaque (base64url JSON) and bound to the filter they were
 * issued for, so a token replayed with another filter is refused, not misread.
 */
export function parsePageRequest(pageSize: number | undefined, pageToken: string | undefined, filterKey: string): PageRequest {
  const size = pageSize ?? 0;
  if (!Number.isInteger(size) || size < 0) throw DomainError.invalid('INVALID_PAGE_SIZE', [{ field: 'pageSize', description: `must be a non-negative integer, got ${pageSize}` }]);
  const effective = size === 0 ? DEFAULT_PAGE_SIZE : Math.min(size, MAX_PAGE_SIZE);
  if (!pageToken) return { pageSize: effective };
  let decoded: { a?: unknown; f?: unknown };
  try {
    decoded = JSON.parse(Buffer.from(pageToken, 'base64url').toString('utf8')) as { a?: unknown; f?: unknown };
  } catch {
    throw DomainError.invalid('INVALID_PAGE_TOKEN', [{ field: 'pageToken', description: 'is not a page token issued by this service' }]);
  }
  if (typeof decoded?.a !== 'string' || decoded.f !== filterKey) {
    throw DomainError.invalid('INVALID_PAGE_TOKEN', [{ field: 'pageToken', description: 'was issued for a different query; start again without it' }]);
  }
  return { pageSize: effective, after: decoded.a };
}

export function pageToken(after: string, filterKey: string): string {
  return Buffer.from(JSON.stringify({ a: after, f: filterKey }), 'utf8').toString('base64url');
}
