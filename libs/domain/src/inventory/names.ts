import { Violations } from '../errors';

/** Resource ids are DNS labels (RFC 1123), so they are safe in paths, logs and QEMU ids. */
export const NAME_PATTERN = /^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$/;

export function checkName(v: Violations, field: string, name: unknown): void {
  if (typeof name !== 'string' || name.length === 0) {
    v.add(field, 'is required');
  } else if (!NAME_PATTERN.test(name)) {
    v.add(field, `"${name}" is not a valid name: 1-63 lowercase letters, digits or '-', starting with a letter and not ending with '-'`);
  }
}

export function checkLabels(v: Violations, field: string, labels: Record<string, string>): void {
  const keys = Object.keys(labels);
  if (keys.length > 64) v.add(field, `has ${keys.length} labels; at most 64`);
  for (const k of keys) {
    if (!/^[a-z0-9]([a-z0-9._/-]{0,62})$/.test(k)) v.add(`${field}.${k}`, 'label keys are 1-63 lowercase letters, digits, ".", "_", "/" or "-"');
    const value = labels[k];
    if (typeof value !== 'string' || value.length > 256) v.add(`${field}.${k}`, 'label values are strings of at most 256 characters');
  }
}

export function checkDescription(v: Violations, field: string, description: string): void {
  if (description.length > 1024) v.add(field, `is ${description.length} characters long; at most 1024`);
}
