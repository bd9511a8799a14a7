import { randomUUID } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Server, ServerCredentials, type handleUnaryCall, type Metadata, type ServiceDefinition, type UntypedServiceImplementation } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { ReflectionService } from '@grpc/reflection';
import { HealthImplementation } from 'grpc-health-check';
import { Logger } from '@nestjs/common';
import type { CallContext } from '#application';
import { projectRoot, type AppConfig } from '#platform';
import type { Runtime } from '../runtime';
import { toServiceError } from './errors';
import { registerInventory } from './inventory.grpc';

const CORRELATION = /^[A-Za-z0-9._:-]{1,128}$/;

function header(md: Metadata, key: string): string | undefined {
  const v = md.get(key)[0];
  return typeof v === 'string' ? v : undefined;
}

/**
 * Collects service implementations. Every handler authenticates first (the
 * same API keys as REST; roles are checked by the application services) and
 * answers errors with the rich error model.
 */
export class GrpcRegistry {
  private readonly logger = new Logger('grpc');
  readonly services: string[] = [];

  constructor(
    readonly server: Server,
    private readonly rt: Runtime,
  ) {}

  context(md: Metadata): { correlationId: string; authenticate: () => Promise<CallContext> } {
    const given = header(md, 'x-request-id');
    const correlationId = given && CORRELATION.test(given) ? given : randomUUID();
    return {
      correlationId,
      authenticate: async () => ({ principal: await this.rt.apiKeys.authenticate(header(md, 'authorization')), transport: 'grpc', correlationId }),
    };
  }

  unary<Req, Res>(fn: (ctx: CallContext, req: Req) => Promise<Res>): handleUnaryCall<Req, Res> {
    return (call, callback) => {
      const { correlationId, authenticate } = this.context(call.metadata);
      authenticate()
        .then((ctx) => fn(ctx, call.request))
        .then(
          (res) => callback(null, res),
          (err: unknown) => callback(toServiceError(err, correlationId, (m) => this.logger.error(m))),
        );
    };
  }

  add(definition: ServiceDefinition, impl: UntypedServiceImplementation): void {
    this.server.addService(definition, impl);
    const first = Object.values(definition)[0] as { path: string } | undefined;
    if (first) this.services.push(first.path.split('/')[1]!);
  }
}

function credentials(config: AppConfig): ServerCredentials {
  const tls = config.grpcTls;
  if (!tls) return ServerCredentials.createInsecure();
  const ca = tls.clientCaPath ? readFileSync(tls.clientCaPath) : null;
  return ServerCredentials.createSsl(ca, [{ private_key: readFileSync(tls.keyPath), cert_chain: readFileSync(tls.certPath) }], Boolean(ca));
}

export interface RunningGrpc {
  port: number;
  health: HealthImplementation;
  stop(): Promise<void>;
}

export async function startGrpc(rt: Runtime, config: AppConfig): Promise<RunningGrpc> {
  const server = new Server({ 'grpc.max_receive_message_length': config.maxBodyBytes });
  const registry = new GrpcRegistry(server, rt);
  registerInventory(registry, rt);

  const health = new HealthImplementation({ '': 'SERVING', ...Object.fromEntries(registry.services.map((s) => [s, 'SERVING'])) });
  health.addToServer(server);

  // Server reflection describes the public contract, straight from proto/.
  const protoDir = join(projectRoot(), 'proto');
  const files = readdirSync(join(protoDir, 'memplane', 'v1')).filter((f) => f.endsWith('.proto')).map((f) => `memplane/v1/${f}`);
  const definition = loadSync(files, { includeDirs: [protoDir], keepCase: true, longs: String, enums: String, defaults: true, oneofs: true });
  new ReflectionService(definition).addToServer(server);

  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(`${config.listenHost}:${config.grpcPort}`, credentials(config), (err, p) => (err ? reject(err) : resolve(p))),
  );

  // Health follows readiness: a load balancer stops sending work while Postgres or Redis is gone.
  const timer = setInterval(() => {
    void rt.readiness().then((r) => health.setStatus('', r.ready ? 'SERVING' : 'NOT_SERVING'));
  }, 5_000);
  timer.unref();

  return {
    port,
    health,
    stop: () =>
      new Promise<void>((resolve) => {
        clearInterval(timer);
        const force = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, 5_000);
        server.tryShutdown(() => {
          clearTimeout(force);
          resolve();
        });
      }),
  };
}
