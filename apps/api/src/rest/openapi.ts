import { Controller, Get, Res } from '@nestjs/common';
import type { Response } from 'express';
import { z } from 'zod';
import { Public } from './auth.guard';
import { CreateApiKeyBody, CreateHostBody, CreatePoolBody, DistanceBody, HostNodeBody, PerformanceBody, UpdateHostBody, UpdatePoolBody } from './schemas';

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

export function buildOpenApiDocument(): Record<string, unknown> {
  return {
    openapi: '3.1.0',
    info: { title: 'Memplane', version: '1', description: 'Control plane for CXL memory pools and VM memory groups. Every call but /healthz and /readyz needs `Authorization: Bearer <api key>`.' },
    components: {
      securitySchemes: { apiKey: { type: 'http', scheme: 'bearer' } },
      schemas: { Host: json(HostResource), Pool: json(PoolResource), Problem: json(Problem) },
    },
    security: [{ apiKey: [] }],
    paths: {
      ...crud('hosts', 'Host', CreateHostBody, UpdateHostBody, 'hosts', ['state']),
      ...crud('pools', 'Pool', CreatePoolBody, UpdatePoolBody, 'pools', ['host', 'state']),
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
