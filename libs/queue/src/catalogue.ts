/**
 * The job catalogue: queue names, job names and their payloads. Operations carry only
 * their id: the worker re-reads desired and observed state, so a stale or duplicated job
 * cannot carry stale intent.
 */
export const OPERATIONS_QUEUE = 'memplane-operations';
/** Automation intake: versioned JSON requests, answered with the operation id (README, schemas/). */
export const REQUESTS_QUEUE = 'memplane-requests';

export const EXECUTE_OPERATION = 'execute-operation';

export interface ExecuteOperationJob {
  operationId: string;
  vmId: string;
}

/** Deterministic, so the outbox dispatcher and the API's fast path never enqueue twice. */
export function operationJobId(operationId: string): string {
  return `op-${operationId}`;
}

/**
 * The jobs for newly recorded operations: one per VM, named by the VM's last operation among
 * `rows` (a VM's job runs all its operations); rows without a VM have none. The outbox
 * dispatcher and the API's fast path both call this on the same notifications, so they name
 * the same jobs and the second add of each changes nothing.
 */
export function lastOperationPerVm(rows: Iterable<{ operationId: string; vmId: string | null }>): ExecuteOperationJob[] {
  const last = new Map<string, string>();
  for (const r of rows) if (r.vmId) last.set(r.vmId, r.operationId);
  return [...last].map(([vmId, operationId]) => ({ vmId, operationId }));
}

/** How an operation's job is retried and kept, wherever it is enqueued from. */
export const OPERATION_JOB_OPTIONS = { attempts: 6, backoff: { type: 'exponential' as const, delay: 500 }, removeOnComplete: 1000, removeOnFail: 1000 };

/** An operation's job, as the outbox dispatcher and the API's fast path both add it (same id, so the second add is a no-op). */
export function operationJob(operationId: string, vmId: string): { name: typeof EXECUTE_OPERATION; data: ExecuteOperationJob; opts: typeof OPERATION_JOB_OPTIONS & { jobId: string } } {
  return { name: EXECUTE_OPERATION, data: { operationId, vmId }, opts: { ...OPERATION_JOB_OPTIONS, jobId: operationJobId(operationId) } };
}

export function redisConnection(url: string): { host: string; port: number; password?: string; username?: string; db?: number; maxRetriesPerRequest: null } {
  const u = new URL(url);
  return {
    host: u.hostname,
    port: Number(u.port || 6379),
    ...(u.password ? { password: decodeURIComponent(u.password) } : {}),
    ...(u.username ? { username: decodeURIComponent(u.username) } : {}),
    ...(u.pathname.length > 1 ? { db: Number(u.pathname.slice(1)) } : {}),
    // BullMQ workers block on Redis; they must not give up after a few retries.
    maxRetriesPerRequest: null,
  };
}
