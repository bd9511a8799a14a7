import {
  DomainError,
  type Operation,
  type OperationError,
  type OperationKind,
  type OperationMessage,
  type OperationRollback,
  type OperationState,
  type OperationStep,
} from '#domain';
import { OPERATION_CHANNEL, OUTBOX_CHANNEL, outboxHint } from './notifications';
import type { Sql } from './sql';

export interface OperationRecord extends Operation {
  vmId: string;
  groupId?: string;
  rollback: OperationRollback;
  seq: string;
}

export interface OpRow {
  id: string;
  seq: string;
  vm_id: string;
  vm: string;
  group_id: string | null;
  group_name: string | null;
  kind: string;
  state: string;
  steps: OperationStep[];
  progress_percent: number;
  attempts: number;
  error: OperationError | null;
  rollback: OperationRollback;
  request_id: string | null;
  principal: string;
  created_at: Date | string;
  updated_at: Date | string;
  started_at: Date | string | null;
  ended_at: Date | string | null;
}

/** A row as selected here, or the same as JSON (timestamps as strings). */
export function operationRowToRecord(r: OpRow): OperationRecord {
  return {
    name: r.id,
    seq: String(r.seq),
    vm: r.vm,
    vmId: r.vm_id,
    ...(r.group_id ? { groupId: r.group_id } : {}),
    ...(r.group_name ? { memoryGroup: r.group_name } : {}),
    kind: r.kind as OperationKind,
    state: r.state as OperationState,
    steps: r.steps,
    progressPercent: r.progress_percent,
    attempts: r.attempts,
    ...(r.error ? { error: r.error } : {}),
    rollback: r.rollback,
    ...(r.request_id ? { requestId: r.request_id } : {}),
    principal: r.principal,
    createTime: new Date(r.created_at),
    updateTime: new Date(r.updated_at),
    ...(r.started_at ? { startTime: new Date(r.started_at) } : {}),
    ...(r.ended_at ? { endTime: new Date(r.ended_at) } : {}),
  };
}

const SELECT = `select o.id, o.seq, o.vm_id, v.name as vm, o.group_id, o.group_name, o.kind::text as kind, o.state::text as state, o.steps, o.progress_percent,
  o.attempts, o.error, o.rollback, o.request_id, o.principal, o.created_at, o.updated_at, o.started_at, o.ended_at
  from operations o join vms v on v.id = o.vm_id`;

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export interface NewOperation {
  vmId: string;
  vm: string;
  groupId?: string;
  groupName?: string;
  kind: OperationKind;
  steps: OperationStep[];
  rollback: OperationRollback;
  requestId?: string;
  principal: string;
}

export class OperationRepository {
  /** The operation and its outbox message, in one statement of the caller's transaction. */
  async create(sql: Sql, op: NewOperation, topic: string): Promise<OperationRecord> {
    const rows = await sql.query<OpRow & { outbox_id: string }>(
      `with op as (
         insert into operations (id, vm_id, group_id, group_name, kind, steps, rollback, request_id, principal)
         values (gen_random_uuid(), $1::uuid, $2::uuid, $3, $4::"OperationKind", $5::jsonb, $6::jsonb, $7, $8)
         returning *),
       box as (
         insert into outbox (topic, key, payload)
         select $9, op.id::text, jsonb_build_object('v', 1, 'operation', op.id, 'vm', $10::text, 'kind', op.kind, 'memoryGroup', op.group_name) from op
         returning id)
       select op.id, op.seq, op.vm_id, $10::text as vm, op.group_id, op.group_name, op.kind::text as kind, op.state::text as state, op.steps, op.progress_percent,
         op.attempts, op.error, op.rollback, op.request_id, op.principal, op.created_at, op.updated_at, op.started_at, op.ended_at, (select id from box) as outbox_id
       from op`,
      [op.vmId, op.groupId ?? null, op.groupName ?? null, op.kind, JSON.stringify(op.steps), JSON.stringify(op.rollback), op.requestId ?? null, op.principal, topic, op.vm],
    );
    const row = rows[0]!;
    // Wakes the outbox dispatchers once this commits (they read the outbox on a slow timer too).
    sql.notify(OUTBOX_CHANNEL, outboxHint({ outboxId: row.outbox_id, operationId: row.id, vmId: row.vm_id }));
    return operationRowToRecord(row);
  }

  async find(sql: Sql, name: string): Promise<OperationRecord | undefined> {
    if (!UUID.test(name)) return undefined;
    const rows = await sql.query<OpRow>(`${SELECT} where o.id = $1::uuid`, [name]);
    return rows[0] ? operationRowToRecord(rows[0]) : undefined;
  }

  async get(sql: Sql, name: string): Promise<OperationRecord> {
    const op = await this.find(sql, name);
    if (!op) throw DomainError.notFound('operation', name);
    return op;
  }

  /** Locks the operation row; callers hold its VM's lock first. */
  async lock(sql: Sql, name: string): Promise<OperationRecord> {
    const rows = await sql.query<OpRow>(`${SELECT} where o.id = $1::uuid for update of o`, [name]);
    if (!rows[0]) throw DomainError.notFound('operation', name);
    return operationRowToRecord(rows[0]);
  }

  /** Newest first; `after` is the seq of the last operation of the previous page. */
  async list(sql: Sql, opts: { after?: string; limit: number; vm?: string; state?: OperationState }): Promise<{ items: OperationRecord[]; total: number }> {
    const where: string[] = [];
    const args: unknown[] = [];
    if (opts.vm) {
      args.push(opts.vm);
      where.push(`v.name = $${args.length}`);
    }
    if (opts.state) {
      args.push(opts.state);
      where.push(`o.state = $${args.length}::"OperationState"`);
    }
    const filter = where.length ? `where ${where.join(' and ')}` : '';
    const pageArgs = [...args];
    let pageFilter = filter;
    if (opts.after) {
      if (!/^[0-9]{1,19}$/.test(opts.after)) throw DomainError.invalid('INVALID_PAGE_TOKEN', [{ field: 'pageToken', description: 'is not a page token issued by this service' }]);
      pageArgs.push(opts.after);
      pageFilter = `${filter ? `${filter} and` : 'where'} o.seq < $${pageArgs.length}::bigint`;
    }
    pageArgs.push(opts.limit);
    const [rows, count] = await Promise.all([
      sql.query<OpRow>(`${SELECT} ${pageFilter} order by o.seq desc limit $${pageArgs.length}`, pageArgs),
      sql.query<{ n: string }>(`select count(*) as n from operations o join vms v on v.id = o.vm_id ${filter}`, args),
    ]);
    return { items: rows.map(operationRowToRecord), total: Number(count[0]?.n ?? 0) };
  }

  /** Moves an operation to `state`; terminal states record their end time. */
  async setState(sql: Sql, name: string, state: OperationState, error?: OperationError): Promise<void> {
    await sql.query(
      `update operations set state = $2::"OperationState", error = $3::jsonb,
         ended_at = case when $2 in ('SUCCEEDED', 'FAILED', 'CANCELLED') then now() else ended_at end,
         started_at = case when $2 = 'RUNNING' then coalesce(started_at, now()) else started_at end,
         attempts = attempts + case when $2 = 'RUNNING' then 1 else 0 end,
         updated_at = now() where id = $1::uuid`,
      [name, state, error ? JSON.stringify(error) : null],
    );
    sql.notify(OPERATION_CHANNEL, name);
  }

  /** The dispatcher's view (a later issue): undispatched messages in order. */
  async pendingMessages(sql: Sql, limit: number): Promise<{ id: string; topic: string; payload: OperationMessage }[]> {
    const rows = await sql.query<{ id: string; topic: string; payload: OperationMessage }>(
      `select id, topic, payload from outbox where dispatched_at is null order by id limit $1`,
      [limit],
    );
    return rows.map((r) => ({ id: String(r.id), topic: r.topic, payload: r.payload }));
  }
}
