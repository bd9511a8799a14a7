import { ArgumentsHost, Catch, HttpException, Logger, type ExceptionFilter } from '@nestjs/common';
import type { Request, Response } from 'express';
import { DomainError, isDomainError } from '#domain';
import { problemOf } from './problem';
import { correlationIdOf } from './request-context';

/** Body-parser and friends throw errors with an HTTP status; they are the client's mistakes, told as such. */
function fromHttpLayer(thrown: unknown): DomainError | undefined {
  // Nest wraps body-parser's errors in an HttpException; the original says what went wrong.
  const cause = thrown instanceof HttpException ? (thrown as { cause?: unknown }).cause : undefined;
  const e = cause && typeof (cause as { type?: unknown }).type === 'string' ? cause : thrown;
  const err = e as { status?: number; statusCode?: number; type?: string; message?: string; expose?: boolean };
  const status = err?.status ?? err?.statusCode;
  if (e instanceof HttpException) {
    const s = e.getStatus();
    if (s === 404) return new DomainError('NOT_FOUND', 'ROUTE_NOT_FOUND', e.message);
    if (s === 405) return new DomainError('INVALID_ARGUMENT', 'METHOD_NOT_ALLOWED', e.message);
    if (s >= 400 && s < 500) return new DomainError('INVALID_ARGUMENT', 'BAD_REQUEST', e.message);
    return undefined;
  }
  if (typeof status !== 'number' || status < 400 || status >= 500) return undefined;
  switch (err.type) {
    case 'entity.parse.failed':
      return DomainError.invalid('MALFORMED_JSON', [{ field: 'body', description: `is not valid JSON: ${err.message}` }]);
    case 'entity.too.large':
      return new DomainError('INVALID_ARGUMENT', 'BODY_TOO_LARGE', `the request body is larger than the ${String((err as { limit?: number }).limit ?? '')} bytes allowed`);
    case 'encoding.unsupported':
    case 'charset.unsupported':
      return new DomainError('INVALID_ARGUMENT', 'UNSUPPORTED_ENCODING', err.message ?? 'unsupported body encoding');
    default:
      return new DomainError('INVALID_ARGUMENT', 'BAD_REQUEST', err.message ?? 'bad request');
  }
}

@Catch()
export class ProblemFilter implements ExceptionFilter {
  private readonly logger = new Logger('rest');

  catch(exception: unknown, host: ArgumentsHost): void {
    const ctx = host.switchToHttp();
    const req = ctx.getRequest<Request>();
    const res = ctx.getResponse<Response>();
    const correlationId = correlationIdOf(req);
    let error: DomainError;
    if (isDomainError(exception)) error = exception;
    else {
      const client = fromHttpLayer(exception);
      if (client) error = client;
      else {
        this.logger.error(`unexpected failure [${correlationId}] ${req.method} ${req.originalUrl}: ${(exception as Error)?.stack ?? String(exception)}`);
        error = new DomainError('INTERNAL', 'INTERNAL', `internal error; quote correlation id ${correlationId}`);
      }
    }
    const problem = problemOf(error, req.originalUrl, correlationId);
    // Body-parser errors arrive with the payload too large; keep 413 for that one, as HTTP intends.
    const status = error.reason === 'BODY_TOO_LARGE' ? 413 : problem.status;
    if (status === 401) res.setHeader('WWW-Authenticate', 'Bearer realm="memplane"');
    res.status(status).type('application/problem+json').send(JSON.stringify({ ...problem, status }));
  }
}
