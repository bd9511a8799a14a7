import { createHash } from 'node:crypto';
import { DomainError } from '#domain';
import { AuditRepository, Database, IdempotencyRepository, type Tx } from '#persistence';
import type { CallContext } from './context';

export interface MutationSpec {
  /** API method name, e.g. CreateHost; also the audit "what". */
  method: string;
  /** Resource name, e.g. hosts/hv-01. */
  resource: string;
  requestId?: string;
  /** The request as the service sees it, fingerprinted so a reused request_id with a different request is caught. */
  request: unknown;
  details?: Record<string, unknown>;
}

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/** JSON that keeps Dates: they are written as {"$date": iso} and revived on replay. */
function toStored(value: unknown): unknown {
  return JSON.parse(JSON.stringify(value ?? null, function (this: Record<string, unknown>, key, v) {
    const raw = this[key];
    return raw instanceof Date ? { $date: raw.toISOString() } : v;
  }));
}

function fromStored<T>(value: unknown): T {
  return JSON.parse(JSON.stringify(value), (_k, v) => (v && typeof v === 'object' && typeof v.$date === 'string' && Object.keys(v).length === 1 ? new Date(v.$date) : v)) as T;
}

function fingerprint(method: string, request: unknown): string {
  return createHash('sha256').update(method).update('\0').update(JSON.stringify(toStored(request))).digest('hex');
}

/**
 * Every change goes through here: one transaction holds the change, its audit
 * record and (with a request_id) the answer a retry will get (AIP-155).
 */
export class Mutations {
  private readonly audit = new AuditRepository();
  private readonly idempotency = new IdempotencyRepository();

  constructor(readonly db: Database) {}

  async run<T>(ctx: CallContext, spec: MutationSpec, fn: (tx: Tx) => Promise<T>): Promise<T> {
    if (spec.requestId !== undefined && spec.requestId !== '' && !REQUEST_ID.test(spec.requestId)) {
      throw DomainError.invalid('INVALID_REQUEST_ID', [{ field: 'requestId', description: 'must be 1-128 characters of letters, digits, ".", "_", ":" or "-" (a UUID is ideal)' }]);
    }
    const key = spec.requestId ? { principal: ctx.principal.keyId, method: spec.method, requestId: spec.requestId } : undefined;
    const print = key ? fingerprint(spec.method, spec.request) : '';
    if (key) {
      const replay = await this.replay<T>(key, print);
      if (replay.found) return replay.value;
    }
    try {
      return await this.db.transaction(async (tx) => {
        const result = await fn(tx);
        await this.audit.append(tx, {
          principal: `${ctx.principal.keyName} (${ctx.principal.keyId})`,
          role: ctx.principal.role,
          method: spec.method,
          resource: spec.resource,
          ...(spec.requestId ? { requestId: spec.requestId } : {}),
          transport: ctx.transport,
          details: { correlationId: ctx.correlationId, ...(spec.details ?? {}) },
        });
        if (key) await this.idempotency.record(tx, key, print, toStored(result));
        return result;
      });
    } catch (e) {
      // A concurrent twin with the same request_id may have committed first (we then
      // fail on its unique name or on the idempotency row): answer as it did.
      if (key) {
        const replay = await this.replay<T>(key, print);
        if (replay.found) return replay.value;
      }
      throw e;
    }
  }

  private async replay<T>(key: { principal: string; method: string; requestId: string }, print: string): Promise<{ found: true; value: T } | { found: false }> {
    const prior = await this.idempotency.find(this.db.prisma, key);
    if (!prior) return { found: false };
    if (prior.fingerprint !== print) {
      throw DomainError.invalid('REQUEST_ID_REUSED', [
        { field: 'requestId', description: `request_id ${key.requestId} was already used for a different ${key.method} request` },
      ]);
    }
    return { found: true, value: fromStored<T>(prior.response) };
  }
}
