import 'reflect-metadata';
import { Logger, type LogLevel } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import type { NestExpressApplication } from '@nestjs/platform-express';
import type { NextFunction, Request, Response } from 'express';
import { join } from 'node:path';
import { DomainError } from '#domain';
import { startDataServices, type AppConfig } from '#platform';
import { startGrpc } from './grpc/server';
import { correlationMiddleware } from './rest/request-context';
import { RestModule } from './rest/rest.module';
import { Runtime } from './runtime';
import { problemOf } from './rest/problem';

export interface RunningMemplane {
  httpUrl: string;
  grpcAddress: string;
  databaseUrl: string;
  redisUrl: string;
  appliedMigrations: string[];
  /** Plaintext admin key, only on the start that created it. */
  bootstrapKey?: { key: string; generated: boolean };
  runtime: Runtime;
  stop(): Promise<void>;
}

const LEVELS: LogLevel[] = ['error', 'warn', 'log', 'debug', 'verbose'];

/** JSON bodies only: anything else with a body is refused with 415 before it is parsed. */
function requireJson(req: Request, res: Response, next: NextFunction): void {
  const hasBody = Number(req.header('content-length') ?? 0) > 0 || req.header('transfer-encoding') !== undefined;
  if (hasBody && ['POST', 'PUT', 'PATCH'].includes(req.method) && !req.is('application/json')) {
    const e = new DomainError('INVALID_ARGUMENT', 'UNSUPPORTED_MEDIA_TYPE', `request bodies must be application/json, got ${req.header('content-type') ?? 'none'}`);
    res.status(415).type('application/problem+json').send(JSON.stringify({ ...problemOf(e, req.originalUrl, 'n/a'), status: 415 }));
    return;
  }
  next();
}

export async function startMemplane(config: AppConfig, log: (line: string) => void = () => undefined): Promise<RunningMemplane> {
  const stops: (() => Promise<void>)[] = [];
  try {
    const data = await startDataServices(config, log);
    stops.push(data.stop);
    const { databaseUrl, redisUrl, appliedMigrations } = data;
    const runtime = Runtime.create(config, { databaseUrl, redisUrl });
    stops.push(() => runtime.close());
    const bootstrapKey = await runtime.apiKeys.bootstrap(config.bootstrapKey?.reveal());

    const app = await NestFactory.create<NestExpressApplication>(RestModule.forRuntime(runtime), {
      bodyParser: false,
      logger: LEVELS.slice(0, LEVELS.indexOf(config.logLevel) + 1),
    });
    app.use(correlationMiddleware);
    app.use(requireJson);
    app.useBodyParser('json', { limit: config.maxBodyBytes, strict: true, type: 'application/json' });
    app.useStaticAssets(join(require.resolve('swagger-ui-dist/package.json'), '..'), { prefix: '/docs/assets/', index: false });
    app.set('query parser', 'simple');
    await app.listen(config.httpPort, config.listenHost);
    stops.push(() => app.close());
    const httpPort = (app.getHttpServer().address() as { port: number }).port;

    const grpc = await startGrpc(runtime, config);
    stops.push(grpc.stop);

    return {
      httpUrl: `http://${config.listenHost}:${httpPort}`,
      grpcAddress: `${config.listenHost}:${grpc.port}`,
      databaseUrl,
      redisUrl,
      appliedMigrations,
      ...(bootstrapKey ? { bootstrapKey } : {}),
      runtime,
      stop: async () => {
        for (const stop of stops.reverse()) await stop().catch((e: unknown) => log(`shutdown: ${String(e)}`));
      },
    };
  } catch (e) {
    for (const stop of stops.reverse()) await stop().catch(() => undefined);
    throw e;
  }
}

export const logger = new Logger('memplane');
