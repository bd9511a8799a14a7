import { credentials, Metadata, type ServiceError } from '@grpc/grpc-js';
import { generateApiKey } from '#application';
import { loadConfig } from '#platform';
import { freshDatabase, testServices } from '#testing/services';
import { BadRequest, ErrorInfo } from '#contracts/generated/google/rpc/error_details';
import { Status } from '#contracts/generated/google/rpc/status';
import { startMemplane, type RunningMemplane } from '../src/server';

export interface TestApi {
  http: string;
  grpc: string;
  adminKey: string;
  running: RunningMemplane;
  databaseUrl: string;
  stop(): Promise<void>;
}


/** The real service on ephemeral ports, over its own fresh database and the shared test Redis. */
export async function startTestApi(extraEnv: Record<string, string> = {}): Promise<TestApi> {
  const db = await freshDatabase();
  const adminKey = generateApiKey();
  const config = loadConfig({
    DATABASE_URL: db.url,
    REDIS_URL: testServices().redisUrl,
    MEMPLANE_HTTP_PORT: '0',
    MEMPLANE_GRPC_PORT: '0',
    MEMPLANE_BOOTSTRAP_KEY: adminKey,
    MEMPLANE_LOG_LEVEL: 'error',
    ...extraEnv,
  });
  const running = await startMemplane(config);
  return {
    http: running.httpUrl,
    grpc: running.grpcAddress,
    adminKey,
    running,
    databaseUrl: db.url,
    stop: async () => {
      await running.stop();
      await db.drop();
    },
  };
}

export interface HttpResult<T = any> {
  status: number;
  body: T;
  headers: Headers;
}

export async function http<T = any>(api: TestApi, method: string, path: string, opts: { key?: string | null; body?: unknown; rawBody?: string; headers?: Record<string, string> } = {}): Promise<HttpResult<T>> {
  const headers: Record<string, string> = { ...(opts.headers ?? {}) };
  const key = opts.key === undefined ? api.adminKey : opts.key;
  if (key) headers['authorization'] = `Bearer ${key}`;
  let body: string | undefined;
  if (opts.rawBody !== undefined) body = opts.rawBody;
  else if (opts.body !== undefined) {
    body = JSON.stringify(opts.body);
    headers['content-type'] ??= 'application/json';
  }
  const res = await fetch(`${api.http}${path}`, { method, headers, ...(body !== undefined ? { body } : {}) });
  const text = await res.text();
  let parsed: unknown = text;
  try {
    parsed = text ? JSON.parse(text) : undefined;
  } catch {
    /* not JSON */
  }
  return { status: res.status, body: parsed as T, headers: res.headers };
}

export function grpcMetadata(key: string | null): Metadata {
  const md = new Metadata();
  if (key) md.set('authorization', `Bearer ${key}`);
  return md;
}

export const insecure = () => credentials.createInsecure();

/** Calls a unary method of a generated client as a promise. */
export function call<Req, Res>(client: any, method: string, req: Req, md: Metadata): Promise<Res> {
  return new Promise((resolve, reject) => client[method](req, md, (err: ServiceError | null, res: Res) => (err ? reject(err) : resolve(res))));
}

/** The rich error details of a failed call: ErrorInfo and BadRequest field violations. */
export function errorDetails(err: ServiceError): { code: number; reason?: string; violations: { field: string; description: string }[] } {
  const raw = err.metadata?.get('grpc-status-details-bin')[0];
  const out: { code: number; reason?: string; violations: { field: string; description: string }[] } = { code: err.code, violations: [] };
  if (!raw) return out;
  const status = Status.decode(raw as Buffer);
  for (const any of status.details) {
    if (any.typeUrl.endsWith('google.rpc.ErrorInfo')) out.reason = ErrorInfo.decode(any.value).reason;
    if (any.typeUrl.endsWith('google.rpc.BadRequest')) out.violations = BadRequest.decode(any.value).fieldViolations;
  }
  return out;
}

export const GiB = 1024 ** 3;
export const MiB = 1024 ** 2;

export function sampleHost(name: string) {
  return {
    name,
    nodes: [
      { nodeId: 0, cpus: [0, 1, 2, 3], memoryBytes: 32 * GiB, kind: 'DRAM' },
      { nodeId: 1, cpus: [4, 5, 6, 7], memoryBytes: 32 * GiB, kind: 'DRAM' },
      { nodeId: 2, cpus: [], memoryBytes: 128 * GiB, kind: 'CXL' },
    ],
    performance: [
      { cpuNodeId: 0, memoryNodeId: 0, readLatencyNs: 100, writeLatencyNs: 100, readBandwidthMBps: 51200, writeBandwidthMBps: 51200 },
      { cpuNodeId: 0, memoryNodeId: 2, readLatencyNs: 250, writeLatencyNs: 260, readBandwidthMBps: 20480, writeBandwidthMBps: 18432 },
      { cpuNodeId: 1, memoryNodeId: 1, readLatencyNs: 100, writeLatencyNs: 100, readBandwidthMBps: 51200, writeBandwidthMBps: 51200 },
      { cpuNodeId: 1, memoryNodeId: 2, readLatencyNs: 300, writeLatencyNs: 310, readBandwidthMBps: 16384, writeBandwidthMBps: 16384 },
    ],
    distances: [
      { fromNodeId: 0, toNodeId: 0, distance: 10 },
      { fromNodeId: 0, toNodeId: 1, distance: 21 },
      { fromNodeId: 0, toNodeId: 2, distance: 24 },
      { fromNodeId: 1, toNodeId: 1, distance: 10 },
      { fromNodeId: 1, toNodeId: 0, distance: 21 },
      { fromNodeId: 1, toNodeId: 2, distance: 28 },
      { fromNodeId: 2, toNodeId: 2, distance: 10 },
    ],
  };
}
