import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Server, ServerCredentials, type handleUnaryCall, type Metadata, type ServerDuplexStream, type ServiceDefinition, type UntypedServiceImplementation } from '@grpc/grpc-js';
import { BinaryReader } from '@bufbuild/protobuf/wire';
import { ReflectionService } from '@grpc/reflection';
import { HealthImplementation } from 'grpc-health-check';
import { Logger } from '@nestjs/common';
import type { CallContext } from '#application';
import { projectRoot, type AppConfig } from '#platform';
import type { Runtime } from '../runtime';
import { toServiceError } from './errors';
import { registerInventory } from './inventory.grpc';
import { registerTopology } from './topology.grpc';
import { registerVms } from './vm.grpc';

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

  /** A view of the server whose services (added by libraries such as reflection) authenticate every stream first. */
  authenticatedServer(): Pick<Server, 'addService'> {
    return {
      addService: (definition: ServiceDefinition, impl: UntypedServiceImplementation) => {
        const wrapped: UntypedServiceImplementation = {};
        for (const [name, handler] of Object.entries(impl)) {
          wrapped[name] = ((call: ServerDuplexStream<unknown, unknown>) => {
            const { correlationId, authenticate } = this.context(call.metadata);
            authenticate().then(
              () => (handler as (c: typeof call) => void)(call),
              (err: unknown) => call.emit('error', toServiceError(err, correlationId, (m) => this.logger.error(m))),
            );
          }) as UntypedServiceImplementation[string];
        }
        this.server.addService(definition, wrapped);
      },
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

/** Splits a FileDescriptorSet (field 1: repeated FileDescriptorProto) into its encoded files. */
function fileDescriptors(path: string): Buffer[] {
  const reader = new BinaryReader(readFileSync(path));
  const files: Buffer[] = [];
  while (reader.pos < reader.len) {
    const [field, wireType] = reader.tag();
    if (field === 1) files.push(Buffer.from(reader.bytes()));
    else reader.skip(wireType);
  }
  return files;
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
  registerVms(registry, rt);
  registerTopology(registry, rt);

  const health = new HealthImplementation({ '': 'SERVING', ...Object.fromEntries(registry.services.map((s) => [s, 'SERVING'])) });
  health.addToServer(server);

  // Server reflection describes the public contract, straight from proto/.
  // It serves the descriptor set buf built from proto/ (real file names and imports,
  // so grpcurl and other clients can resolve google.protobuf types), and asks for a key
  // like every other call but health.
  const descriptors = fileDescriptors(join(projectRoot(), 'libs', 'contracts', 'src', 'generated', 'descriptor.binpb'));
  new ReflectionService({ memplane: { fileDescriptorProtos: descriptors } } as unknown as ConstructorParameters<typeof ReflectionService>[0]).addToServer(
    registry.authenticatedServer(),
  );

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
