import { Logger } from '@nestjs/common';
import type { handleServerStreamingCall, ServerWritableStream } from '@grpc/grpc-js';
import type { CallContext } from '#application';
import type { WatchOperationRequest, Operation } from '#contracts/generated/memplane/v1/operation';
import type { Vm, WatchVmRequest } from '#contracts/generated/memplane/v1/vm';
import type { Runtime } from '../runtime';
import { toServiceError } from './errors';
import type { GrpcRegistry } from './server';
import { operationToProto, vmToProto } from './vm.grpc';

const logger = new Logger('grpc');

/**
 * A server-streaming handler: authenticates first (the same keys as unary
 * calls), then writes what `fn` yields until it ends (status OK) or the client
 * cancels. A failure — NOT_FOUND before the first message included — ends the
 * call with that status and the rich error details.
 */
export function serverStream<Req, Res>(
  registry: GrpcRegistry,
  fn: (ctx: CallContext, req: Req, signal: AbortSignal) => AsyncIterable<Res>,
): handleServerStreamingCall<Req, Res> {
  return (call: ServerWritableStream<Req, Res>) => {
    const { correlationId, authenticate } = registry.context(call.metadata);
    const abort = new AbortController();
    const stop = () => abort.abort();
    call.on('cancelled', stop);
    call.on('close', stop);
    void (async () => {
      try {
        const ctx = await authenticate();
        for await (const message of fn(ctx, call.request, abort.signal)) {
          if (abort.signal.aborted) break;
          // Respect flow control: wait for the transport to drain before reading more.
          if (!call.write(message)) await new Promise<void>((resolve) => { call.once('drain', resolve); abort.signal.addEventListener('abort', () => resolve(), { once: true }); });
        }
        if (!abort.signal.aborted) call.end();
      } catch (err: unknown) {
        if (!abort.signal.aborted) call.emit('error', toServiceError(err, correlationId, (m) => logger.error(m)));
      } finally {
        abort.abort();
      }
    })();
  };
}

export function watchOperationHandler(registry: GrpcRegistry, rt: Runtime): handleServerStreamingCall<WatchOperationRequest, Operation> {
  return serverStream(registry, async function* (ctx, req: WatchOperationRequest, signal) {
    for await (const op of rt.watch.watchOperation(ctx, req.name, signal)) yield operationToProto(op);
  });
}

export function watchVmHandler(registry: GrpcRegistry, rt: Runtime): handleServerStreamingCall<WatchVmRequest, Vm> {
  return serverStream(registry, async function* (ctx, req: WatchVmRequest, signal) {
    for await (const vm of rt.watch.watchVm(ctx, req.name, signal)) yield vmToProto(vm);
  });
}
