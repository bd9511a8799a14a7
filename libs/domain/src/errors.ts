/**
 * Domain errors carry a canonical code (the gRPC status vocabulary, which every
 * transport maps), a stable machine reason (google.rpc.ErrorInfo.reason) and the
 * offending fields. Nothing here knows about HTTP or gRPC.
 */
export const ERROR_DOMAIN = 'memplane.dev';

export type ErrorCode =
  | 'INVALID_ARGUMENT'
  | 'FAILED_PRECONDITION'
  | 'OUT_OF_RANGE'
  | 'NOT_FOUND'
  | 'ALREADY_EXISTS'
  | 'ABORTED'
  | 'RESOURCE_EXHAUSTED'
  | 'UNAUTHENTICATED'
  | 'PERMISSION_DENIED'
  | 'UNAVAILABLE'
  | 'DEADLINE_EXCEEDED'
  | 'CANCELLED'
  | 'INTERNAL';

export interface FieldViolation {
  /** Path of the offending field in API (camelCase) spelling, e.g. `numaNodes[1].cpus`. */
  field: string;
  description: string;
}

export class DomainError extends Error {
  override readonly name = 'DomainError';
  constructor(
    readonly code: ErrorCode,
    /** UPPER_SNAKE_CASE, stable across releases. */
    readonly reason: string,
    message: string,
    readonly violations: readonly FieldViolation[] = [],
    readonly metadata: Readonly<Record<string, string>> = {},
  ) {
    super(message);
  }

  static invalid(reason: string, violations: FieldViolation[], metadata: Record<string, string> = {}): DomainError {
    const message = violations.map((v) => `${v.field}: ${v.description}`).join('; ');
    return new DomainError('INVALID_ARGUMENT', reason, message, violations, metadata);
  }

  static notFound(resource: string, name: string): DomainError {
    return new DomainError('NOT_FOUND', `${resource.toUpperCase()}_NOT_FOUND`, `${resource} ${name} does not exist`, [], {
      resource,
      name,
    });
  }

  static precondition(reason: string, message: string, metadata: Record<string, string> = {}): DomainError {
    return new DomainError('FAILED_PRECONDITION', reason, message, [], metadata);
  }

  static exists(reason: string, message: string, metadata: Record<string, string> = {}): DomainError {
    return new DomainError('ALREADY_EXISTS', reason, message, [], metadata);
  }
}

/** Collects violations while checking a whole input, so one answer names every problem. */
export class Violations {
  private readonly list: FieldViolation[] = [];
  add(field: string, description: string): this {
    this.list.push({ field, description });
    return this;
  }
  get empty(): boolean {
    return this.list.length === 0;
  }
  get items(): readonly FieldViolation[] {
    return this.list;
  }
  throwIfAny(reason = 'INVALID_ARGUMENT'): void {
    if (this.list.length > 0) throw DomainError.invalid(reason, [...this.list]);
  }
}

export function isDomainError(e: unknown): e is DomainError {
  return e instanceof DomainError;
}
