import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { DelayedError, Queue, Worker, type Job } from 'bullmq';
import { Client } from 'pg';
import { DriftMonitor, EngineStore, OperationExecutor, type ExecutorConfig } from '#application';
import { LocalHypervisorDriver, type HypervisorDriver } from '#hypervisor';
import { Database } from '#persistence';
import { projectRoot, type AppConfig } from '#platform';
import { startIntake } from './intake';
import { EXECUTE_OPERATION, OPERATIONS_QUEUE, operationJobId, redisConnection, type ExecuteOperationJob } from '#queue';

export interface WorkerOptions {
  databaseUrl: string;
  redisUrl: string;
  executor: Omit<ExecutorConfig, 'log'>;
  /** Operations run in parallel on different VMs; one VM's run one at a time. */
  concurrency?: number;
  /** BullMQ key prefix (tests isolate themselves with it). */
  prefix?: string;
  /** How often the outbox is read; the API also enqueues right after commit. */
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
}

export interface RunningWorker {
  worker: Worker<ExecuteOperationJob> | undefined;
  intake: Worker | undefined;
  queue: Queue<ExecuteOperationJob>;
  driver: HypervisorDriver;
  drift: DriftMonitor | undefined;
  stop(): Promise<void>;
}

/**
 * The executor's settings from the typed boot configuration (the worker app's and the API's
 * when it runs a worker in-process); guest images from this checkout's cache.
 */
export function executorConfigOf(config: Pick<AppConfig, 'dataDir' | 'worker'>): Omit<ExecutorConfig, 'log'> {
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

/**
 * Operations on one VM never overlap, across worker processes: a job holds a Postgres
 * session advisory lock on its VM while it runs. A worker that dies drops its connection and
 * with it the lock, so another worker can take the VM over at once.
 */
async function lockVm(databaseUrl: string, vmId: string): Promise<(() => Promise<void>) | undefined> {
  const client = new Client({ connectionString: databaseUrl });
  client.on('error', () => undefined);
  await client.connect();
  const r = await client.query<{ ok: boolean }>(`select pg_try_advisory_lock(hashtextextended($1, 727276)) as ok`, [vmId]);
  if (!r.rows[0]?.ok) {
    await client.end();
    return undefined;
  }
  return async () => {
    await client.query(`select pg_advisory_unlock(hashtextextended($1, 727276))`, [vmId]).catch(() => undefined);
    await client.end().catch(() => undefined);
  };
}

export async function startWorker(opts: WorkerOptions): Promise<RunningWorker> {
  const log = opts.log ?? (() => undefined);
  const db = new Database({ url: opts.databaseUrl, poolSize: 10 });
  const store = new EngineStore(db);
  const driver = opts.driver ?? new LocalHypervisorDriver({});
  const executor = new OperationExecutor(store, driver, { ...opts.executor, log });
  const connection = redisConnection(opts.redisUrl);
  const prefix = opts.prefix ?? 'bull';
  const queue = new Queue<ExecuteOperationJob>(OPERATIONS_QUEUE, { connection, prefix });

  const enqueueOptions = { attempts: 6, backoff: { type: 'exponential' as const, delay: 500 }, removeOnComplete: 1000, removeOnFail: 1000 };

  /**
   * Operations on one VM run in order, one at a time. Only the VM's oldest unfinished
   * operation runs; a job for a later one ends at once, and whoever finishes the head
   * enqueues the next (the sweeper backs that up). Workers never spin on a busy VM.
   */
  const processor = async (job: Job<ExecuteOperationJob>, token?: string) => {
    const { operationId, vmId } = job.data;
    const head = await store.headOperation(vmId);
    if (head !== operationId) return { operationId, deferredTo: head ?? null };
    const unlock = await lockVm(opts.databaseUrl, vmId);
    if (!unlock) {
      // Another worker still holds the VM (it is finishing this very operation's previous attempt).
      await job.moveToDelayed(Date.now() + 50, token);
      throw new DelayedError();
    }
    let state: string | undefined;
    try {
      state = await executor.execute(operationId);
      return { operationId, state };
    } finally {
      await unlock();
      if (state) {
        const next = await store.headOperation(vmId).catch(() => undefined);
        if (next) await queue.add(EXECUTE_OPERATION, { operationId: next, vmId }, { ...enqueueOptions, jobId: `${operationJobId(next)}-after-${operationId}` }).catch(() => undefined);
      }
    }
  };

  const worker =
    opts.executeOperations === false
      ? undefined
      : new Worker<ExecuteOperationJob>(OPERATIONS_QUEUE, processor, {
          connection,
          prefix,
          concurrency: opts.concurrency ?? 4,
          // A killed worker's job is taken over once its lock lapses.
          lockDuration: 15_000,
          stalledInterval: 5_000,
          maxStalledCount: 5,
        });
  worker?.on('error', (e) => log(`worker: ${e.message}`));
  const intake = opts.intake === false ? undefined : startIntake(db, connection, prefix, log);

  const enqueue = (operationId: string, vmId: string) => queue.add(EXECUTE_OPERATION, { operationId, vmId }, { ...enqueueOptions, jobId: operationJobId(operationId) });

  let stopping = false;
  // Outbox → queue. Deterministic job ids make a re-send harmless.
  const dispatch = async () => {
    const rows = await store.pendingOutbox(200);
    for (const r of rows) {
      const vmId = await store.vmIdOf(r.payload.operation);
      if (vmId) await enqueue(r.payload.operation, vmId);
    }
    await store.markDispatched(rows.map((r) => r.id));
  };
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
  loop(dispatch, opts.dispatchIntervalMs ?? 20);
  loop(sweep, opts.sweepIntervalMs ?? 5_000);
  // The sweeper also reports drift of running VMs no operation is changing (it never repairs: see DriftMonitor).
  const driftMs = opts.driftCheckIntervalMs ?? 30_000;
  const drift =
    worker && driftMs > 0
      ? new DriftMonitor(store, driver, {
          observe: (vmId) => executor.observe(vmId),
          lockVm: (vmId) => lockVm(opts.databaseUrl, vmId),
          recheckAfterMs: driftMs / 2,
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
    stop: async () => {
      stopping = true;
      for (const t of timers) clearTimeout(t);
      await drift?.stop();
      await worker?.close();
      await intake?.close();
      await queue.close();
      await db.close();
    },
  };
}
