import { z } from 'zod';

/**
 * The automation intake (`memplane-requests`): versioned JSON requests. The JSON Schema
 * users validate against is libs/queue/schemas/memplane-request.v1.schema.json, kept equal
 * to this definition by a test. Each job is answered with the operation id as its return
 * value; a bad request fails the job with the same code, reason and field violations the
 * APIs give.
 */
const name = z.string().min(1).max(63);
const bytes = z.number().int().nonnegative();
const requestId = z.string().min(1).max(128).optional();

export const RequestV1 = z.discriminatedUnion('action', [
  z.strictObject({ version: z.literal(1), action: z.literal('vm.start'), requestId, vm: name }),
  z.strictObject({ version: z.literal(1), action: z.literal('vm.stop'), requestId, vm: name }),
  z.strictObject({
    version: z.literal(1),
    action: z.literal('group.create'),
    requestId,
    vm: name,
    group: z.strictObject({
      name,
      pool: name,
      kind: z.enum(['STATIC', 'DYNAMIC']),
      sizeBytes: bytes.optional(),
      maxSizeBytes: bytes.optional(),
      blockSizeBytes: bytes.optional(),
      requestedBytes: bytes.optional(),
      onlineType: z.enum(['ONLINE_MOVABLE', 'ONLINE_KERNEL', 'AUTO']).default('ONLINE_MOVABLE'),
      guestNodeId: z.number().int().nonnegative().optional(),
    }),
  }),
  z.strictObject({ version: z.literal(1), action: z.literal('group.resize'), requestId, vm: name, group: name, requestedBytes: bytes }),
  z.strictObject({ version: z.literal(1), action: z.literal('group.delete'), requestId, vm: name, group: name }),
]);
export type RequestV1 = z.output<typeof RequestV1>;

/** What a request job returns: the operation that carries it out, or none when it applied at once (VM not running). */
export interface RequestResult {
  operation: string | null;
  applied: boolean;
}

export function requestJsonSchema(): Record<string, unknown> {
  return {
    $schema: 'https://json-schema.org/draft/2020-12/schema',
    $id: 'https://memplane.dev/schemas/memplane-request.v1.schema.json',
    title: 'Memplane automation request, version 1 (queue memplane-requests)',
    ...(z.toJSONSchema(RequestV1, { io: 'input' }) as Record<string, unknown>),
  };
}
