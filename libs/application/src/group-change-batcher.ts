import { DomainError } from '#domain';
import {
  GroupChangeRepository,
  type AuditEntry,
  type Database,
  type GroupChangeTarget,
  type GroupChangeWrites,
  type IdempotencyKey,
  type OpenedGroupChange,
  type Sql,
} from '#persistence';
import type { GroupChangeDecision, LockedGroupChange } from './mutations';

/** One memory-group change waiting for its batch. */
export interface PendingGroupChange {
  target: GroupChangeTarget;
  key?: IdempotencyKey;
  audit: AuditEntry;
  /** The answer record for a decided change (undefined without a request id). */
  answer(result: unknown): GroupChangeWrites['answer'];
  /** The earlier answer to the request id, or a REQUEST_ID_REUSED error. */
  replay(prior: { fingerprint: string; response: unknown }): unknown;
  decide(locked: LockedGroupChange, sql: Sql): Promise<GroupChangeDecision<unknown>>;
}

interface Queued extends PendingGroupChange {
  resolve(value: unknown): void;
  reject(error: unknown): void;
  /** Runs in a batch of its own: its batch failed as a whole once. */
  alone: boolean;
}

type Outcome = { ok: true; value: unknown } | { ok: false; error: unknown };

export interface GroupChangeBatcherOptions {
  /** Changes per batch at most. */
  maxBatch?: number;
  /** Batches (transactions, connections) in flight at once. */
  maxInFlight?: number;
}

/**
 * Group commit for memory-group changes. A change that arrives while fewer
 * than `maxInFlight` batches run starts a batch at once (no added latency);
 * the others queue and go together in the next batch: one transaction, two
 * round trips and one commit for all of them (GroupChangeRepository). Each
 * change is decided in order on what the batch read under its locks, and the
 * changes that share a pool decide on the ledger their predecessors left.
 *
 * A change that is refused (a DomainError) changes nothing: statements it ran
 * itself are rolled back to a savepoint taken before its first one. A batch
 * that fails as a whole (an unexpected database error) is split: each of its
 * changes runs again alone, so one change never fails another. A batch holds
 * at most one change per VM (the next waits for the next batch), so every
 * change sees its VM as committed.
 */
export class GroupChangeBatcher {
  private queue: Queued[] = [];
  private inFlight = 0;
  private readonly repo = new GroupChangeRepository();
  private readonly maxBatch: number;
  private readonly maxInFlight: number;
  /** Batches run and changes they carried, since start (changes ÷ batches is the mean batch size). */
  readonly stats = { batches: 0, changes: 0 };

  constructor(
    private readonly db: Database,
    opts: GroupChangeBatcherOptions = {},
  ) {
    this.maxBatch = opts.maxBatch ?? 64;
    this.maxInFlight = opts.maxInFlight ?? 2;
  }

  submit(change: PendingGroupChange): Promise<unknown> {
    return new Promise((resolve, reject) => {
      this.queue.push({ ...change, resolve, reject, alone: false });
      this.pump();
    });
  }

  private pump(): void {
    while (this.inFlight < this.maxInFlight && this.queue.length > 0) {
      const batch = this.take();
      this.inFlight++;
      this.stats.batches++;
      this.stats.changes += batch.length;
      void this.run(batch).finally(() => {
        this.inFlight--;
        this.pump();
      });
    }
  }

  /** The next batch, first come first served: one change per VM, a lone change alone. */
  private take(): Queued[] {
    const batch: Queued[] = [];
    const vms = new Set<string>();
    const rest: Queued[] = [];
    for (const c of this.queue) {
      const fits = batch.length < this.maxBatch && !vms.has(c.target.vm) && !(batch.length > 0 && (c.alone || batch[0]!.alone));
      if (fits) {
        batch.push(c);
        vms.add(c.target.vm);
      } else rest.push(c);
    }
    this.queue = rest;
    return batch;
  }

  private async run(batch: Queued[]): Promise<void> {
    let outcomes: Outcome[];
    try {
      outcomes = await this.repo.runBatch(this.db, batch, (opened, sql) => this.decideAll(batch, opened, sql));
    } catch (e) {
      // An unreachable database fails everyone at once; anything else may be one change's fault.
      if (batch.length === 1 || (e instanceof DomainError && e.code === 'UNAVAILABLE')) {
        for (const c of batch) c.reject(e);
        return;
      }
      for (const c of batch) c.alone = true;
      this.queue.unshift(...batch);
      return;
    }
    for (const [i, c] of batch.entries()) {
      const o = outcomes[i]!;
      if (o.ok) c.resolve(o.value);
      else c.reject(o.error);
    }
  }

  private async decideAll(batch: readonly Queued[], opened: OpenedGroupChange[], sql: Sql): Promise<{ writes: GroupChangeWrites[]; result: Outcome[] }> {
    const writes: GroupChangeWrites[] = [];
    const result: Outcome[] = [];
    for (const [i, c] of batch.entries()) {
      const o = opened[i]!;
      if (o.kind === 'answered') {
        result.push(attempt(() => c.replay(o)));
        continue;
      }
      if (o.kind === 'no-vm') {
        result.push({ ok: false, error: DomainError.notFound('vm', c.target.vm) });
        continue;
      }
      const { kind: _locked, ...locked } = o;
      const own = new SavepointSql(sql);
      try {
        const d = await c.decide(locked, own);
        // The next change on this pool decides on the ledger this one leaves.
        if (d.writes.ledger && o.ledger) o.ledger.state = d.writes.ledger.change.state;
        const answer = c.answer(d.result);
        writes.push({ ...d.writes, audit: c.audit, ...(answer ? { answer } : {}) });
        result.push({ ok: true, value: d.result });
      } catch (e) {
        // Anything but a refusal fails the batch (and the transaction is aborted anyway).
        if (!(e instanceof DomainError)) throw e;
        await own.undo();
        result.push({ ok: false, error: e });
      }
    }
    return { writes, result };
  }
}

function attempt(fn: () => unknown): Outcome {
  try {
    return { ok: true, value: fn() };
  } catch (error) {
    return { ok: false, error };
  }
}

/** A change's own statements, after a savepoint taken before the first of them (none for most changes). */
class SavepointSql implements Sql {
  private used = false;

  constructor(private readonly sql: Sql) {}

  async query<R>(text: string, values?: readonly unknown[]): Promise<R[]> {
    if (!this.used) {
      this.used = true;
      await this.sql.query('savepoint mp_change');
    }
    return this.sql.query<R>(text, values);
  }

  /** Passed on: a hint of a change that was rolled back to the savepoint costs a listener one needless read. */
  notify(channel: string, payload: string): void {
    this.sql.notify(channel, payload);
  }

  async undo(): Promise<void> {
    if (this.used) await this.sql.query('rollback to savepoint mp_change');
  }
}
