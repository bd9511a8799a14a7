import { DomainError, type FieldViolation } from '#domain';

/**
 * Proto3 int64 arrives as bigint. Out-of-range numbers are the caller's
 * mistake and are named, never truncated.
 */
export class Converter {
  readonly violations: FieldViolation[] = [];

  num(field: string, value: bigint | number): number {
    const n = typeof value === 'bigint' ? value : BigInt(value);
    if (n > BigInt(Number.MAX_SAFE_INTEGER) || n < BigInt(Number.MIN_SAFE_INTEGER)) {
      this.violations.push({ field, description: `${n} is out of range` });
      return 0;
    }
    return Number(n);
  }

  enumValue<T extends string>(field: string, value: number, table: Record<number, T>, fallback?: T): T {
    const v = table[value];
    if (v !== undefined) return v;
    if (value === 0 && fallback !== undefined) return fallback;
    this.violations.push({ field, description: value === 0 ? 'is required' : `${value} is not a valid value` });
    return (fallback ?? Object.values(table)[0]) as T;
  }

  done(): void {
    if (this.violations.length) throw DomainError.invalid('INVALID_ARGUMENT', this.violations);
  }
}

export function invert<T extends string>(table: Record<number, T>): Record<T, number> {
  return Object.fromEntries(Object.entries(table).map(([k, v]) => [v, Number(k)])) as Record<T, number>;
}

export function snakeToCamel(path: string): string {
  return path.replace(/_([a-z])/g, (_m, c: string) => c.toUpperCase());
}

export function requireMessage<T>(field: string, value: T | undefined): T {
  if (value === undefined || value === null) throw DomainError.invalid('INVALID_ARGUMENT', [{ field, description: 'is required' }]);
  return value;
}

export const big = (n: number): bigint => BigInt(n);
