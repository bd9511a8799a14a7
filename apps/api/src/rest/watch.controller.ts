import { Controller, Get, Inject, Logger, Param, Req, Res } from '@nestjs/common';
import type { Request, Response } from 'express';
import { DomainError, isDomainError } from '#domain';
import { RUNTIME, type Runtime } from '../runtime';
import { problemOf } from './problem';
import { callContext, correlationIdOf } from './request-context';

const json = (value: unknown) => JSON.stringify(value, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v));

/**
 * Server-sent events: GET /v1/operations/{name}/events streams the operation,
 * one `data: <operation JSON>` event now and one per change, then
 * `event: end` once it is SUCCEEDED, FAILED or CANCELLED. An unknown operation
 * (or a missing key) is an ordinary problem response, before any event.
 */
@Controller('v1/operations')
export class WatchController {
  private readonly logger = new Logger('rest');

  constructor(@Inject(RUNTIME) private readonly rt: Runtime) {}

  @Get(':name/events')
  async events(@Req() req: Request, @Param('name') name: string, @Res() res: Response): Promise<void> {
    const abort = new AbortController();
    res.on('close', () => abort.abort());
    const events = this.rt.watch.watchOperation(callContext(req), name, abort.signal);
    // The first read decides between a problem response (thrown to the filter) and a stream.
    const first = await events.next();
    res.status(200);
    res.setHeader('Content-Type', 'text/event-stream; charset=utf-8');
    res.setHeader('Cache-Control', 'no-cache');
    res.setHeader('Connection', 'keep-alive');
    res.setHeader('X-Accel-Buffering', 'no');
    res.flushHeaders();
    try {
      if (!first.done) {
        res.write(`id: 1\ndata: ${json(first.value)}\n\n`);
        let id = 1;
        for await (const op of { [Symbol.asyncIterator]: () => events }) {
          res.write(`id: ${++id}\ndata: ${json(op)}\n\n`);
        }
      }
      if (!abort.signal.aborted) res.write(`event: end\ndata: {}\n\n`);
    } catch (e: unknown) {
      const correlationId = correlationIdOf(req);
      let error: DomainError;
      if (isDomainError(e)) error = e;
      else {
        this.logger.error(`unexpected failure [${correlationId}] watching operation ${name}: ${(e as Error)?.stack ?? String(e)}`);
        error = new DomainError('INTERNAL', 'INTERNAL', `internal error; quote correlation id ${correlationId}`);
      }
      if (!abort.signal.aborted) res.write(`event: error\ndata: ${json(problemOf(error, req.originalUrl, correlationId))}\n\n`);
    } finally {
      abort.abort();
      res.end();
    }
  }
}
