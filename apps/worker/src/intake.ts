import { UnrecoverableError, Worker, type Job } from 'bullmq';
import { MemoryGroupService, Mutations, VmService, type CallContext } from '#application';
import { DomainError, isDomainError, type CreateMemoryGroupInput, type FieldViolation } from '#domain';
import type { Database } from '#persistence';
import { REQUESTS_QUEUE, RequestV1, type RequestResult } from '#queue';

/** Automation acts as an orchestrator: whoever can write to this Redis queue is trusted as one. */
const AUTOMATION: CallContext['principal'] = { keyId: 'queue', keyName: 'automation (memplane-requests)', role: 'orchestrator' };

/** A failed job carries the same code, reason and field violations the APIs answer with. */
export function failure(e: DomainError): UnrecoverableError {
  return new UnrecoverableError(JSON.stringify({ code: e.code, reason: e.reason, message: e.message, violations: e.violations, metadata: e.metadata }));
}

function parse(data: unknown): RequestV1 {
  if (typeof data !== 'object' || data === null || (data as { version?: unknown }).version !== 1) {
    throw DomainError.invalid('UNSUPPORTED_REQUEST_VERSION', [{ field: 'version', description: 'must be 1 (see libs/queue/schemas/memplane-request.v1.schema.json)' }]);
  }
  const r = RequestV1.safeParse(data);
  if (r.success) return r.data;
  const violations: FieldViolation[] = r.error.issues.map((i) => ({
    field: i.path.map((p) => (typeof p === 'number' ? `[${p}]` : String(p))).join('.').replace(/\.\[/g, '['),
    description: i.code === 'unrecognized_keys' ? `unknown field(s) ${i.keys.join(', ')}` : i.message,
  }));
  throw DomainError.invalid('INVALID_REQUEST', violations);
}

/**
 * Translates a queue request to the same application service calls REST and gRPC make, so
 * validation, idempotency (requestId) and audit are identical on every transport.
 */
export async function handleRequest(vms: VmService, groups: MemoryGroupService, job: Pick<Job, 'id' | 'data'>): Promise<RequestResult> {
  const ctx: CallContext = { principal: AUTOMATION, transport: 'queue', correlationId: `job-${job.id}` };
  try {
    const req = parse(job.data);
    switch (req.action) {
      case 'vm.start':
        return { operation: (await vms.start(ctx, req.vm, undefined, req.requestId)).name, applied: false };
      case 'vm.stop':
        return { operation: (await vms.stop(ctx, req.vm, undefined, req.requestId)).name, applied: false };
      case 'group.create': {
        const g = await groups.create(ctx, { ...req.group, vm: req.vm } as CreateMemoryGroupInput, req.requestId);
        return { operation: g.operation ?? null, applied: !g.operation };
      }
      case 'group.resize': {
        const g = await groups.resize(ctx, req.vm, req.group, req.requestedBytes, undefined, req.requestId);
        return { operation: g.operation ?? null, applied: !g.operation };
      }
      case 'group.delete': {
        const d = await groups.delete(ctx, req.vm, req.group, undefined, req.requestId);
        return { operation: d.memoryGroup.operation ?? null, applied: d.deleted };
      }
    }
  } catch (e) {
    if (isDomainError(e) && e.code !== 'UNAVAILABLE' && e.code !== 'INTERNAL') throw failure(e);
    throw e; // transient: BullMQ retries
  }
}

export function startIntake(db: Database, connection: object, prefix: string, log: (line: string) => void): Worker {
  const mutations = new Mutations(db);
  const vms = new VmService(mutations);
  const groups = new MemoryGroupService(mutations);
  const worker = new Worker(REQUESTS_QUEUE, (job) => handleRequest(vms, groups, job), { connection, prefix, concurrency: 8 });
  worker.on('error', (e) => log(`intake: ${e.message}`));
  return worker;
}
