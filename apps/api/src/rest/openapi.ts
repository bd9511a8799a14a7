import { Controller, Get, Res } from '@nestjs/common';
import type { Response } from 'express';
import { z } from 'zod';
import { Public } from './auth.guard';
import { PreviewTopologyBody, TopologyResource } from './topology.controller';
import { GROUP_OBSERVED_STATES, MEMORY_DRIFT_REASONS, MEMORY_DRIFT_STATES, OPERATION_KINDS, OPERATION_STATES, VM_STATES } from '#domain';
import {
  CreateApiKeyBody,
  CreateHostBody,
  CreateMemoryGroupBody,
  CreatePoolBody,
  CreateVmBody,
  DistanceBody,
  GuestMemoryBody,
  GuestNodeBody,
  HostNodeBody,
  PerformanceBody,
  ResizeMemoryGroupBody,
  TransitionBody,
  UpdateHostBody,
  UpdatePoolBody,
} from './schemas';

/**
 * The OpenAPI document is built from the same zod schemas that validate
 * requests, so the two cannot drift apart.
 */
const json = (s: z.ZodType) => z.toJSONSchema(s, { io: 'input', unrepresentable: 'any' }) as Record<string, unknown>;

const timestamps = { createTime: z.iso.datetime(), updateTime: z.iso.datetime(), etag: z.string(), uid: z.uuid() };
const HostResource = z.object({
  ...CreateHostBody.shape,
  nodes: z.array(HostNodeBody),
  performance: z.array(PerformanceBody),
  distances: z.array(DistanceBody),
  ...timestamps,
});
const PoolResource = z.object({ ...CreatePoolBody.shape, allocatedBytes: z.number().int(), freeBytes: z.number().int(), ...timestamps });
const intz = z.number().int();
const GuestUnit = z.object({ mode: z.enum(['DIMM', 'SBM', 'BBM']), unitBytes: intz, memoryGroupUnitBytes: intz });
const MEMMAP = ['SELF_HOSTED', 'DISABLED', 'NOT_REQUESTED_BY_DRIVER', 'RANGE_NOT_ONE_BLOCK', 'BLOCK_SIZE_UNSUITABLE'] as const;
const MemoryDrift = z
  .object({
    state: z.enum(MEMORY_DRIFT_STATES as [string, ...string[]]),
    conditions: z.array(
      z.object({
        reason: z.enum(MEMORY_DRIFT_REASONS as [string, ...string[]]),
        memoryGroup: z.string().optional().describe('absent for a device or backend no group accounts for'),
        qemuId: z.string().optional().describe('the QEMU device or object id'),
        message: z.string(),
        expectedBytes: intz.optional(),
        observedBytes: intz.optional(),
        expectedBlocks: intz.optional(),
        observedBlocks: intz.optional(),
        expectedZone: z.string().optional(),
        observedZone: z.string().optional(),
      }),
    ),
    checkTime: z.iso.datetime().describe('when the last check began observing QEMU and the guest'),
  })
  .describe('output only: the last drift check while the VM runs and no operation changes it; reported, never repaired by itself');
const MemoryGroupResource = z.object({
  ...CreateMemoryGroupBody.shape,
  vm: z.string(),
  uid: z.uuid(),
  effectiveGuestNodeId: intz.describe('guestNodeId, or the CPU-less guest node the topology compiler will use for the pool'),
  desiredState: z.enum(['PRESENT', 'ABSENT']),
  heldBytes: intz.describe('pool bytes held, whole granules'),
  hotplugged: z.boolean(),
  guestUnit: GuestUnit,
  usableBytes: intz,
  memmapPlacement: z.enum(MEMMAP),
  vmemmapBytes: intz,
  state: z.enum(GROUP_OBSERVED_STATES as [string, ...string[]]).describe('observed, output only'),
  pluggedBytes: intz,
  onlineBlocks: intz,
  operation: z.string().optional().describe('the PENDING or RUNNING operation bringing the guest to the desired state'),
  memoryDrift: MemoryDrift.optional().describe('the VM\'s last drift check, with the conditions about this group'),
  etag: z.string(),
  createTime: z.iso.datetime(),
  updateTime: z.iso.datetime(),
});
const MovableRatio = z.object({ nodeId: intz.nullable(), kernelEarlyBytes: intz, movableBytes: intz, limitBytes: intz, ratioPercent: intz.nullable(), exceeds: z.boolean() });
const VmMemoryReport = z.object({
  kernelProfile: z.string(),
  memoryBlockSizeBytes: intz,
  memmapOnMemory: z.boolean(),
  onlinePolicy: z.enum(['CONTIG_ZONES', 'AUTO_MOVABLE']),
  autoMovableRatioPercent: intz,
  bootMemoryBytes: intz,
  totalMemoryBytes: intz,
  maxMemoryBytes: intz,
  staticGroupCount: intz,
  memorySlots: intz,
  hotpluggedDynamicGroupCount: intz,
  sparePciePorts: intz,
  heldBytes: intz,
  groups: z.array(
    z.object({
      name: z.string(),
      effectiveGuestNodeId: intz,
      guestUnit: GuestUnit,
      presentBytes: intz,
      usableBytes: intz,
      memmapPlacement: z.enum(MEMMAP),
      vmemmapBytes: intz,
      zone: z.enum(['MOVABLE', 'KERNEL', 'MIXED', 'NONE']),
      movableBytes: intz,
      kernelBytes: intz,
      decidedBy: z.enum(['EXPLICIT', 'CONTIG_ZONES', 'AUTO_MOVABLE']),
    }),
  ),
  global: MovableRatio,
  nodes: z.array(MovableRatio),
  warnings: z.array(z.object({ code: z.string(), message: z.string(), groupId: z.string().optional(), guestNodeId: intz.optional() })),
});
const VmResource = z.object({
  ...CreateVmBody.shape,
  guestMemory: GuestMemoryBody,
  guestNodes: z.array(GuestNodeBody),
  state: z.enum(VM_STATES as [string, ...string[]]).describe('output only; changes through :start and :stop'),
  memoryReport: VmMemoryReport,
  memoryDrift: MemoryDrift.optional().describe('absent until the first check after the VM started running'),
  ...timestamps,
});
const OperationResource = z.object({
  name: z.uuid(),
  vm: z.string(),
  memoryGroup: z.string().optional(),
  kind: z.enum(OPERATION_KINDS as [string, ...string[]]),
  state: z.enum(OPERATION_STATES as [string, ...string[]]),
  steps: z.array(z.object({ name: z.string(), state: z.enum(['PENDING', 'DONE', 'FAILED']) })),
  progressPercent: intz,
  attempts: intz,
  error: z.object({ code: z.string(), reason: z.string(), message: z.string() }).optional(),
  requestId: z.string().optional(),
  principal: z.string(),
  createTime: z.iso.datetime(),
  updateTime: z.iso.datetime(),
  startTime: z.iso.datetime().optional(),
  endTime: z.iso.datetime().optional(),
});
const PoolLedgerResource = z.object({
  pool: z.string(),
  capacityBytes: intz,
  granuleBytes: intz,
  allocatedBytes: intz,
  freeBytes: intz,
  largestFreeBytes: intz,
  freeExtentCount: intz,
  fragmentationBasisPoints: intz.describe('1 − largest free / free, in basis points'),
  extents: z.array(z.object({ vm: z.string(), memoryGroup: z.string(), offsetBytes: intz, sizeBytes: intz })),
  freeExtents: z.array(z.object({ offsetBytes: intz, sizeBytes: intz })),
});
const Problem = z.object({
  type: z.string(),
  title: z.string(),
  status: z.number().int(),
  detail: z.string(),
  code: z.string(),
  reason: z.string(),
  violations: z.array(z.object({ field: z.string(), description: z.string() })).optional(),
  metadata: z.record(z.string(), z.string()).optional(),
  instance: z.string().optional(),
  correlationId: z.string().optional(),
});

const problemResponses = Object.fromEntries(
  [
    ['400', 'Invalid argument (field violations say which)'],
    ['401', 'Missing or invalid API key'],
    ['403', "The key's role does not allow this"],
    ['404', 'Not found'],
    ['409', 'Conflict: already exists, failed precondition or aborted'],
    ['412', 'Etag mismatch'],
    ['413', 'Body too large'],
    ['415', 'Body is not application/json'],
  ].map(([code, description]) => [code, { description, content: { 'application/problem+json': { schema: { $ref: '#/components/schemas/Problem' } } } }]),
);

const pageParams = [
  { name: 'pageSize', in: 'query', schema: { type: 'integer', minimum: 0, maximum: 500 } },
  { name: 'pageToken', in: 'query', schema: { type: 'string' } },
];
const requestId = { name: 'requestId', in: 'query', description: 'Idempotency key (AIP-155); the Idempotency-Key header works too', schema: { type: 'string' } };
const ifMatch = { name: 'If-Match', in: 'header', description: 'Etag from a previous read (AIP-154)', schema: { type: 'string' } };
const updateMask = { name: 'updateMask', in: 'query', description: 'Comma-separated fields to change; default: the fields sent', schema: { type: 'string' } };

function crud(collection: string, resource: string, create: z.ZodType, update: z.ZodType, listKey: string, filters: string[]) {
  const ref = { $ref: `#/components/schemas/${resource}` };
  const ok = (schema: unknown) => ({ description: 'OK', content: { 'application/json': { schema } } });
  const name = { name: 'name', in: 'path', required: true, schema: { type: 'string' } };
  return {
    [`/v1/${collection}`]: {
      post: { tags: [resource], requestBody: { required: true, content: { 'application/json': { schema: json(create) } } }, parameters: [requestId], responses: { '200': ok(ref), ...problemResponses } },
      get: {
        tags: [resource],
        parameters: [...pageParams, ...filters.map((f) => ({ name: f, in: 'query', schema: { type: 'string' } }))],
        responses: { '200': ok({ type: 'object', properties: { [listKey]: { type: 'array', items: ref }, nextPageToken: { type: 'string' }, totalSize: { type: 'integer' } } }), ...problemResponses },
      },
    },
    [`/v1/${collection}/{name}`]: {
      get: { tags: [resource], parameters: [name], responses: { '200': ok(ref), ...problemResponses } },
      patch: { tags: [resource], parameters: [name, updateMask, ifMatch, requestId], requestBody: { required: true, content: { 'application/json': { schema: json(update) } } }, responses: { '200': ok(ref), ...problemResponses } },
      delete: { tags: [resource], parameters: [name, ifMatch, requestId], responses: { '204': { description: 'Deleted' }, ...problemResponses } },
    },
  };
}

const ref = (name: string) => ({ $ref: `#/components/schemas/${name}` });
const ok = (schema: unknown, description = 'OK') => ({ description, content: { 'application/json': { schema } } });
const pathParam = (name: string) => ({ name, in: 'path', required: true, schema: { type: 'string' } });
const body = (schema: z.ZodType) => ({ required: true, content: { 'application/json': { schema: json(schema) } } });
const listOf = (key: string, item: string) => ok({ type: 'object', properties: { [key]: { type: 'array', items: ref(item) }, nextPageToken: { type: 'string' }, totalSize: { type: 'integer' } } });

function vmPaths() {
  const query = (names: string[]) => names.map((n) => ({ name: n, in: 'query', schema: { type: 'string' } }));
  return {
    '/v1/vms': {
      post: { tags: ['Vm'], requestBody: body(CreateVmBody), parameters: [requestId], responses: { '201': ok(ref('Vm'), 'Created'), ...problemResponses } },
      get: { tags: ['Vm'], parameters: [...pageParams, ...query(['host', 'state'])], responses: { '200': listOf('vms', 'Vm'), ...problemResponses } },
    },
    '/v1/vms/{name}': {
      get: { tags: ['Vm'], parameters: [pathParam('name')], responses: { '200': ok(ref('Vm')), ...problemResponses } },
      delete: {
        tags: ['Vm'],
        description: 'Only a DEFINED, STOPPED or FAILED VM; its memory groups go with it and their extents return to their pools.',
        parameters: [pathParam('name'), ifMatch, requestId],
        responses: { '204': { description: 'Deleted' }, ...problemResponses },
      },
    },
    '/v1/vms/{name}:start': {
      post: {
        tags: ['Vm'],
        description: 'AIP-216 transition: DEFINED, STOPPED or FAILED → STARTING, carried out by the returned START operation.',
        parameters: [pathParam('name'), ifMatch, requestId],
        requestBody: { required: false, content: { 'application/json': { schema: json(TransitionBody) } } },
        responses: { '202': ok(ref('Operation'), 'Accepted'), ...problemResponses },
      },
    },
    '/v1/vms/{name}:stop': {
      post: {
        tags: ['Vm'],
        description: 'RUNNING → STOPPING, carried out by the returned STOP operation.',
        parameters: [pathParam('name'), ifMatch, requestId],
        requestBody: { required: false, content: { 'application/json': { schema: json(TransitionBody) } } },
        responses: { '202': ok(ref('Operation'), 'Accepted'), ...problemResponses },
      },
    },
    '/v1/vms/{vm}/memory-groups': {
      post: {
        tags: ['MemoryGroup'],
        description:
          'Reserves the group in its pool (STATIC: its size; DYNAMIC: its requested size, rounded up to the granule). 429 POOL_CAPACITY_EXHAUSTED when the pool cannot hold it; on a STARTING or RUNNING VM a PLUG operation is recorded.',
        parameters: [pathParam('vm'), requestId],
        requestBody: body(CreateMemoryGroupBody),
        responses: { '201': ok(ref('MemoryGroup'), 'Created'), '429': { description: 'The pool cannot hold it' }, ...problemResponses },
      },
      get: { tags: ['MemoryGroup'], parameters: [pathParam('vm'), ...pageParams], responses: { '200': listOf('memoryGroups', 'MemoryGroup'), ...problemResponses } },
    },
    '/v1/vms/{vm}/memory-groups/{group}': {
      get: { tags: ['MemoryGroup'], parameters: [pathParam('vm'), pathParam('group')], responses: { '200': ok(ref('MemoryGroup')), ...problemResponses } },
      delete: {
        tags: ['MemoryGroup'],
        parameters: [pathParam('vm'), pathParam('group'), ifMatch, requestId],
        responses: { '204': { description: 'Deleted; extents released' }, '202': ok(ref('MemoryGroup'), 'An UNPLUG operation removes it from the running guest'), ...problemResponses },
      },
    },
    '/v1/vms/{vm}/memory-groups/{group}:resize': {
      post: {
        tags: ['MemoryGroup'],
        description: "A DYNAMIC group's new requested size; growth is refused (429) when the pool cannot cover it.",
        parameters: [pathParam('vm'), pathParam('group'), ifMatch, requestId],
        requestBody: body(ResizeMemoryGroupBody),
        responses: { '200': ok(ref('MemoryGroup')), '429': { description: 'The pool cannot cover the growth' }, ...problemResponses },
      },
    },
    '/v1/operations': {
      get: { tags: ['Operation'], description: 'Newest first.', parameters: [...pageParams, ...query(['vm', 'state'])], responses: { '200': listOf('operations', 'Operation'), ...problemResponses } },
    },
    '/v1/operations/{name}': { get: { tags: ['Operation'], parameters: [pathParam('name')], responses: { '200': ok(ref('Operation')), ...problemResponses } } },
    '/v1/operations/{name}:cancel': {
      post: {
        tags: ['Operation'],
        description: 'PENDING operations only: the desired state goes back and reserved capacity returns to the pool.',
        parameters: [pathParam('name'), requestId],
        responses: { '200': ok(ref('Operation')), ...problemResponses },
      },
    },
    '/v1/pools/{name}/ledger': {
      get: { tags: ['Pool'], parameters: [pathParam('name')], responses: { '200': ok(ref('PoolLedger')), ...problemResponses } },
    },
  };
}

function topologyPaths() {
  return {
    '/v1/vms/{vm}/topology': {
      get: {
        tags: ['Topology'],
        description:
          "The VM's guest topology as the topology compiler derives it from its host and its PRESENT memory groups: guest nodes, SLIT distances, HMAT, predicted memory tiers and demotion targets, the QEMU argv, libvirt domain XML and guest kernel command line.",
        parameters: [pathParam('vm')],
        responses: { '200': ok(ref('Topology')), ...problemResponses },
      },
    },
    '/v1/topology:preview': {
      post: {
        tags: ['Topology'],
        description:
          'What-if: the topology of a hypothetical VM (the fields of POST /v1/vms, name optional) on an existing host with the given memory groups (the fields of POST /v1/vms/{vm}/memory-groups), checked like those calls. Nothing is stored or reserved; 409 with the compiler\'s reason when QEMU or the guest kernel could not represent the topology.',
        requestBody: body(PreviewTopologyBody),
        responses: { '200': ok(ref('Topology')), ...problemResponses },
      },
    },
  };
}

export function buildOpenApiDocument(): Record<string, unknown> {
  return {
    openapi: '3.1.0',
    info: { title: 'Memplane', version: '1', description: 'Control plane for CXL memory pools and VM memory groups. Every call but /healthz and /readyz needs `Authorization: Bearer <api key>`.' },
    components: {
      securitySchemes: { apiKey: { type: 'http', scheme: 'bearer' } },
      schemas: {
        Host: json(HostResource),
        Pool: json(PoolResource),
        PoolLedger: json(PoolLedgerResource),
        Topology: json(TopologyResource),
        Vm: json(VmResource),
        MemoryGroup: json(MemoryGroupResource),
        Operation: json(OperationResource),
        Problem: json(Problem),
      },
    },
    security: [{ apiKey: [] }],
    paths: {
      ...crud('hosts', 'Host', CreateHostBody, UpdateHostBody, 'hosts', ['state']),
      ...crud('pools', 'Pool', CreatePoolBody, UpdatePoolBody, 'pools', ['host', 'state']),
      ...vmPaths(),
      ...topologyPaths(),
      '/v1/api-keys': {
        post: { tags: ['ApiKey'], requestBody: { required: true, content: { 'application/json': { schema: json(CreateApiKeyBody) } } }, responses: { '200': { description: 'The key, with its secret shown this once' }, ...problemResponses } },
        get: { tags: ['ApiKey'], responses: { '200': { description: 'Keys (never their secrets)' }, ...problemResponses } },
      },
      '/v1/api-keys/{id}': { delete: { tags: ['ApiKey'], parameters: [{ name: 'id', in: 'path', required: true, schema: { type: 'string' } }], responses: { '204': { description: 'Revoked' }, ...problemResponses } } },
      '/healthz': { get: { security: [], responses: { '200': { description: 'The process is up' } } } },
      '/readyz': { get: { security: [], responses: { '200': { description: 'Postgres and Redis reachable' }, '503': { description: 'A dependency is down' } } } },
    },
  };
}

const DOCS_HTML = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Memplane API</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css"></head>
<body><div id="ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({ url: '/openapi.json', dom_id: '#ui', persistAuthorization: true });</script>
</body></html>`;

@Controller()
export class OpenApiController {
  private readonly document = buildOpenApiDocument();

  @Public()
  @Get('openapi.json')
  openapi() {
    return this.document;
  }

  @Public()
  @Get('docs')
  docs(@Res() res: Response) {
    res.type('text/html').send(DOCS_HTML);
  }
}
