import { existsSync } from 'node:fs';
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { Queue, Worker, type Job } from 'bullmq';
import { DriftMonitor, EngineStore, OperationExecutor, type EndAndClaimBatcherOptions, type ExecutorConfig } from '#application';
import { LocalHypervisorDriver, type HypervisorDriver } from '#hypervisor';
import { Database, PgNotifications } from '#persistence';
import { DEFAULT_WORKER_CONCURRENCY, projectRoot, type AppConfig } from '#platform';
import { startIntake } from './intake';
import { OutboxDispatcher } from './outbox-dispatcher';
import { VmLocks } from './vm-locks';
import { EXECUTE_OPERATION, OPERATION_JOB_OPTIONS, OPERATIONS_QUEUE, operationJob, operationJobId, redisConnection, type ExecuteOperationJob } from '#queue';

export interface WorkerOptions {
  databaseUrl: string;
  redisUrl: string;
  executor: Omit<ExecutorConfig, 'log'>;
  /** Operations run in parallel on different VMs; one VM's run one at a time. */
  concurrency?: number;
  /** BullMQ key prefix (tests isolate themselves with it). */
  prefix?: string;
  /** How often the outbox is read besides when Postgres notifies a new operation (default 1 s). */
  dispatchIntervalMs?: number;
  sweepIntervalMs?: number;
  /** How often idle running VMs are checked for drift (DriftMonitor); 0 = never. Default 30 s. */
  driftCheckIntervalMs?: number;
  /** A non-terminal operation untouched for this long is re-sent (its job may be lost with Redis). */
  stuckAfterMs?: number;
  driver?: HypervisorDriver;
  /** Consume the automation intake queue (memplane-requests) too; default true. */
  intake?: boolean;
  /** Execute operations; default true (false: an intake-only process). */
  executeOperations?: boolean;
  log?: (line: string) => void;
  /** How VM loops share end-and-claim statements (EndAndClaimBatcher); bench:ops varies it. */
  endAndClaim?: EndAndClaimBatcherOptions;
}

export interface RunningWorker {
  worker: Worker<ExecuteOperationJob> | undefined;
  intake: Worker | undefined;
  queue: Queue<ExecuteOperationJob>;
  driver: HypervisorDriver;
  drift: DriftMonitor | undefined;
  store: EngineStore;
  stop(): Promise<void>;
}

/**
 * The executor's settings from the typed boot configuration (the worker app's and the API's
 * when it runs a worker in-process); guest images from this checkout's cache.
 */
function executorConfigOf(config: Pick<AppConfig, 'dataDir' | 'worker'>): Omit<ExecutorConfig, 'log'> {
  const w = config.worker;
  return {
    runtimeDir: join(config.dataDir, 'vms'),
    bootImage: cachedGuestImages(projectRoot()),
    accel: w.qemuAccel,
    cpuModel: w.qemuCpu,
    hostNodeBinding: w.hostNodeBinding,
    convergeTimeoutMs: w.convergeTimeoutMs,
    deviceDelTimeoutMs: w.deviceDelTimeoutMs,
    shrinkStallMs: w.shrinkStallMs,
    bootTimeoutMs: w.bootTimeoutMs,
  };
}

/** A worker's options from the typed boot configuration, on the Postgres and Redis the process reached. */
export function workerOptionsOf(
  config: Pick<AppConfig, 'dataDir' | 'worker'>,
  data: { databaseUrl: string; redisUrl: string },
): Pick<WorkerOptions, 'databaseUrl' | 'redisUrl' | 'prefix' | 'concurrency' | 'executor' | 'driftCheckIntervalMs'> {
  return {
    databaseUrl: data.databaseUrl,
    redisUrl: data.redisUrl,
    prefix: config.worker.queuePrefix,
    concurrency: config.worker.concurrency,
    executor: executorConfigOf(config),
    driftCheckIntervalMs: config.worker.driftCheckIntervalMs,
  };
}

/** Default boot images: the guest images scripts/guest/build-guest-images.sh caches. */
export function cachedGuestImages(root: string): ExecutorConfig['bootImage'] {
  return (profile: string) => {
    const dir = join(root, '.cache', 'guest', profile);
    const kernel = join(dir, 'vmlinuz');
    const initrd = join(dir, 'initramfs.cpio.gz');
    if (!existsSync(kernel) || !existsSync(initrd)) {
      throw new Error(`no boot image for ${profile} in ${dir}: run scripts/guest/build-guest-images.sh`);
    }
    // memhp_default_state=offline: the engine onlines every block itself, in the zone the group asks for.
    return { kernel, initrd, append: 'console=ttyS0 panic=-1 memhp_default_state=offline' };
  };
}

/** How long one job may keep running one VM's operations before it lets other VMs' jobs have the slot. */
const TURN_MS = 10_000;
const TURN_OPERATIONS = 100;

export async function startWorker(opts: WorkerOptions): Promise<RunningWorker> {
  const log = opts.log ?? (() => undefined);
  const db = new Database({ url: opts.databaseUrl, poolSize: 10 });
  const store = new EngineStore(db, opts.endAndClaim ? { endAndClaim: opts.endAndClaim } : {});
  const driver = opts.driver ?? new LocalHypervisorDriver({});
  const executor = new OperationExecutor(store, driver, { ...opts.executor, log });
  const connection = redisConnection(opts.redisUrl);
  const prefix = opts.prefix ?? 'bull';
  const queue = new Queue<ExecuteOperationJob>(OPERATIONS_QUEUE, { connection, prefix });

  /**
   * Operations on one VM run in order, one at a time, across worker processes: a job says
   * "this VM has work". Whoever gets the VM's lock runs its operations oldest first until
   * none is left (or its turn is up); a job that finds the VM locked ends at once, because
   * the holder will run that work too. After letting go, the holder looks once more and
   * re-queues the VM if an operation arrived meanwhile (the sweeper backs that up).
   */
  const locks = new VmLocks(opts.databaseUrl, (opts.concurrency ?? DEFAULT_WORKER_CONCURRENCY) + 3); // + the drift check's
  let stopping = false;
  const processor = async (job: Job<ExecuteOperationJob>) => {
    const { vmId } = job.data;
    const unlock = await locks.tryLock(vmId);
    if (!unlock) return { vmId, ran: [], busy: true };
    const ran: { operationId: string; state: string }[] = [];
    const turnEnds = Date.now() + TURN_MS;
    let retryLater = false;
    try {
      let count = 0;
      ran.push(...(await executor.executeHead(vmId, () => !stopping && ++count < TURN_OPERATIONS && Date.now() < turnEnds)));
      return { vmId, ran };
    } catch (e) {
      // The job is retried with backoff (after a transient failure the operation is PENDING again).
      retryLater = true;
      throw e;
    } finally {
      await unlock();
      if (!retryLater) await requeueHead(vmId, ran[ran.length - 1]?.operationId ?? job.id);
    }
  };
  /**
   * After letting go of a VM: a job that came for it meanwhile found it locked and ended,
   * so its operation is queued again (a job id of its own: one that ended already would
   * swallow the add).
   */
  const requeueHead = async (vmId: string, after: string | undefined) => {
    const next = await store.headOperation(vmId).catch(() => undefined);
    if (next) await queue.add(EXECUTE_OPERATION, { operationId: next, vmId }, { ...OPERATION_JOB_OPTIONS, jobId: `${operationJobId(next)}-after-${after}` }).catch(() => undefined);
  };

  const worker =
    opts.executeOperations === false
      ? undefined
      : new Worker<ExecuteOperationJob>(OPERATIONS_QUEUE, processor, {
          connection,
          prefix,
          concurrency: opts.concurrency ?? DEFAULT_WORKER_CONCURRENCY,
          // A killed worker's job is taken over once its lock lapses.
          lockDuration: 15_000,
          stalledInterval: 5_000,
          maxStalledCount: 5,
        });
  worker?.on('error', (e) => log(`worker: ${e.message}`));
  const intake = opts.intake === false ? undefined : startIntake(db, connection, prefix, log);

  const enqueue = (operationId: string, vmId: string) => {
    const job = operationJob(operationId, vmId);
    return queue.add(job.name, job.data, job.opts);
  };

  // Outbox → queue. Deterministic job ids make a re-send harmless.
  const notifications = new PgNotifications(opts.databaseUrl);
  const dispatcher = new OutboxDispatcher({
    notifications,
    store,
    intervalMs: opts.dispatchIntervalMs ?? 1_000,
    log,
    wake: async (vms) => {
      await queue.addBulk(vms.map(({ vmId, operationId }) => operationJob(operationId, vmId)));
    },
  });
  // Re-drive anything stuck: a job lost with Redis, or one that ended in BullMQ without ending in Postgres.
  const sweep = async () => {
    for (const op of await store.unfinishedOperations(opts.stuckAfterMs ?? 30_000)) {
      const job = await queue.getJob(operationJobId(op.id));
      const state = job ? await job.getState() : 'missing';
      if (state === 'missing' || state === 'completed' || state === 'failed' || state === 'unknown') {
        if (job) await job.remove().catch(() => undefined);
        log(`sweeper: re-sending operation ${op.id} (${op.state}, job ${state})`);
        await enqueue(op.id, op.vmId);
      }
    }
  };
  const loop = (fn: () => Promise<void>, ms: number) => {
    const tick = async () => {
      if (stopping) return;
      await fn().catch((e: unknown) => log(`${fn.name}: ${(e as Error).message}`));
      if (!stopping) timers.push(setTimeout(tick, ms));
    };
    timers.push(setTimeout(tick, 0));
  };
  const timers: NodeJS.Timeout[] = [];
  dispatcher.start();
  loop(sweep, opts.sweepIntervalMs ?? 5_000);
  // The sweeper also reports drift of running VMs no operation is changing (it never repairs: see DriftMonitor).
  const driftMs = opts.driftCheckIntervalMs ?? 30_000;
  const drift =
    worker && driftMs > 0
      ? new DriftMonitor(store, driver, {
          observe: (vmId) => executor.observe(vmId),
          // The check holds the VM's operation lock too: an operation that arrives meanwhile
          // is queued again when the check lets go, not left to the sweeper (30 s later).
          lockVm: async (vmId) => {
            const unlock = await locks.tryLock(vmId);
            if (!unlock) return undefined;
            return async () => {
              await unlock();
              await requeueHead(vmId, `drift-check-${randomUUID()}`);
            };
          },
          recheckAfterMs: driftMs / 2,
          // A VM being changed is checked once it has been quiet for half an interval.
          quietAfterMs: driftMs / 2,
          log,
        })
      : undefined;
  if (drift) {
    loop(async function driftCheck() {
      await drift.checkAll();
    }, driftMs);
  }

  return {
    worker,
    intake,
    queue,
    driver,
    drift,
    store,
    stop: async () => {
      stopping = true;
      for (const t of timers) clearTimeout(t);
      await drift?.stop();
      await dispatcher.stop();
      await notifications.close();
      await worker?.close();
      await locks.close();
      await intake?.close();
      await queue.close();
      await db.close();
    },
  };
}
