import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { credentials, loadPackageDefinition, status, type ChannelCredentials, type ServiceError } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { protoPath as healthProto } from 'grpc-health-check';
import { FileDescriptorProto } from 'protobufjs/ext/descriptor';
import { HostServiceClient, ListHostsRequest } from '#contracts/generated/memplane/v1/host';
import { call, grpcMetadata, insecure, startTestApi, type TestApi } from './harness';

function healthClient(address: string, creds: ChannelCredentials) {
  const pkg = loadPackageDefinition(loadSync(healthProto, { keepCase: true, enums: String })) as any;
  return new pkg.grpc.health.v1.Health(address, creds);
}

function reflectionClient(address: string) {
  const file = join(require.resolve('@grpc/reflection/package.json'), '..', 'build', 'proto', 'grpc', 'reflection', 'v1alpha', 'reflection.proto');
  const pkg = loadPackageDefinition(loadSync(file, { keepCase: true })) as any;
  return new pkg.grpc.reflection.v1alpha.ServerReflection(address, insecure());
}

describe('gRPC health and reflection', () => {
  let api: TestApi;
  before(async () => {
    api = await startTestApi();
  });
  after(async () => api?.stop());

  it('answers the standard health protocol without a key', async () => {
    const health = healthClient(api.grpc, insecure());
    const overall = await call<unknown, { status: string }>(health, 'Check', { service: '' }, grpcMetadata(null));
    assert.equal(overall.status, 'SERVING');
    const hosts = await call<unknown, { status: string }>(health, 'Check', { service: 'memplane.v1.HostService' }, grpcMetadata(null));
    assert.equal(hosts.status, 'SERVING');
    health.close();
  });

  it('lists the public services through server reflection', async () => {
    const client = reflectionClient(api.grpc);
    const stream = client.ServerReflectionInfo(grpcMetadata(api.adminKey));
    const answer = new Promise<any>((resolve, reject) => {
      stream.on('data', resolve);
      stream.on('error', reject);
    });
    stream.write({ list_services: '' });
    const res = await answer;
    stream.end();
    const names = res.list_services_response.service.map((s: { name: string }) => s.name);
    assert.ok(names.includes('memplane.v1.HostService'), names.join(','));
    assert.ok(names.includes('memplane.v1.PoolService'), names.join(','));

    // The file for a symbol comes with its real name and its imports, so clients can resolve it.
    const stream2 = client.ServerReflectionInfo(grpcMetadata(api.adminKey));
    const answer2 = new Promise<any>((resolve, reject) => {
      stream2.on('data', resolve);
      stream2.on('error', reject);
    });
    stream2.write({ file_containing_symbol: 'memplane.v1.PoolService' });
    const files = (await answer2).file_descriptor_response.file_descriptor_proto as Buffer[];
    stream2.end();
    const decoded = files.map((b: Buffer) => FileDescriptorProto.decode(b) as unknown as { name: string; dependency: string[] });
    const pool = decoded.find((f: { name: string }) => f.name === 'memplane/v1/pool.proto');
    assert.ok(pool, decoded.map((f: { name: string }) => f.name).join(','));
    assert.ok(pool.dependency.includes('google/protobuf/timestamp.proto'), pool.dependency.join(','));
    assert.ok(decoded.some((f: { name: string }) => f.name === 'google/protobuf/timestamp.proto'));
    client.close();
  });

  it('asks reflection callers for a key too', async () => {
    const client = reflectionClient(api.grpc);
    const stream = client.ServerReflectionInfo(grpcMetadata(null));
    const err = await new Promise<ServiceError>((resolve) => {
      stream.on('data', () => undefined);
      stream.on('error', resolve);
      stream.write({ list_services: '' });
    });
    assert.equal(err.code, status.UNAUTHENTICATED);
    client.close();
  });
});

describe('gRPC over mutual TLS', () => {
  const dir = mkdtempSync(join(tmpdir(), 'memplane-tls-'));
  let api: TestApi;
  const openssl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  const file = (n: string) => join(dir, n);

  before(async () => {
    // A throw-away CA signs the server's certificate (for 127.0.0.1) and one client's.
    openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '1', '-subj', '/CN=memplane-test-ca');
    writeFileSync(file('san.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
    for (const who of ['server', 'client']) {
      openssl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${who}.key`, '-out', `${who}.csr`, '-subj', `/CN=memplane-${who}`);
      openssl('x509', '-req', '-in', `${who}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${who}.crt`, '-days', '1', '-extfile', 'san.ext');
    }
    api = await startTestApi({
      MEMPLANE_GRPC_TLS_CERT: file('server.crt'),
      MEMPLANE_GRPC_TLS_KEY: file('server.key'),
      MEMPLANE_GRPC_TLS_CLIENT_CA: file('ca.crt'),
    });
  });
  after(async () => {
    await api?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('serves a client that presents a certificate from the CA', async () => {
    const creds = credentials.createSsl(readFileSync(file('ca.crt')), readFileSync(file('client.key')), readFileSync(file('client.crt')));
    const hosts = new HostServiceClient(api.grpc, creds);
    const res = await call<unknown, { hosts: unknown[] }>(hosts, 'listHosts', ListHostsRequest.fromPartial({}), grpcMetadata(api.adminKey));
    assert.deepEqual(res.hosts, []);
    hosts.close();
  });

  it('refuses a client without a certificate, and a plaintext client', async () => {
    for (const creds of [credentials.createSsl(readFileSync(file('ca.crt'))), insecure()]) {
      const hosts = new HostServiceClient(api.grpc, creds, { 'grpc.initial_reconnect_backoff_ms': 100 });
      const err = await call(hosts, 'listHosts', ListHostsRequest.fromPartial({}), grpcMetadata(api.adminKey)).then(
        () => undefined,
        (e: ServiceError) => e,
      );
      assert.ok(err, 'the call must fail');
      assert.equal(err.code, status.UNAVAILABLE);
      hosts.close();
    }
  });
});
