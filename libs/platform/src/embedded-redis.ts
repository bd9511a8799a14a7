import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import { createConnection } from 'node:net';

/**
 * A local redis-server on loopback for the embedded default. No npm package
 * ships a Redis binary, so Debian's package is used; as root it is installed
 * when missing, otherwise the error says how to get one or use REDIS_URL.
 */
export interface EmbeddedRedisHandle {
  url: string;
  stop(): Promise<void>;
}

export class RedisUnavailableError extends Error {}

function findRedisServer(): string | undefined {
  for (const candidate of ['/usr/bin/redis-server', '/usr/local/bin/redis-server']) {
    const r = spawnSync(candidate, ['--version'], { stdio: 'ignore' });
    if (r.status === 0) return candidate;
  }
  const which = spawnSync('sh', ['-c', 'command -v redis-server'], { encoding: 'utf8' });
  return which.status === 0 ? which.stdout.trim() : undefined;
}

function installRedis(log: (line: string) => void): void {
  const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;
  if (!isRoot) {
    throw new RedisUnavailableError(
      'redis-server is not installed. Install it (Debian/Ubuntu: sudo apt-get install -y redis-server) or point REDIS_URL at a Redis server.',
    );
  }
  log('redis-server is missing: installing Debian package redis-server (running as root)');
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const update = spawnSync('apt-get', ['update', '-qq'], { stdio: 'inherit', env });
  const install = spawnSync('apt-get', ['install', '-y', '-qq', 'redis-server'], { stdio: 'inherit', env });
  if (update.status !== 0 || install.status !== 0) {
    throw new RedisUnavailableError('installing redis-server with apt-get failed; install it by hand or set REDIS_URL');
  }
}

export async function ping(port: number, timeoutMs = 500): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ host: '127.0.0.1', port });
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once('error', () => done(false));
    socket.once('connect', () => socket.write('PING\r\n'));
    socket.once('data', (d) => done(d.toString().startsWith('+PONG')));
  });
}

export async function startEmbeddedRedis(opts: { dir: string; port: number; log?: (line: string) => void }): Promise<EmbeddedRedisHandle> {
  const log = opts.log ?? (() => undefined);
  const url = `redis://127.0.0.1:${opts.port}`;
  if (await ping(opts.port)) {
    log(`reusing the local redis-server already answering on port ${opts.port}`);
    return { url, stop: async () => undefined };
  }
  let binary = findRedisServer();
  if (!binary) {
    installRedis(log);
    binary = findRedisServer();
    if (!binary) throw new RedisUnavailableError('redis-server still not found after installing it; set REDIS_URL');
  }
  await mkdir(opts.dir, { recursive: true });
  const child: ChildProcess = spawn(
    binary,
    [
      '--port', String(opts.port),
      '--bind', '127.0.0.1',
      '--dir', opts.dir,
      // BullMQ requires that Redis never evicts its keys.
      '--maxmemory-policy', 'noeviction',
      '--appendonly', 'yes',
      '--save', '',
      '--daemonize', 'no',
      '--protected-mode', 'yes',
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let exited = false;
  child.once('exit', () => (exited = true));
  const deadline = Date.now() + 10_000;
  while (!(await ping(opts.port))) {
    if (exited) throw new RedisUnavailableError(`redis-server exited while starting on port ${opts.port}`);
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new RedisUnavailableError(`redis-server did not answer on port ${opts.port} within 10 s`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    url,
    stop: () =>
      new Promise<void>((resolve) => {
        if (exited) return resolve();
        child.once('exit', () => resolve());
        child.kill('SIGTERM');
      }),
  };
}
