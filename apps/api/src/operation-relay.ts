import { Queue } from 'bullmq';
import { OUTBOX_CHANNEL, parseOutboxHint, type PgHints } from '#persistence';
import { OPERATIONS_QUEUE, operationJob, redisConnection, type ExecuteOperationJob } from '#queue';

/** Adds in flight at most; beyond that Redis is slow or away, and the outbox dispatchers queue what is recorded meanwhile. */
const MAX_IN_FLIGHT = 32;

/**
 * The API's fast path from a recorded operation to the queue. Every operation is recorded
 * with an outbox row in the transaction that changes the desired state, and the outbox
 * dispatchers (in the workers) hear of the row once it commits: NOTIFY, their LISTEN, then
 * their add to BullMQ. That costs about 5 ms before a worker can take the operation (bench:ops
 * --trace). So the API, which knows the moment its transaction committed (PgHints.observe),
 * also adds the operation's job itself, without the client waiting for it.
 *
 * Best effort, never the guarantee: the outbox row stays pending until a dispatcher marks
 * it, so an operation whose add never happened (Redis away, this process killed right after
 * the commit) is still queued by a dispatcher; the job id is the operation's (operationJob),
 * so the dispatcher's add of a job already here changes nothing. Hints of one tick go in one
 * addBulk. It needs the workers' queue prefix (MEMPLANE_QUEUE_PREFIX); under another, its
 * jobs reach no worker and the dispatchers do all the work, as before.
 */
export class OperationRelay {
  private readonly queue: Queue<ExecuteOperationJob>;
  private readonly stopObserving: () => void;
  private pending: ExecuteOperationJob[] = [];
  private inFlight = 0;
  private closed = false;
  /** Jobs added, and hints left to the dispatchers because too many adds were in flight. */
  readonly stats = { added: 0, skipped: 0, failed: 0 };

  constructor(
    hints: PgHints,
    redisUrl: string,
    prefix: string,
    private readonly log: (line: string) => void = () => undefined,
  ) {
    this.queue = new Queue<ExecuteOperationJob>(OPERATIONS_QUEUE, { connection: redisConnection(redisUrl), prefix });
    this.queue.on('error', () => undefined); // a Redis blip: the dispatchers cover it
    this.stopObserving = hints.observe(OUTBOX_CHANNEL, (payload) => this.heard(payload));
  }

  private heard(payload: string): void {
    const row = parseOutboxHint(payload);
    if (!row || this.closed) return;
    if (this.inFlight >= MAX_IN_FLIGHT) {
      this.stats.skipped++;
      return;
    }
    this.pending.push({ operationId: row.operationId, vmId: row.vmId });
    if (this.pending.length === 1) setImmediate(() => this.flush());
  }

  private flush(): void {
    const jobs = this.pending.splice(0);
    if (!jobs.length) return;
    this.inFlight++;
    this.queue
      .addBulk(jobs.map((j) => operationJob(j.operationId, j.vmId)))
      .then(
        () => {
          this.stats.added += jobs.length;
        },
        (e: unknown) => {
          this.stats.failed += jobs.length;
          this.log(`operation relay: ${(e as Error).message}; the outbox dispatchers queue them`);
        },
      )
      .finally(() => this.inFlight--);
  }

  async close(): Promise<void> {
    this.closed = true;
    this.stopObserving();
    // A Redis that is away must not hold the shutdown up: what was not added, the dispatchers add.
    await Promise.race([this.queue.close().catch(() => undefined), new Promise((r) => setTimeout(r, 2_000).unref())]);
  }
}
