import type { AuditEntry } from './audit.repository';
import type { IdempotencyKey } from './idempotency.repository';
import type { Sql } from './sql';

/**
 * The audit log and AIP-155 idempotency records in raw SQL: the same tables
 * and columns as AuditRepository and IdempotencyRepository, for mutations that
 * run on the raw SQL path.
 */
export class MutationLogRepository {
  async appendAudit(sql: Sql, entry: AuditEntry): Promise<void> {
    await sql.query(
      `insert into audit_log (principal, role, method, resource, request_id, transport, details) values ($1, $2, $3, $4, $5, $6, $7::jsonb)`,
      [entry.principal, entry.role, entry.method, entry.resource, entry.requestId ?? null, entry.transport, JSON.stringify(entry.details ?? {})],
    );
  }

  /** The audit record, and the earlier answer to `key` if there is one, in one round trip. */
  async auditAndFindAnswer(sql: Sql, entry: AuditEntry, key: IdempotencyKey | undefined): Promise<{ fingerprint: string; response: unknown } | undefined> {
    const rows = await sql.query<{ fingerprint: string | null; response: unknown }>(
      `with a as (insert into audit_log (principal, role, method, resource, request_id, transport, details) values ($1, $2, $3, $4, $5, $6, $7::jsonb) returning 1)
       select (select count(*) from a) as audited, i.fingerprint, i.response
       from (select 1) one left join idempotency_records i on i.principal = $8 and i.method = $9 and i.request_id = $10`,
      [
        entry.principal,
        entry.role,
        entry.method,
        entry.resource,
        entry.requestId ?? null,
        entry.transport,
        JSON.stringify(entry.details ?? {}),
        key?.principal ?? null,
        key?.method ?? null,
        key?.requestId ?? null,
      ],
    );
    const r = rows[0];
    return r && r.fingerprint !== null ? { fingerprint: r.fingerprint, response: r.response } : undefined;
  }

  async findAnswer(sql: Sql, key: IdempotencyKey): Promise<{ fingerprint: string; response: unknown } | undefined> {
    const rows = await sql.query<{ fingerprint: string; response: unknown }>(
      `select fingerprint, response from idempotency_records where principal = $1 and method = $2 and request_id = $3`,
      [key.principal, key.method, key.requestId],
    );
    return rows[0];
  }

  async recordAnswer(sql: Sql, key: IdempotencyKey, fingerprint: string, response: unknown): Promise<void> {
    await sql.query(`insert into idempotency_records (principal, method, request_id, fingerprint, response) values ($1, $2, $3, $4, $5::jsonb)`, [
      key.principal,
      key.method,
      key.requestId,
      fingerprint,
      JSON.stringify(response ?? null),
    ]);
  }
}
