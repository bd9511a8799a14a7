import type { Tx } from './database';

export interface IdempotencyKey {
  principal: string;
  method: string;
  requestId: string;
}

export class IdempotencyRepository {
  async find(tx: Tx, key: IdempotencyKey): Promise<{ fingerprint: string; response: unknown } | undefined> {
    const row = await tx.idempotencyRecord.findUnique({ where: { principal_method_requestId: key } });
    return row ? { fingerprint: row.fingerprint, response: row.response } : undefined;
  }

  /** Inside the mutation's own transaction: the answer is recorded exactly when the change is. */
  async record(tx: Tx, key: IdempotencyKey, fingerprint: string, response: unknown): Promise<void> {
    await tx.idempotencyRecord.create({ data: { ...key, fingerprint, response: (response ?? null) as object } });
  }
}
