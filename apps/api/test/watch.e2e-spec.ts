import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { status, type ClientReadableStream, type ServiceError } from '@grpc/grpc-js';
import { OperationServiceClient, OperationState, WatchOperationRequest, type Operation } from '#contracts/generated/memplane/v1/operation';
import { VmServiceClient, VmState, WatchVmRequest, type Vm } from '#contracts/generated/memplane/v1/vm';
import { errorDetails, GiB, grpcMetadata, http, insecure, sampleHost, startTestApi, type TestApi } from './harness';

const vmBody = (name: string) => ({
  name,
  host: 'hv-1',
  kernelProfile: 'linux-6.12',
  guestNodes: [{ guestNodeId: 0, vcpus: 2, bootMemoryBytes: 2 * GiB }],
  memorySlots: 2,
  maxMemoryBytes: 8 * GiB,
  sparePciePorts: 1,
});

interface Collected<T> {
  messages: T[];
  /** Resolves with the final status: null for OK, else the error. */
  done: Promise<ServiceError | null>;
  /** Resolves once `n` messages arrived. */
  count(n: number): Promise<void>;
}

function collect<T>(stream: ClientReadableStream<T>): Collected<T> {
  const messages: T[] = [];
  const waiters: { n: number; resolve: () => void }[] = [];
  stream.on('data', (m: T) => {
    messages.push(m);
    for (const w of waiters.filter((w) => messages.length >= w.n)) w.resolve();
  });
  const done = new Promise<ServiceError | null>((resolve) => {
    stream.on('error', (e: ServiceError) => resolve(e));
    stream.on('end', () => resolve(null));
  });
  return {
    messages,
    done,
    count: (n) => (messages.length >= n ? Promise.resolve() : new Promise((resolve) => waiters.push({ n, resolve }))),
  };
}

interface SseEvent {
  event: string;
  data: string;
}

/** Opens an SSE stream; `events` fills as they arrive, `done` resolves when the server ends it. */
async function sse(api: TestApi, path: string): Promise<{ status: number; contentType: string | null; events: SseEvent[]; done: Promise<void>; count(n: number): Promise<void> }> {
  const res = await fetch(`${api.http}${path}`, { headers: { authorization: `Bearer ${api.adminKey}`, accept: 'text/event-stream' } });
  const events: SseEvent[] = [];
  const waiters: { n: number; resolve: () => void }[] = [];
  const done = (async () => {
    const decoder = new TextDecoder();
    let buffer = '';
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      buffer += decoder.decode(chunk, { stream: true });
      let i: number;
      while ((i = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, i);
        buffer = buffer.slice(i + 2);
        const e: SseEvent = { event: 'message', data: '' };
        for (const line of block.split('\n')) {
          if (line.startsWith('event: ')) e.event = line.slice(7);
          else if (line.startsWith('data: ')) e.data += line.slice(6);
        }
        events.push(e);
        for (const w of waiters.filter((w) => events.length >= w.n)) w.resolve();
      }
    }
  })();
  return {
    status: res.status,
    contentType: res.headers.get('content-type'),
    events,
    done,
    count: (n) => (events.length >= n ? Promise.resolve() : new Promise((resolve) => waiters.push({ n, resolve }))),
  };
}

const within = <T>(p: Promise<T>, ms: number, what: string) =>
  Promise.race([p, new Promise<T>((_, reject) => setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms).unref())]);

describe('watching operations and VMs (gRPC streams and SSE)', () => {
  let api: TestApi;
  let operations: OperationServiceClient;
  let vms: VmServiceClient;
  before(async () => {
    api = await startTestApi();
    assert.equal((await http(api, 'POST', '/v1/hosts', { body: sampleHost('hv-1') })).status, 201);
    assert.equal((await http(api, 'POST', '/v1/pools', { body: { name: 'p-main', host: 'hv-1', hostNodeId: 2, capacityBytes: 16 * GiB } })).status, 201);
    operations = new OperationServiceClient(api.grpc, insecure());
    vms = new VmServiceClient(api.grpc, insecure());
  });
  after(async () => {
    operations?.close();
    vms?.close();
    await api?.stop();
  });

  it('streams an operation from PENDING to CANCELLED over gRPC and SSE, and the VM back to DEFINED', async () => {
    assert.equal((await http(api, 'POST', '/v1/vms', { body: vmBody('vm-w') })).status, 201);

    // The VM watch first: it sees DEFINED, then STARTING, then DEFINED again after the cancel.
    const vmStream = vms.watchVm(WatchVmRequest.create({ name: 'vm-w' }), grpcMetadata(api.adminKey));
    const vmSeen = collect<Vm>(vmStream);
    await within(vmSeen.count(1), 5_000, 'the first VM');
    assert.equal(vmSeen.messages[0]!.name, 'vm-w');
    assert.equal(vmSeen.messages[0]!.state, VmState.VM_STATE_DEFINED);

    const started = await http(api, 'POST', '/v1/vms/vm-w:start');
    assert.equal(started.status, 202, JSON.stringify(started.body));
    assert.equal(started.body.state, 'PENDING');
    const name: string = started.body.name;
    await within(vmSeen.count(2), 5_000, 'the STARTING VM');
    assert.equal(vmSeen.messages[1]!.state, VmState.VM_STATE_STARTING);

    const opStream = operations.watchOperation(WatchOperationRequest.create({ name }), grpcMetadata(api.adminKey));
    const opSeen = collect<Operation>(opStream);
    const events = await sse(api, `/v1/operations/${name}/events`);
    assert.equal(events.status, 200);
    assert.match(events.contentType ?? '', /^text\/event-stream/);
    await within(opSeen.count(1), 5_000, 'the first operation (gRPC)');
    await within(events.count(1), 5_000, 'the first operation (SSE)');
    assert.equal(opSeen.messages[0]!.state, OperationState.OPERATION_STATE_PENDING);
    assert.equal(JSON.parse(events.events[0]!.data).state, 'PENDING');

    const cancelled = await http(api, 'POST', `/v1/operations/${name}:cancel`);
    assert.equal(cancelled.status, 200, JSON.stringify(cancelled.body));
    assert.equal(cancelled.body.state, 'CANCELLED');

    // Both streams end by themselves once the operation is terminal.
    assert.equal(await within(opSeen.done, 5_000, 'the gRPC stream to end'), null);
    assert.deepEqual(
      opSeen.messages.map((o) => o.state),
      [OperationState.OPERATION_STATE_PENDING, OperationState.OPERATION_STATE_CANCELLED],
    );
    assert.equal(opSeen.messages[1]!.name, name);
    await within(events.done, 5_000, 'the SSE stream to end');
    assert.deepEqual(
      events.events.map((e) => (e.event === 'message' ? JSON.parse(e.data).state : `event:${e.event}`)),
      ['PENDING', 'CANCELLED', 'event:end'],
    );

    // The cancel put the VM back: the watch sees it, and goes on until the client cancels.
    await within(vmSeen.count(3), 5_000, 'the VM back to DEFINED');
    assert.equal(vmSeen.messages[2]!.state, VmState.VM_STATE_DEFINED);
    vmStream.cancel();
    const end = await within(vmSeen.done, 5_000, 'the cancelled VM stream');
    assert.equal(end?.code, status.CANCELLED);

    // Watching a finished operation sends it once and ends.
    const again = collect<Operation>(operations.watchOperation(WatchOperationRequest.create({ name }), grpcMetadata(api.adminKey)));
    assert.equal(await within(again.done, 5_000, 'a finished operation'), null);
    assert.deepEqual(again.messages.map((o) => o.state), [OperationState.OPERATION_STATE_CANCELLED]);
  });

  it('answers NOT_FOUND / 404 for unknown names and UNAUTHENTICATED / 401 without a key', async () => {
    const unknown = '00000000-0000-4000-8000-000000000000';
    const missing = collect<Operation>(operations.watchOperation(WatchOperationRequest.create({ name: unknown }), grpcMetadata(api.adminKey)));
    const err = await within(missing.done, 5_000, 'NOT_FOUND');
    assert.ok(err);
    assert.equal(err.code, status.NOT_FOUND);
    assert.equal(errorDetails(err).reason, 'OPERATION_NOT_FOUND');
    assert.equal(missing.messages.length, 0);

    const noVm = collect<Vm>(vms.watchVm(WatchVmRequest.create({ name: 'vm-none' }), grpcMetadata(api.adminKey)));
    const vmErr = await within(noVm.done, 5_000, 'VM NOT_FOUND');
    assert.equal(vmErr?.code, status.NOT_FOUND);
    assert.equal(errorDetails(vmErr!).reason, 'VM_NOT_FOUND');
    assert.equal(noVm.messages.length, 0);

    const anonymous = collect<Operation>(operations.watchOperation(WatchOperationRequest.create({ name: unknown }), grpcMetadata(null)));
    assert.equal((await within(anonymous.done, 5_000, 'UNAUTHENTICATED'))?.code, status.UNAUTHENTICATED);
    const anonymousVm = collect<Vm>(vms.watchVm(WatchVmRequest.create({ name: 'vm-none' }), grpcMetadata(null)));
    assert.equal((await within(anonymousVm.done, 5_000, 'UNAUTHENTICATED'))?.code, status.UNAUTHENTICATED);

    const rest404 = await http(api, 'GET', `/v1/operations/${unknown}/events`);
    assert.equal(rest404.status, 404);
    assert.equal(rest404.headers.get('content-type')?.split(';')[0], 'application/problem+json');
    assert.equal(rest404.body.reason, 'OPERATION_NOT_FOUND');
    const rest401 = await http(api, 'GET', `/v1/operations/${unknown}/events`, { key: null });
    assert.equal(rest401.status, 401);
    assert.equal(rest401.headers.get('content-type')?.split(';')[0], 'application/problem+json');
  });
});
