import { randomUUID } from 'node:crypto';
import type { NextFunction, Request, Response } from 'express';
import type { Principal } from '#domain';
import type { CallContext } from '#application';

interface MemplaneRequest extends Request {
  memplane?: { correlationId: string; principal?: Principal };
}

const CORRELATION = /^[A-Za-z0-9._:-]{1,128}$/;

/** Gives every request a correlation id (the caller's X-Request-Id if sane) echoed in the response. */
export function correlationMiddleware(req: Request, res: Response, next: NextFunction): void {
  const given = req.header('x-request-id');
  const correlationId = given && CORRELATION.test(given) ? given : randomUUID();
  (req as MemplaneRequest).memplane = { correlationId };
  res.setHeader('X-Request-Id', correlationId);
  next();
}

export function correlationIdOf(req: Request): string {
  return (req as MemplaneRequest).memplane?.correlationId ?? 'unknown';
}

export function setPrincipal(req: Request, principal: Principal): void {
  const m = (req as MemplaneRequest).memplane ?? { correlationId: randomUUID() };
  m.principal = principal;
  (req as MemplaneRequest).memplane = m;
}

export function callContext(req: Request): CallContext {
  const m = (req as MemplaneRequest).memplane;
  if (!m?.principal) throw new Error('callContext used on a route without authentication');
  return { principal: m.principal, transport: 'rest', correlationId: m.correlationId };
}
