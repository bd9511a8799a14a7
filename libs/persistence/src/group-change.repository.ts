import { escapeLiteral } from 'pg';
import type { GroupDesiredState, GroupObservedState, LedgerChange } from '#domain';
import type { AuditEntry } from './audit.repository';
import type { Database } from './database';
import type { IdempotencyKey } from './idempotency.repository';
import { OUTBOX_CHANNEL, outboxHint } from './notifications';
import type { NewOperation } from './operation.repository';
import { lockedLedgerFromJson, poolFactsFromRow, type FactsRow, type LedgerJson, type LockedLedger, type PoolFacts } from './ledger.repository';
import { lockedVmFromJson, type LockedVmJson, type MemoryGroupRecord, type NewGroupRow } from './memory-group.repository';
import type { Sql } from './sql';
import type { VmRecord } from './vm.repository';

/** What a memory-group change locks: the VM, then the pool named, or else the pool of the VM's group. */
export interface GroupChangeTarget {
  vm: string;
  group: string;
  pool?: string;
}

/** What one change of a batch found under the batch's locks (memplane_open_group_changes). */
export type OpenedGroupChange =
  | { kind: 'answered'; fingerprint: string; response: unknown }
  | { kind: 'no-vm' }
  | { kind: 'locked'; vm: VmRecord; groups: MemoryGroupRecord[]; pool?: PoolFacts; ledger?: LockedLedger };

/** Everything a change writes, in one statement (memplane_close_group_change). */
export interface GroupChangeWrites {
  audit: AuditEntry;
  answer?: IdempotencyKey & { fingerprint: string; response: unknown };
  insertGroup?: NewGroupRow & { id: string; heldBytes: number; createTime: Date };
  updateGroup?: { id: string; requestedBytes?: number; desiredState?: GroupDesiredState; state?: GroupObservedState; heldBytes?: number; updateTime: Date };
  /** An allocator change on the pool; the group's new holding travels in insertGroup/updateGroup, or the group is deleted. */
  ledger?: { poolId: string; change: LedgerChange };
  /** The operation of a change to a running VM, with its outbox message (after the group's row). */
  insertOperation?: NewOperation & { id: string; topic: string };
  deleteGroup?: string;
}

const sum = (extents: readonly { sizeBytes: number }[]) => extents.reduce((s, e) => s + e.sizeBytes, 0);

/**
 * A batch of memory-group changes in two round trips (see the migration
 * group_change_functions): lock and read for all of them, decide each in
 * TypeScript, write all decisions and commit. Changes of one batch that use
 * the same pool share one LockedLedger object, so each decides on the ledger
 * its predecessors left (the caller moves `ledger.state` on). `decide` may run
 * statements of its own on `sql` in between.
 */
export class GroupChangeRepository {
  async runBatch<T>(
    db: Database,
    items: readonly { target: GroupChangeTarget; key?: IdempotencyKey }[],
    decide: (opened: OpenedGroupChange[], sql: Sql) => Promise<{ writes: GroupChangeWrites[]; result: T }>,
  ): Promise<T> {
    const open = {
      items: items.map(({ target, key }) => ({
        vm: target.vm,
        group: target.group,
        ...(target.pool === undefined ? {} : { pool: target.pool }),
        ...(key ? { principal: key.principal, method: key.method, requestId: key.requestId } : {}),
      })),
    };
    return db.twoTripTransaction(`select memplane_open_group_changes(${jsonLiteral(open)}) as r`, async (rows, sql) => {
      const { writes, result } = await decide(parseOpened(rows[0]?.r as OpenedJson, items.map((i) => i.target.vm)), sql);
      return {
        close: `select memplane_close_group_changes(${jsonLiteral({ changes: writes.map(closePayload) })}) as recorded`,
        result,
        // The outbox dispatchers hear of the operations once the batch commits.
        closed: (closeRows) => {
          for (const r of (closeRows[0]?.recorded ?? []) as { operation: string; vmId: string; outbox: number }[]) {
            sql.notify(OUTBOX_CHANNEL, outboxHint({ outboxId: r.outbox, operationId: r.operation, vmId: r.vmId }));
          }
        },
      };
    });
  }
}

interface OpenedJson {
  answers: ({ fingerprint: string; response: unknown } | null)[];
  vms: Record<string, LockedVmJson>;
  pools: Record<string, { facts: FactsRow; ledger: LedgerJson }>;
  poolOf: (string | null)[];
}

function parseOpened(r: OpenedJson, vmNames: readonly string[]): OpenedGroupChange[] {
  const pools = new Map(Object.entries(r.pools).map(([id, p]) => [id, { pool: poolFactsFromRow(p.facts), ledger: lockedLedgerFromJson(p.ledger) }]));
  const vms = new Map(Object.entries(r.vms).map(([name, v]) => [name, v]));
  const out: OpenedGroupChange[] = [];
  for (const [i, name] of vmNames.entries()) {
    const answer = r.answers?.[i];
    if (answer) {
      out.push({ kind: 'answered', fingerprint: answer.fingerprint, response: answer.response });
      continue;
    }
    const vm = vms.get(name);
    if (!vm) {
      out.push({ kind: 'no-vm' });
      continue;
    }
    const poolId = r.poolOf[i];
    const pool = poolId ? pools.get(poolId) : undefined;
    // Each change gets its own copy of its VM (one change per VM and batch), and the pool's shared ledger.
    out.push({ kind: 'locked', ...lockedVmFromJson(vm), ...(pool ? { pool: pool.pool, ledger: pool.ledger } : {}) });
  }
  return out;
}

function closePayload(w: GroupChangeWrites): Record<string, unknown> {
  const out: Record<string, unknown> = { audit: w.audit };
  if (w.answer) out.answer = w.answer;
  if (w.insertGroup) {
    const g = w.insertGroup;
    out.insertGroup = {
      id: g.id,
      vm_id: g.vmId,
      name: g.name,
      pool_id: g.poolId,
      kind: g.kind,
      size_bytes: g.sizeBytes,
      max_size_bytes: g.maxSizeBytes,
      block_size_bytes: g.blockSizeBytes,
      requested_bytes: g.requestedBytes,
      online_type: g.onlineType,
      guest_node_id: g.guestNodeId ?? null,
      hotplugged: g.hotplugged,
      held_bytes: g.heldBytes,
      created_at: g.createTime.toISOString(),
    };
  }
  if (w.updateGroup) {
    const u = w.updateGroup;
    out.updateGroup = {
      id: u.id,
      requested_bytes: u.requestedBytes ?? null,
      desired_state: u.desiredState ?? null,
      state: u.state ?? null,
      held_bytes: u.heldBytes ?? null,
      updated_at: u.updateTime.toISOString(),
    };
  }
  if (w.ledger) {
    const { added, removed, groupId } = w.ledger.change;
    out.ledger = {
      poolId: w.ledger.poolId,
      groupId,
      removed: removed.map((e) => ({ o: e.offsetBytes, s: e.sizeBytes })),
      added: added.map((e) => ({ o: e.offsetBytes, s: e.sizeBytes })),
      deltaBytes: sum(added) - sum(removed),
    };
  }
  if (w.insertOperation) out.insertOperation = w.insertOperation;
  if (w.deleteGroup) out.deleteGroup = w.deleteGroup;
  return out;
}

/** A JSON document as a quoted jsonb literal (the two-trip messages use the simple protocol, which has no parameters). */
function jsonLiteral(value: unknown): string {
  return `${escapeLiteral(JSON.stringify(value))}::jsonb`;
}
