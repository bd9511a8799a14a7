import { DomainError } from './errors';

export type Role = 'viewer' | 'operator' | 'orchestrator' | 'admin';
export const ROLES: readonly Role[] = ['viewer', 'operator', 'orchestrator', 'admin'];

/** What a call needs. Every role reads; admin may do everything. */
export type Permission = 'read' | 'inventory.write' | 'operations.write' | 'vms.write' | 'keys.manage';

const GRANTS: Record<Role, readonly Permission[]> = {
  viewer: ['read'],
  operator: ['read', 'inventory.write', 'operations.write'],
  orchestrator: ['read', 'vms.write', 'operations.write'],
  admin: ['read', 'inventory.write', 'operations.write', 'vms.write', 'keys.manage'],
};

export interface Principal {
  keyId: string;
  keyName: string;
  role: Role;
}

export function authorize(principal: Principal, permission: Permission): void {
  if (!GRANTS[principal.role].includes(permission)) {
    const allowed = ROLES.filter((r) => GRANTS[r].includes(permission));
    throw new DomainError('PERMISSION_DENIED', 'ROLE_NOT_ALLOWED', `key ${principal.keyName} has role ${principal.role}; this call needs ${allowed.join(' or ')}`, [], {
      role: principal.role,
      permission,
    });
  }
}

export function unauthenticated(message: string): DomainError {
  return new DomainError('UNAUTHENTICATED', 'INVALID_API_KEY', message);
}
