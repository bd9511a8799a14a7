import { Body, Controller, Delete, Get, HttpCode, Inject, Param, Post, Req, Res } from '@nestjs/common';
import type { Request, Response } from 'express';
import { type Role } from '#domain';
import { RUNTIME, type Runtime } from '../runtime';
import { Public } from './auth.guard';
import { requestIdOf } from './http-params';
import { callContext } from './request-context';
import { CreateApiKeyBody, parseBody } from './schemas';

@Controller('v1/api-keys')
export class ApiKeysController {
  constructor(@Inject(RUNTIME) private readonly rt: Runtime) {}

  /** The secret is in this response only; it is stored hashed. */
  @Post()
  async create(@Req() req: Request, @Body() body: unknown) {
    const input = parseBody(CreateApiKeyBody, body) as { name: string; role: Role };
    const { key, secret } = await this.rt.apiKeys.create(callContext(req), input, requestIdOf(req));
    return { ...key, secret };
  }

  @Get()
  async list(@Req() req: Request) {
    return { apiKeys: await this.rt.apiKeys.list(callContext(req)) };
  }

  @Delete(':id')
  @HttpCode(204)
  async revoke(@Req() req: Request, @Param('id') id: string) {
    await this.rt.apiKeys.revoke(callContext(req), id);
  }
}

@Controller()
export class HealthController {
  constructor(@Inject(RUNTIME) private readonly rt: Runtime) {}

  /** The process is up. */
  @Public()
  @Get('healthz')
  health() {
    return { status: 'ok' };
  }

  /** Postgres and Redis answer. */
  @Public()
  @Get('readyz')
  async ready(@Res() res: Response) {
    const r = await this.rt.readiness();
    res.status(r.ready ? 200 : 503).json({ status: r.ready ? 'ok' : 'unavailable', postgres: r.postgres, redis: r.redis });
  }
}
