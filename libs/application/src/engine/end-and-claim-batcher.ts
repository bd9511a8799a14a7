import { EngineRepository, type EndAndClaimItem, type EndAndClaimResult, type Sql } from '#persistence';

interface Queued {
  item: EndAndClaimItem;
  resolve(r: EndAndClaimResult): void;
  reject(e: unknown): void;
  /** Runs in a statement of its own: its batch failed as a whole once. */
  alone: boolean;
}

export interface EndAndClaimBatcherOptions {
  /** Items (VMs) per statement at most. */
  maxBatch?: number;
  /** Statements in flight at once. */
  maxInFlight?: number;
}

/**
 * Group commit for the engine's end-and-claim statements. A worker runs several VMs'
 * operations at once, and between two operations each VM loop writes one end and claims
 * one next operation. Here a loop that asks while fewer than `maxInFlight` statements run
 * goes at once (no added latency); the others wait and go together in the next statement:
 * one round trip and one commit for all of them, where each used to cost one of each. On
 * this kind of machine a socket write and a commit cost more CPU than the statement's work
 * (bench:ops --profile-drain, --pg-statements).
 *
 * A statement holds at most one item per VM (a VM's loop asks once at a time anyway). A
 * statement that fails as a whole is split: each of its items runs again alone, so one
 * VM's failure is never another's. That is safe because a failed statement wrote nothing.
 */
export class EndAndClaimBatcher {
  private queue: Queued[] = [];
  private inFlight = 0;
  private readonly repo = new EngineRepository();
  private readonly maxBatch: number;
  private readonly maxInFlight: number;
  /** Statements run and items they carried, since start (items ÷ statements is the mean batch size). */
  readonly stats = { statements: 0, items: 0 };

  private readonly sql: Sql;

  /** `sqlOn(n)`: where the statements run, `n` at a time at most (connections of their own). */
  constructor(sqlOn: (connections: number) => Sql, opts: EndAndClaimBatcherOptions = {}) {
    this.maxBatch = opts.maxBatch ?? 32;
    this.maxInFlight = opts.maxInFlight ?? 2;
    this.sql = sqlOn(this.maxInFlight);
  }

  submit(item: EndAndClaimItem): Promise<EndAndClaimResult> {
    return new Promise((resolve, reject) => {
      this.queue.push({ item, resolve, reject, alone: false });
      this.pump();
    });
  }

  private pump(): void {
    while (this.inFlight < this.maxInFlight && this.queue.length > 0) {
      const batch = this.take();
      this.inFlight++;
      this.stats.statements++;
      this.stats.items += batch.length;
      void this.run(batch).finally(() => {
        this.inFlight--;
        this.pump();
      });
    }
  }

  /** The next statement's items, first come first served: one per VM, a lone item alone. */
  private take(): Queued[] {
    const batch: Queued[] = [];
    const vms = new Set<string>();
    const rest: Queued[] = [];
    for (const q of this.queue) {
      const fits = batch.length < this.maxBatch && !vms.has(q.item.vmId) && !(batch.length > 0 && (q.alone || batch[0]!.alone));
      if (fits) {
        batch.push(q);
        vms.add(q.item.vmId);
      } else rest.push(q);
    }
    this.queue = rest;
    return batch;
  }

  private async run(batch: Queued[]): Promise<void> {
    let results: EndAndClaimResult[];
    try {
      results = await this.repo.endAndClaimMany(
        this.sql,
        batch.map((q) => q.item),
      );
    } catch (e) {
      if (batch.length === 1) {
        batch[0]!.reject(e);
        return;
      }
      for (const q of batch) q.alone = true;
      this.queue.unshift(...batch);
      return;
    }
    for (const [i, q] of batch.entries()) q.resolve(results[i]!);
  }
}
