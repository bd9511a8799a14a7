import { Body, Controller, Delete, Get, HttpCode, Inject, Param, Post, Req, Res } from '@nestjs/common';
import type { Request, Response } from 'express';
import { DomainError, OPERATION_STATES, VM_STATES, type CreateMemoryGroupInput, type VmSpec } from '#domain';
import { RUNTIME, type Runtime } from '../runtime';
import { etagOf, listQueryOf, requestIdOf } from './http-params';
import { callContext } from './request-context';
import { CreateMemoryGroupBody, CreateVmBody, parseBody, parseEnum, ResizeMemoryGroupBody, TransitionBody } from './schemas';

/**
 * AIP-136 custom methods: POST /v1/vms/{name}:start. The router sees one path
 * segment, so the method is split off here rather than by a route pattern.
 */
function customMethod(req: Request, segment: string, methods: readonly string[]): { name: string; method: string } {
  const i = segment.lastIndexOf(':');
  const method = i > 0 ? segment.slice(i + 1) : '';
  if (!methods.includes(method)) {
    throw new DomainError('NOT_FOUND', 'ROUTE_NOT_FOUND', `Cannot POST ${req.path}: the custom methods here are ${methods.map((m) => `:${m}`).join(', ')}`);
  }
  return { name: segment.slice(0, i), method };
}

/** Optional JSON body of a transition: an empty body is fine. */
function transitionEtag(req: Request, body: unknown): string | undefined {
  const parsed = body && typeof body === 'object' && Object.keys(body).length > 0 ? parseBody(TransitionBody, body) : {};
  return etagOf(req, parsed.etag);
}

@Controller('v1/vms')
export class VmsController {
  constructor(@Inject(RUNTIME) private readonly rt: Runtime) {}

  @Post()
  create(@Req() req: Request, @Body() body: unknown) {
    const spec = parseBody(CreateVmBody, body) as VmSpec;
    return this.rt.vms.create(callContext(req), spec, requestIdOf(req));
  }

  @Get()
  async list(@Req() req: Request) {
    const q = listQueryOf(req, ['pageSize', 'pageToken', 'state', 'host']);
    const page = await this.rt.vms.list(callContext(req), {
      pageSize: q.pageSize,
      pageToken: q.pageToken,
      ...(q.host ? { host: q.host } : {}),
      state: parseEnum('state', q.state, VM_STATES),
    });
    return { vms: page.items, nextPageToken: page.nextPageToken, totalSize: page.totalSize };
  }

  @Get(':name')
  get(@Req() req: Request, @Param('name') name: string) {
    return this.rt.vms.get(callContext(req), name);
  }

  @Delete(':name')
  @HttpCode(204)
  async remove(@Req() req: Request, @Param('name') name: string) {
    await this.rt.vms.delete(callContext(req), name, etagOf(req), requestIdOf(req));
  }

  /** :start and :stop answer 202 with the Operation that carries the transition out. */
  @Post(':action')
  @HttpCode(202)
  transition(@Req() req: Request, @Param('action') action: string, @Body() body: unknown) {
    const { name, method } = customMethod(req, action, ['start', 'stop']);
    const etag = transitionEtag(req, body);
    return method === 'start'
      ? this.rt.vms.start(callContext(req), name, etag, requestIdOf(req))
      : this.rt.vms.stop(callContext(req), name, etag, requestIdOf(req));
  }

  @Post(':vm/memory-groups')
  createGroup(@Req() req: Request, @Param('vm') vm: string, @Body() body: unknown) {
    const input = { ...parseBody(CreateMemoryGroupBody, body), vm } as CreateMemoryGroupInput;
    return this.rt.memoryGroups.create(callContext(req), input, requestIdOf(req));
  }

  @Get(':vm/memory-groups')
  async listGroups(@Req() req: Request, @Param('vm') vm: string) {
    const q = listQueryOf(req, ['pageSize', 'pageToken']);
    const page = await this.rt.memoryGroups.list(callContext(req), vm, { pageSize: q.pageSize, pageToken: q.pageToken });
    return { memoryGroups: page.items, nextPageToken: page.nextPageToken, totalSize: page.totalSize };
  }

  @Get(':vm/memory-groups/:group')
  getGroup(@Req() req: Request, @Param('vm') vm: string, @Param('group') group: string) {
    return this.rt.memoryGroups.get(callContext(req), vm, group);
  }

  /** :resize (DYNAMIC groups): `{"requestedBytes": …}`. */
  @Post(':vm/memory-groups/:action')
  @HttpCode(200)
  resizeGroup(@Req() req: Request, @Param('vm') vm: string, @Param('action') action: string, @Body() body: unknown) {
    const { name } = customMethod(req, action, ['resize']);
    const { requestedBytes, etag } = parseBody(ResizeMemoryGroupBody, body);
    return this.rt.memoryGroups.resize(callContext(req), vm, name, requestedBytes, etagOf(req, etag), requestIdOf(req));
  }

  /** 204 when the group is gone; 202 with the group when an UNPLUG operation removes it from the running guest. */
  @Delete(':vm/memory-groups/:group')
  async removeGroup(@Req() req: Request, @Res({ passthrough: true }) res: Response, @Param('vm') vm: string, @Param('group') group: string) {
    const r = await this.rt.memoryGroups.delete(callContext(req), vm, group, etagOf(req), requestIdOf(req));
    if (r.deleted) {
      res.status(204);
      return undefined;
    }
    res.status(202);
    return r.memoryGroup;
  }
}

@Controller('v1/operations')
export class OperationsController {
  constructor(@Inject(RUNTIME) private readonly rt: Runtime) {}

  @Get()
  async list(@Req() req: Request) {
    const q = listQueryOf(req, ['pageSize', 'pageToken', 'state', 'vm']);
    const page = await this.rt.operations.list(callContext(req), {
      pageSize: q.pageSize,
      pageToken: q.pageToken,
      ...(q.vm ? { vm: q.vm } : {}),
      state: parseEnum('state', q.state, OPERATION_STATES),
    });
    return { operations: page.items, nextPageToken: page.nextPageToken, totalSize: page.totalSize };
  }

  @Get(':name')
  get(@Req() req: Request, @Param('name') name: string) {
    return this.rt.operations.get(callContext(req), name);
  }

  /** :cancel — PENDING only; puts the desired state back and returns reserved capacity. */
  @Post(':action')
  @HttpCode(200)
  cancel(@Req() req: Request, @Param('action') action: string, @Body() body: unknown) {
    const { name } = customMethod(req, action, ['cancel']);
    if (body && typeof body === 'object' && Object.keys(body).length > 0) parseBody(TransitionBody.pick({}), body);
    return this.rt.operations.cancel(callContext(req), name, requestIdOf(req));
  }
}

@Controller('v1/pools')
export class PoolLedgerController {
  constructor(@Inject(RUNTIME) private readonly rt: Runtime) {}

  /** Who holds which extent of the pool, the largest free extent and the fragmentation. */
  @Get(':name/ledger')
  ledger(@Req() req: Request, @Param('name') name: string) {
    return this.rt.ledger.poolLedger(callContext(req), name);
  }
}
