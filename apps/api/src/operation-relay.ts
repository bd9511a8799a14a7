import { Queue } from 'bullmq';
import { OUTBOX_CHANNEL, parseOutboxHint, type PgHints } from '#persistence';
import { lastOperationPerVm, OPERATIONS_QUEUE, operationJob, redisConnection, type ExecuteOperationJob } from '#queue';

/** Adds in flight at most; beyond that Redis is slow or away, and the outbox dispatchers queue what is recorded meanwhile. */
const MAX_IN_FLIGHT = 32;

/** An operation's job (operationJob), deduplicated by VM: one waiting, and the last add while one runs. */
export function relayJob(operationId: string, vmId: string) {
  const job = operationJob(operationId, vmId);
  return { ...job, opts: { ...job.opts, deduplication: { id: `vm-${vmId}`, keepLastIfActive: true } } };
}

/**
 * The API's fast path from a recorded operation to the queue. Every operation is recorded
 * with an outbox row in the transaction that changes the desired state, and the outbox
 * dispatchers (in the workers) hear of the row once it commits: the hints' NOTIFY statement
 * (PgHints), their LISTEN, then their add to BullMQ. That cost about 5 ms before a worker
 * could take the operation (bench:ops --trace). So the API adds the jobs itself as that
 * statement goes out (PgHints.observe), without the client waiting for it, exactly as a
 * dispatcher will from the notifications of that statement: one job per VM, named by the
 * VM's last operation among them (a VM's job runs all its operations), so a dispatcher's add
 * of the same jobs changes nothing. And at most one of them waits per VM (BullMQ
 * deduplication by VM, keeping the last add while one runs): a VM's job runs all its
 * operations, so any more would only find nothing left to do, each costing a lock and a claim.
 * Without that, a backlog recorded while no worker ran left ~900 such jobs for 1,000
 * operations on 16 VMs (bench:ops 1a), and they held the next run's workers up for 650 ms.
 *
 * Best effort, never the guarantee: the outbox rows stay pending until a dispatcher marks
 * them, so an operation whose add never happened (Redis away, this process killed right
 * after the commit) is still queued by a dispatcher. It needs the workers' queue prefix
 * (MEMPLANE_QUEUE_PREFIX); under another, its jobs reach no worker and the dispatchers do
 * all the work, as before.
 */
export class OperationRelay {
  private readonly queue: Queue<ExecuteOperationJob>;
  private readonly stopObserving: () => void;
  private inFlight = 0;
  private closed = false;
  /** Jobs asked of Redis (those it deduplicated included), failed, and left to the dispatchers because too many adds were in flight. */
  readonly stats = { added: 0, skipped: 0, failed: 0 };

  constructor(
    hints: PgHints,
    redisUrl: string,
    prefix: string,
    private readonly log: (line: string) => void = () => undefined,
  ) {
    this.queue = new Queue<ExecuteOperationJob>(OPERATIONS_QUEUE, { connection: redisConnection(redisUrl), prefix });
    this.queue.on('error', () => undefined); // a Redis blip: the dispatchers cover it
    this.stopObserving = hints.observe(OUTBOX_CHANNEL, (payloads) => this.heard(payloads));
  }

  private heard(payloads: string[]): void {
    if (this.closed) return;
    // The jobs a dispatcher will add from the notifications of this statement.
    const jobs = lastOperationPerVm(payloads.flatMap((p) => parseOutboxHint(p) ?? []));
    if (!jobs.length) return;
    if (this.inFlight >= MAX_IN_FLIGHT) {
      this.stats.skipped += jobs.length;
      return;
    }
    this.inFlight++;
    this.queue
      .addBulk(jobs.map((j) => relayJob(j.operationId, j.vmId)))
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
