import type { DomainError, ErrorCode } from '#domain';

export const HTTP_STATUS: Record<ErrorCode, number> = {
  INVALID_ARGUMENT: 400,
  OUT_OF_RANGE: 400,
  FAILED_PRECONDITION: 409,
  NOT_FOUND: 404,
  ALREADY_EXISTS: 409,
  ABORTED: 409,
  RESOURCE_EXHAUSTED: 429,
  UNAUTHENTICATED: 401,
  PERMISSION_DENIED: 403,
  UNAVAILABLE: 503,
  DEADLINE_EXCEEDED: 504,
  CANCELLED: 499,
  INTERNAL: 500,
};

export interface Problem {
  type: string;
  title: string;
  status: number;
  detail: string;
  code: ErrorCode;
  reason: string;
  violations?: { field: string; description: string }[];
  metadata?: Record<string, string>;
  instance?: string;
  correlationId?: string;
}

/** RFC 9457 problem details, carrying the same code/reason/field violations as gRPC's ErrorInfo and BadRequest. */
export function problemOf(e: DomainError, instance: string, correlationId: string): Problem {
  const status = e.reason === 'ETAG_MISMATCH' ? 412 : HTTP_STATUS[e.code];
  return {
    type: `https://memplane.dev/problems/${e.reason.toLowerCase().replace(/_/g, '-')}`,
    title: e.reason.replace(/_/g, ' ').toLowerCase().replace(/^./, (c) => c.toUpperCase()),
    status,
    detail: e.message,
    code: e.code,
    reason: e.reason,
    ...(e.violations.length ? { violations: [...e.violations] } : {}),
    ...(Object.keys(e.metadata).length ? { metadata: { ...e.metadata } } : {}),
    instance,
    correlationId,
  };
}
