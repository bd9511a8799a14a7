import { Body, Controller, Delete, Get, HttpCode, Inject, Param, Patch, Post, Req } from '@nestjs/common';
import type { Request } from 'express';
import { HOST_STATES, POOL_STATES, type HostSpec, type PoolSpec } from '#domain';
import { RUNTIME, type Runtime } from '../runtime';
import { etagOf, listQueryOf, requestIdOf, updateMaskOf } from './http-params';
import { callContext } from './request-context';
import { CreateHostBody, CreatePoolBody, parseBody, parseEnum, UpdateHostBody, UpdatePoolBody } from './schemas';

@Controller('v1/hosts')
export class HostsController {
  constructor(@Inject(RUNTIME) private readonly rt: Runtime) {}

  @Post()
  create(@Req() req: Request, @Body() body: unknown) {
    const spec = parseBody(CreateHostBody, body) as HostSpec;
    return this.rt.hosts.create(callContext(req), spec, requestIdOf(req));
  }

  @Get()
  async list(@Req() req: Request) {
    const q = listQueryOf(req, ['pageSize', 'pageToken', 'state']);
    const page = await this.rt.hosts.list(callContext(req), { pageSize: q.pageSize, pageToken: q.pageToken, state: parseEnum('state', q.state, HOST_STATES) });
    return { hosts: page.items, nextPageToken: page.nextPageToken, totalSize: page.totalSize };
  }

  @Get(':name')
  get(@Req() req: Request, @Param('name') name: string) {
    return this.rt.hosts.get(callContext(req), name);
  }

  @Patch(':name')
  update(@Req() req: Request, @Param('name') name: string, @Body() body: unknown) {
    const { etag, ...patch } = parseBody(UpdateHostBody, body);
    return this.rt.hosts.update(callContext(req), name, patch as Partial<HostSpec>, updateMaskOf(req), etagOf(req, etag), requestIdOf(req));
  }

  @Delete(':name')
  @HttpCode(204)
  async remove(@Req() req: Request, @Param('name') name: string) {
    await this.rt.hosts.delete(callContext(req), name, etagOf(req), requestIdOf(req));
  }
}

@Controller('v1/pools')
export class PoolsController {
  constructor(@Inject(RUNTIME) private readonly rt: Runtime) {}

  @Post()
  create(@Req() req: Request, @Body() body: unknown) {
    const spec = parseBody(CreatePoolBody, body) as PoolSpec;
    return this.rt.pools.create(callContext(req), spec, requestIdOf(req));
  }

  @Get()
  async list(@Req() req: Request) {
    const q = listQueryOf(req, ['pageSize', 'pageToken', 'state', 'host']);
    const page = await this.rt.pools.list(callContext(req), {
      pageSize: q.pageSize,
      pageToken: q.pageToken,
      ...(q.host ? { host: q.host } : {}),
      state: parseEnum('state', q.state, POOL_STATES),
    });
    return { pools: page.items, nextPageToken: page.nextPageToken, totalSize: page.totalSize };
  }

  @Get(':name')
  get(@Req() req: Request, @Param('name') name: string) {
    return this.rt.pools.get(callContext(req), name);
  }

  @Patch(':name')
  update(@Req() req: Request, @Param('name') name: string, @Body() body: unknown) {
    const { etag, ...patch } = parseBody(UpdatePoolBody, body);
    return this.rt.pools.update(callContext(req), name, patch as Partial<PoolSpec>, updateMaskOf(req), etagOf(req, etag), requestIdOf(req));
  }

  @Delete(':name')
  @HttpCode(204)
  async remove(@Req() req: Request, @Param('name') name: string) {
    await this.rt.pools.delete(callContext(req), name, etagOf(req), requestIdOf(req));
  }
}
