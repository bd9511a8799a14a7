/** Sizes are safe integers of bytes; never floats. */
export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;
export const TiB = 1024 * GiB;
export const PiB = 1024 * TiB;

export function isPowerOfTwo(n: number): boolean {
  if (!Number.isSafeInteger(n) || n <= 0) return false;
  let v = n;
  while (v % 2 === 0) v /= 2;
  return v === 1;
}

export function isMultipleOf(value: number, unit: number): boolean {
  return unit > 0 && value % unit === 0;
}

export function alignUp(value: number, unit: number): number {
  return Math.ceil(value / unit) * unit;
}

export function alignDown(value: number, unit: number): number {
  return Math.floor(value / unit) * unit;
}

/** Human form used in error messages: exact, largest binary unit that divides the value. */
export function formatBytes(bytes: number): string {
  const units: [number, string][] = [
    [PiB, 'PiB'],
    [TiB, 'TiB'],
    [GiB, 'GiB'],
    [MiB, 'MiB'],
    [KiB, 'KiB'],
  ];
  for (const [unit, name] of units) {
    if (bytes !== 0 && bytes % unit === 0) return `${bytes / unit} ${name}`;
  }
  return `${bytes} B`;
}
