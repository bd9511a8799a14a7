import { z } from 'zod';
import { DomainError, GROUP_ONLINE_TYPES, HOST_STATES, NODE_KINDS, POOL_MEMORY_TYPES, POOL_STATES, ROLES, type FieldViolation } from '#domain';

/**
 * REST bodies: strict (an unknown field is an error, not silently dropped),
 * integers only, sizes as JSON numbers or decimal strings (for clients whose
 * JSON cannot carry 64-bit integers). Range and rule checks live in the domain.
 */
const int = z.number().int('must be an integer');
const bytes = z
  .union([int, z.string().regex(/^-?[0-9]+$/, 'must be an integer number of bytes').transform((s) => Number(s))])
  .refine((n) => Number.isSafeInteger(n), 'is out of range (not a safe integer)');
const labels = z.record(z.string(), z.string());
const name = z.string();

export const HostNodeBody = z.strictObject({ nodeId: int, cpus: z.array(int).default([]), memoryBytes: bytes, kind: z.enum(NODE_KINDS as [string, ...string[]]) });
export const PerformanceBody = z.strictObject({
  cpuNodeId: int,
  memoryNodeId: int,
  readLatencyNs: int,
  writeLatencyNs: int,
  readBandwidthMBps: int,
  writeBandwidthMBps: int,
});
export const DistanceBody = z.strictObject({ fromNodeId: int, toNodeId: int, distance: int });

const hostFields = {
  name,
  description: z.string().default(''),
  labels: labels.default({}),
  nodes: z.array(HostNodeBody),
  performance: z.array(PerformanceBody).default([]),
  distances: z.array(DistanceBody).default([]),
  state: z.enum(HOST_STATES as [string, ...string[]]).default('READY'),
};
export const CreateHostBody = z.strictObject(hostFields);
export const UpdateHostBody = z.strictObject({
  description: hostFields.description.optional(),
  labels: labels.optional(),
  nodes: z.array(HostNodeBody).optional(),
  performance: z.array(PerformanceBody).optional(),
  distances: z.array(DistanceBody).optional(),
  state: z.enum(HOST_STATES as [string, ...string[]]).optional(),
  etag: z.string().optional(),
});

export const CreatePoolBody = z.strictObject({
  name,
  description: z.string().default(''),
  labels: labels.default({}),
  host: name,
  hostNodeId: int,
  daxDevicePath: z.string().optional(),
  capacityBytes: bytes,
  granuleBytes: bytes.default(128 * 1024 * 1024),
  memoryType: z.enum(POOL_MEMORY_TYPES as [string, ...string[]]).default('VOLATILE'),
  state: z.enum(POOL_STATES as [string, ...string[]]).default('ACTIVE'),
  /** false: device memory the CPU cannot address, never guest RAM. */
  cpuAddressable: z.boolean().optional(),
});
export const UpdatePoolBody = z.strictObject({
  description: z.string().optional(),
  labels: labels.optional(),
  state: z.enum(POOL_STATES as [string, ...string[]]).optional(),
  capacityBytes: bytes.optional(),
  etag: z.string().optional(),
});

export const GuestNodeBody = z.strictObject({ guestNodeId: int, vcpus: int, bootMemoryBytes: bytes, hostNodeId: int.optional() });
export const GuestMemoryBody = z.strictObject({
  memoryBlockSizeBytes: bytes.optional(),
  memmapOnMemory: z.boolean().optional(),
  onlinePolicy: z.enum(['CONTIG_ZONES', 'AUTO_MOVABLE']).optional(),
  autoMovableRatioPercent: int.optional(),
  autoMovableNumaAware: z.boolean().optional(),
  virtioMemForceBbm: z.boolean().optional(),
  virtioMemBbmBlockSizeBytes: bytes.optional(),
});
export const CreateVmBody = z.strictObject({
  name,
  description: z.string().default(''),
  labels: labels.default({}),
  host: name,
  kernelProfile: z.string(),
  guestMemory: GuestMemoryBody.default({}),
  guestNodes: z.array(GuestNodeBody),
  memorySlots: int.default(0),
  maxMemoryBytes: bytes,
  sparePciePorts: int.default(0),
});

export const CreateMemoryGroupBody = z.strictObject({
  name,
  pool: name,
  kind: z.enum(['STATIC', 'DYNAMIC']),
  sizeBytes: bytes.optional(),
  maxSizeBytes: bytes.optional(),
  blockSizeBytes: bytes.optional(),
  requestedBytes: bytes.optional(),
  onlineType: z.enum(GROUP_ONLINE_TYPES as [string, ...string[]]).default('ONLINE_MOVABLE'),
  guestNodeId: int.optional(),
});
export const ResizeMemoryGroupBody = z.strictObject({ requestedBytes: bytes, etag: z.string().optional() });
/** Transition and cancel methods take no fields but an optional etag. */
export const TransitionBody = z.strictObject({ etag: z.string().optional() });

export const CreateApiKeyBody = z.strictObject({ name: z.string(), role: z.enum(ROLES as [string, ...string[]]) });

export const ListQuery = z.strictObject({
  pageSize: z.string().regex(/^[0-9]+$/, 'must be a non-negative integer').transform(Number).optional(),
  pageToken: z.string().optional(),
  state: z.string().optional(),
  host: z.string().optional(),
  vm: z.string().optional(),
  requestId: z.string().optional(),
});

function fieldPath(path: readonly PropertyKey[]): string {
  return path.reduce<string>((acc, p) => (typeof p === 'number' ? `${acc}[${p}]` : acc ? `${acc}.${String(p)}` : String(p)), '');
}

/** Parses or throws INVALID_ARGUMENT naming every bad field. */
export function parseBody<T extends z.ZodType>(schema: T, body: unknown, root = ''): z.output<T> {
  if (body === undefined || body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw DomainError.invalid('INVALID_BODY', [{ field: root || 'body', description: 'must be a JSON object' }]);
  }
  const r = schema.safeParse(body);
  if (r.success) return r.data;
  const violations: FieldViolation[] = [];
  for (const issue of r.error.issues) {
    const base = fieldPath([...(root ? [root] : []), ...issue.path]);
    if (issue.code === 'unrecognized_keys') {
      for (const k of issue.keys) violations.push({ field: base ? `${base}.${k}` : k, description: 'is not a known field' });
    } else if (issue.code === 'invalid_type' && issue.input === undefined) {
      violations.push({ field: base, description: 'is required' });
    } else {
      violations.push({ field: base || 'body', description: issue.message });
    }
  }
  throw DomainError.invalid('INVALID_BODY', violations);
}

export function parseEnum<T extends string>(field: string, value: string | undefined, allowed: readonly T[]): T | undefined {
  if (value === undefined || value === '') return undefined;
  if (!allowed.includes(value as T)) throw DomainError.invalid('INVALID_QUERY', [{ field, description: `must be one of ${allowed.join(', ')}` }]);
  return value as T;
}
