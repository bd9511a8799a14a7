import { createHash } from 'node:crypto';
import { DomainError } from '#domain';
import {
  AuditRepository,
  Database,
  IdempotencyRepository,
  MutationLogRepository,
  type AuditEntry,
  type GroupChangeTarget,
  type GroupChangeWrites,
  type MemoryGroupRecord,
  type LockedLedger,
  type PoolFacts,
  type Sql,
  type Tx,
  type VmRecord,
} from '#persistence';
import type { CallContext } from './context';
import { GroupChangeBatcher } from './group-change-batcher';

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

/**
 * JSON that keeps Dates: they are written as {"$date": iso} and revived on
 * replay. Otherwise JSON's own rules (undefined and functions dropped, in
 * arrays written as null); one walk instead of a stringify/parse round trip.
 */
function toStored(value: unknown): unknown {
  return storable(value ?? null) ?? null;
}

function storable(v: unknown): unknown {
  if (v instanceof Date) return { $date: v.toISOString() };
  if (Array.isArray(v)) return v.map((x) => storable(x) ?? null);
  if (v !== null && typeof v === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) {
      const s = storable(x);
      if (s !== undefined) out[k] = s;
    }
    return out;
  }
  if (typeof v === 'function' || typeof v === 'symbol') return undefined;
  return v;
}

function fromStored<T>(value: unknown): T {
  return JSON.parse(JSON.stringify(value), (_k, v) => (v && typeof v === 'object' && typeof v.$date === 'string' && Object.keys(v).length === 1 ? new Date(v.$date) : v)) as T;
}

function fingerprint(method: string, request: unknown): string {
  return createHash('sha256').update(method).update('\0').update(JSON.stringify(toStored(request))).digest('hex');
}

/** What a memory-group change sees under its locks. */
export interface LockedGroupChange {
  vm: VmRecord;
  groups: MemoryGroupRecord[];
  /** The pool named by the change, or the changed group's pool, with its ledger read under its lock. */
  pool?: PoolFacts;
  ledger?: LockedLedger;
}

/** A group change's writes, less the audit and answer records Mutations adds. */
export type GroupChangeDecision<T> = { result: T; writes: Omit<GroupChangeWrites, 'audit' | 'answer'> };

function checkRequestId(requestId: string | undefined): void {
  if (requestId !== undefined && requestId !== '' && !REQUEST_ID.test(requestId)) {
    throw DomainError.invalid('INVALID_REQUEST_ID', [{ field: 'requestId', description: 'must be 1-128 characters of letters, digits, ".", "_", ":" or "-" (a UUID is ideal)' }]);
  }
}

function auditEntry(ctx: CallContext, spec: MutationSpec): AuditEntry {
  return {
    principal: `${ctx.principal.keyName} (${ctx.principal.keyId})`,
    role: ctx.principal.role,
    method: spec.method,
    resource: spec.resource,
    ...(spec.requestId ? { requestId: spec.requestId } : {}),
    transport: ctx.transport,
    details: { correlationId: ctx.correlationId, ...(spec.details ?? {}) },
  };
}

/** Thrown inside a raw-SQL mutation to roll it back and answer a replayed request_id. */
class Replayed {
  constructor(readonly answer: { found: true; value: unknown } | { found: false }) {}
}

/**
 * Every change goes through here: one transaction holds the change, its audit
 * record and (with a request_id) the answer a retry will get (AIP-155).
 */
export class Mutations {
  private readonly audit = new AuditRepository();
  private readonly idempotency = new IdempotencyRepository();
  private readonly log = new MutationLogRepository();
  /** Memory-group changes go through here (group commit); its stats show the batching. */
  readonly groupChanges: GroupChangeBatcher;

  constructor(readonly db: Database) {
    this.groupChanges = new GroupChangeBatcher(db);
  }

  async run<T>(ctx: CallContext, spec: MutationSpec, fn: (tx: Tx) => Promise<T>): Promise<T> {
    checkRequestId(spec.requestId);
    const key = spec.requestId ? { principal: ctx.principal.keyId, method: spec.method, requestId: spec.requestId } : undefined;
    const print = key ? fingerprint(spec.method, spec.request) : '';
    if (key) {
      const replay = await this.replay<T>(key, print);
      if (replay.found) return replay.value;
    }
    try {
      return await this.db.transaction(async (tx) => {
        const result = await fn(tx);
        await this.audit.append(tx, auditEntry(ctx, spec));
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

  /**
   * The same contract on the raw SQL path (persistence/sql.ts), for services
   * whose transactions hold hot row locks. The transaction opens with one
   * statement that writes the audit record and looks for an earlier answer to
   * the request_id (a replay rolls back and answers as before).
   */
  async runSql<T>(ctx: CallContext, spec: MutationSpec, fn: (sql: Sql) => Promise<T>): Promise<T> {
    checkRequestId(spec.requestId);
    const key = spec.requestId ? { principal: ctx.principal.keyId, method: spec.method, requestId: spec.requestId } : undefined;
    const print = key ? fingerprint(spec.method, spec.request) : '';
    const audit = auditEntry(ctx, spec);
    try {
      return await this.db.sqlTransaction(async (sql) => {
        const prior = await this.log.auditAndFindAnswer(sql, audit, key);
        if (key && prior) throw new Replayed(this.answered<T>(prior, key, print));
        const result = await fn(sql);
        if (key) await this.log.recordAnswer(sql, key, print, toStored(result));
        return result;
      });
    } catch (e) {
      return this.settle<T>(e, key, print);
    }
  }

  /**
   * A memory-group change, committed in a batch with the changes that
   * arrive beside it (GroupChangeBatcher): its VM and pool are locked and read
   * with any earlier answer to the request_id, `decide` runs on them (and may
   * run statements of its own on `sql`), and its writes go with its audit and
   * answer records. A refusal changes nothing.
   */
  async runGroupChange<T>(
    ctx: CallContext,
    spec: MutationSpec,
    target: GroupChangeTarget,
    decide: (locked: LockedGroupChange, sql: Sql) => Promise<GroupChangeDecision<T>>,
  ): Promise<T> {
    checkRequestId(spec.requestId);
    const key = spec.requestId ? { principal: ctx.principal.keyId, method: spec.method, requestId: spec.requestId } : undefined;
    const print = key ? fingerprint(spec.method, spec.request) : '';
    try {
      const value = await this.groupChanges.submit({
        target,
        ...(key ? { key } : {}),
        audit: auditEntry(ctx, spec),
        answer: (result) => (key ? { ...key, fingerprint: print, response: toStored(result) } : undefined),
        replay: (prior) => {
          const replay = key ? this.answered<T>(prior, key, print) : undefined;
          if (!replay?.found) throw new Error('unreachable: an answer without a request id');
          return replay.value;
        },
        decide,
      });
      return value as T;
    } catch (e) {
      return this.settle<T>(e, key, print);
    }
  }

  /** A raw-SQL mutation that threw: a replay answers as before, and so does a concurrent twin with the same request_id that committed first. */
  private async settle<T>(e: unknown, key: { principal: string; method: string; requestId: string } | undefined, print: string): Promise<T> {
    if (e instanceof Replayed) {
      if (!e.answer.found) throw new Error('unreachable: a replay without an answer');
      return e.answer.value as T;
    }
    if (key) {
      const prior = await this.log.findAnswer(this.db.sql, key).catch(() => undefined);
      const replay = prior ? this.answered<T>(prior, key, print) : undefined;
      if (replay?.found) return replay.value;
    }
    throw e;
  }

  private answered<T>(
    prior: { fingerprint: string; response: unknown } | undefined,
    key: { method: string; requestId: string },
    print: string,
  ): { found: true; value: T } | { found: false } {
    if (!prior) return { found: false };
    if (prior.fingerprint !== print) {
      throw DomainError.invalid('REQUEST_ID_REUSED', [
        { field: 'requestId', description: `request_id ${key.requestId} was already used for a different ${key.method} request` },
      ]);
    }
    return { found: true, value: fromStored<T>(prior.response) };
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
