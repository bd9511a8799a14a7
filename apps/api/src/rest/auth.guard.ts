import { Inject, Injectable, SetMetadata, type CanActivate, type ExecutionContext } from '@nestjs/common';
import { Reflector } from '@nestjs/core';
import type { Request } from 'express';
import { RUNTIME, type Runtime } from '../runtime';
import { setPrincipal } from './request-context';

const PUBLIC = 'memplane:public';
/** Routes anyone may call: health, and the API's own documentation. */
export const Public = () => SetMetadata(PUBLIC, true);

@Injectable()
export class AuthGuard implements CanActivate {
  constructor(
    @Inject(RUNTIME) private readonly runtime: Runtime,
    @Inject(Reflector) private readonly reflector: Reflector,
  ) {}

  async canActivate(context: ExecutionContext): Promise<boolean> {
    if (this.reflector.getAllAndOverride<boolean>(PUBLIC, [context.getHandler(), context.getClass()])) return true;
    const req = context.switchToHttp().getRequest<Request>();
    // Roles are checked by the application service, the same way for every transport.
    setPrincipal(req, await this.runtime.apiKeys.authenticate(req.header('authorization')));
    return true;
  }
}
