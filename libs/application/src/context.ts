import type { Principal } from '#domain';

export type Transport = 'rest' | 'grpc' | 'queue' | 'system';

/** Who is calling, through what, and the correlation id their logs carry. */
export interface CallContext {
  principal: Principal;
  transport: Transport;
  correlationId: string;
}

export const SYSTEM_PRINCIPAL: Principal = { keyId: 'system', keyName: 'system', role: 'admin' };
