import { resolve } from 'node:path';
import { z } from 'zod';

/**
 * The one place that reads the environment. Everything else receives the typed
 * object, so a misspelled or malformed setting fails the boot with its name,
 * not a request hours later.
 */
/**
 * Operations a worker runs at once, each on a different VM. Most of an operation's time is
 * spent waiting for QEMU and the guest, and the VM loops that meet between two operations
 * share one statement and one commit (EndAndClaimBatcher): 16 loops keep a 2-CPU machine
 * busy where 4 left a quarter of it idle (bench:ops).
 */
export const DEFAULT_WORKER_CONCURRENCY = 16;

const port = z.coerce.number().int().min(0).max(65535);
const optionalPath = z.string().min(1).optional();
const millis = (min: number, max: number) => z.coerce.number().int().min(min).max(max);

const EnvSchema = z
  .object({
    MEMPLANE_LISTEN_HOST: z.string().min(1).default('127.0.0.1'),
    MEMPLANE_HTTP_PORT: port.default(8080),
    MEMPLANE_GRPC_PORT: port.default(50051),
    MEMPLANE_DATA_DIR: z.string().min(1).default('.data'),
    DATABASE_URL: z.string().url().optional(),
    REDIS_URL: z.string().url().optional(),
    MEMPLANE_EMBEDDED_PG_PORT: port.default(54329),
    MEMPLANE_EMBEDDED_REDIS_PORT: port.default(63799),
    MEMPLANE_BOOTSTRAP_KEY: z.string().regex(/^mp_[A-Za-z0-9]{8}_[A-Za-z0-9_-]{32,}$/, 'must look like mp_<8 alnum>_<32+ url-safe chars>').optional(),
    MEMPLANE_MAX_BODY_BYTES: z.coerce.number().int().min(1024).max(64 * 1024 * 1024).default(1024 * 1024),
    MEMPLANE_GRPC_TLS_CERT: optionalPath,
    MEMPLANE_GRPC_TLS_KEY: optionalPath,
    MEMPLANE_GRPC_TLS_CLIENT_CA: optionalPath,
    MEMPLANE_LOG_LEVEL: z.enum(['error', 'warn', 'log', 'debug', 'verbose']).default('log'),
    // The worker (apps/worker, or the one `npm start` runs in-process).
    MEMPLANE_WORKER: z.enum(['embedded', 'off']).default('embedded'),
    MEMPLANE_QUEUE_PREFIX: z
      .string()
      .regex(/^[A-Za-z0-9_.-]{1,64}$/, 'must be 1 to 64 letters, digits, "_", "." or "-" (it starts every BullMQ key, before a ":")')
      .default('bull'),
    MEMPLANE_WORKER_CONCURRENCY: z.coerce.number().int().min(1).max(256).default(DEFAULT_WORKER_CONCURRENCY),
    MEMPLANE_QEMU_ACCEL: z
      .string()
      .regex(/^[a-z]+(,[a-z0-9-]+=[A-Za-z0-9_.-]+)*$/, 'must be a QEMU -accel value such as tcg,thread=single or kvm')
      .default('tcg,thread=single'),
    MEMPLANE_QEMU_CPU: z.string().regex(/^[A-Za-z0-9_.-]+(,[A-Za-z0-9_.=+-]+)*$/, 'must be a QEMU -cpu value such as host or max,-cx16').optional(),
    MEMPLANE_HOST_NODE_BINDING: z.enum(['auto', 'bind', 'none']).default('auto'),
    MEMPLANE_CONVERGE_TIMEOUT_MS: millis(1_000, 3_600_000).default(60_000),
    MEMPLANE_DEVICE_DEL_TIMEOUT_MS: millis(1_000, 3_600_000).default(20_000),
    MEMPLANE_SHRINK_STALL_MS: millis(1_000, 3_600_000).default(10_000),
    MEMPLANE_BOOT_TIMEOUT_MS: millis(1_000, 3_600_000).default(120_000),
    MEMPLANE_DRIFT_CHECK_INTERVAL_MS: millis(0, 86_400_000)
      .refine((ms) => ms === 0 || ms >= 1_000, 'must be 0 (no drift checks) or at least 1000')
      .default(30_000),
  })
  .superRefine((env, ctx) => {
    if (Boolean(env.MEMPLANE_GRPC_TLS_CERT) !== Boolean(env.MEMPLANE_GRPC_TLS_KEY)) {
      ctx.addIssue({ code: 'custom', path: ['MEMPLANE_GRPC_TLS_CERT'], message: 'MEMPLANE_GRPC_TLS_CERT and MEMPLANE_GRPC_TLS_KEY go together' });
    }
    if (env.MEMPLANE_GRPC_TLS_CLIENT_CA && !env.MEMPLANE_GRPC_TLS_CERT) {
      ctx.addIssue({ code: 'custom', path: ['MEMPLANE_GRPC_TLS_CLIENT_CA'], message: 'mutual TLS needs MEMPLANE_GRPC_TLS_CERT and MEMPLANE_GRPC_TLS_KEY too' });
    }
  });

export interface Secret {
  readonly secret: true;
  reveal(): string;
}

function secret(value: string): Secret {
  return { secret: true, reveal: () => value, toString: () => '[secret]', toJSON: () => '[secret]' } as Secret;
}

export interface AppConfig {
  listenHost: string;
  httpPort: number;
  grpcPort: number;
  dataDir: string;
  database: { url: Secret } | { embedded: { port: number; dir: string } };
  redis: { url: Secret } | { embedded: { port: number; dir: string } };
  bootstrapKey?: Secret;
  maxBodyBytes: number;
  grpcTls?: { certPath: string; keyPath: string; clientCaPath?: string };
  logLevel: 'error' | 'warn' | 'log' | 'debug' | 'verbose';
  worker: WorkerConfig;
}

/** What the hotplug engine's worker needs, whichever process runs it. */
export interface WorkerConfig {
  /** `embedded`: the API process runs a worker too; `off`: only apps/worker processes do. */
  mode: 'embedded' | 'off';
  /** BullMQ key prefix shared by the API, the workers and automation. */
  queuePrefix: string;
  /** Operations run in parallel on different VMs (one VM's run one at a time). */
  concurrency: number;
  /** QEMU `-accel`; KVM only when asked for (/dev/kvm can exist where KVM cannot run a guest). */
  qemuAccel: string;
  /** QEMU `-cpu`: `host` with KVM, `max,-cx16` under TCG (the 6.12 guest needs no cmpxchg16b there). */
  qemuCpu: string;
  /** `auto`: bind guest memory to host nodes when this machine has them. */
  hostNodeBinding: 'auto' | 'bind' | 'none';
  convergeTimeoutMs: number;
  deviceDelTimeoutMs: number;
  /** How long a virtio-mem shrink may make no progress before it settles on what is plugged (RESIZE_PARTIAL). */
  shrinkStallMs: number;
  bootTimeoutMs: number;
  /** How often each idle running VM's memory is compared with its desired state; 0 = never. */
  driftCheckIntervalMs: number;
}

export class ConfigError extends Error {}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): AppConfig {
  const parsed = EnvSchema.safeParse(env);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => `  ${i.path.join('.')}: ${i.message}`);
    throw new ConfigError(`invalid configuration:\n${lines.join('\n')}`);
  }
  const e = parsed.data;
  const dataDir = resolve(e.MEMPLANE_DATA_DIR);
  return {
    listenHost: e.MEMPLANE_LISTEN_HOST,
    httpPort: e.MEMPLANE_HTTP_PORT,
    grpcPort: e.MEMPLANE_GRPC_PORT,
    dataDir,
    database: e.DATABASE_URL
      ? { url: secret(e.DATABASE_URL) }
      : { embedded: { port: e.MEMPLANE_EMBEDDED_PG_PORT, dir: resolve(dataDir, 'postgres') } },
    redis: e.REDIS_URL
      ? { url: secret(e.REDIS_URL) }
      : { embedded: { port: e.MEMPLANE_EMBEDDED_REDIS_PORT, dir: resolve(dataDir, 'redis') } },
    ...(e.MEMPLANE_BOOTSTRAP_KEY ? { bootstrapKey: secret(e.MEMPLANE_BOOTSTRAP_KEY) } : {}),
    maxBodyBytes: e.MEMPLANE_MAX_BODY_BYTES,
    ...(e.MEMPLANE_GRPC_TLS_CERT && e.MEMPLANE_GRPC_TLS_KEY
      ? {
          grpcTls: {
            certPath: e.MEMPLANE_GRPC_TLS_CERT,
            keyPath: e.MEMPLANE_GRPC_TLS_KEY,
            ...(e.MEMPLANE_GRPC_TLS_CLIENT_CA ? { clientCaPath: e.MEMPLANE_GRPC_TLS_CLIENT_CA } : {}),
          },
        }
      : {}),
    logLevel: e.MEMPLANE_LOG_LEVEL,
    worker: {
      mode: e.MEMPLANE_WORKER,
      queuePrefix: e.MEMPLANE_QUEUE_PREFIX,
      concurrency: e.MEMPLANE_WORKER_CONCURRENCY,
      qemuAccel: e.MEMPLANE_QEMU_ACCEL,
      qemuCpu: e.MEMPLANE_QEMU_CPU ?? (e.MEMPLANE_QEMU_ACCEL.startsWith('kvm') ? 'host' : 'max,-cx16'),
      hostNodeBinding: e.MEMPLANE_HOST_NODE_BINDING,
      convergeTimeoutMs: e.MEMPLANE_CONVERGE_TIMEOUT_MS,
      deviceDelTimeoutMs: e.MEMPLANE_DEVICE_DEL_TIMEOUT_MS,
      shrinkStallMs: e.MEMPLANE_SHRINK_STALL_MS,
      bootTimeoutMs: e.MEMPLANE_BOOT_TIMEOUT_MS,
      driftCheckIntervalMs: e.MEMPLANE_DRIFT_CHECK_INTERVAL_MS,
    },
  };
}

/** For entry points: a configuration error is printed with the setting's name and ends the process with status 2. */
export function loadConfigOrExit(env: NodeJS.ProcessEnv = process.env): AppConfig {
  try {
    return loadConfig(env);
  } catch (e) {
    if (e instanceof ConfigError) {
      console.error(e.message);
      process.exit(2);
    }
    throw e;
  }
}
