/**
 * Ledger benchmark (not a test): concurrent gRPC clients creating and deleting
 * memory groups, first all on one hot pool, then spread over 100 pools, side by
 * side with a baseline that does the same reservation as a bare SQL transaction
 * through `pg` (lock the pool row, read its extents, run the same pure
 * allocator, write the extents, the pool's allocated_bytes and the group row),
 * then an invariant check over every pool.
 *
 *   npm run bench:ledger                       (after a build)
 *   node dist/bench/ledger.bench.js [--seconds 10] [--hot-clients 8] [--spread-clients 12] [--in-process] [--pg-statements]
 *
 * With --pg-statements, Postgres records every statement (pg_stat_statements, nested ones
 * and planning included) and what ran during the 100-pool API run is printed per allocation.
 *
 * It starts its own embedded Postgres and redis-server under .cache/bench-ledger-<pid>
 * and the API as a child process (`node dist/apps/api/src/main.js`, i.e. startMemplane),
 * or in this process with --in-process. Each client keeps up to 4 groups alive on its
 * own VM: it creates one, and once it holds 4 it deletes its oldest, so every pool keeps
 * a changing, fragmenting set of extents. An allocation is one successful create; a
 * release is one successful delete; both go through the pool's row lock.
 *
 * The default client counts are this 2-core machine's best operating point for the
 * API. On the hot pool, changes that arrive together share one transaction (group
 * commit), so up to about 8 clients the batches grow and each change costs less CPU
 * (4 clients: ~300 alloc/s at 2.4 ms CPU per operation; 8: ~400/s at 1.7 ms; 16: no
 * faster, p99 twice as long). The bare `pg` baseline, one transaction per change
 * queued on the pool's row lock, is best at 4 clients (~280-310/s) and only queues
 * longer beyond that (8 clients: p99 above 50 ms). Across 100 pools, more than 12
 * clients only queue for the two cores the API, Postgres and these clients share.
 * It also prints the CPU each ledger operation costs in each process, which is
 * what bounds the 100-pool figure here, and a ceiling: the same clients and calls against
 * bench/grpc-noop-server.ts, a grpc-js server with the same generated service that answers
 * at once (no service, no database). No service behind this interface can go faster on
 * the machine the benchmark runs on.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { credentials, Metadata, type ServiceError } from '@grpc/grpc-js';
import { Pool as PgPool, type PoolClient } from 'pg';
import { checkLedgerInvariants, GiB, ledgerRelease, ledgerReserve, MiB, TiB, type LedgerExtent } from '#domain';
import { generateApiKey } from '#application';
import { applyMigrations, freePort, loadConfig, projectRoot, startEmbeddedPostgres, startEmbeddedRedis } from '#platform';
import { startMemplane } from '../apps/api/src/server';
import { PG_STATEMENTS_SETTINGS, statementsSince } from './pg-statements';
import {
  CreateMemoryGroupRequest,
  DeleteMemoryGroupRequest,
  GroupOnlineType,
  MemoryGroupKind,
  MemoryGroupServiceClient,
} from '#contracts/generated/memplane/v1/memory_group';

const args = process.argv.slice(2);
const opt = (name: string, dflt: number) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : dflt;
};
const SECONDS = opt('seconds', 10);
const HOT_CLIENTS = opt('hot-clients', 8);
const SPREAD_CLIENTS = opt('spread-clients', 12);
const PG_STATEMENTS = args.includes('--pg-statements');
const IN_PROCESS = args.includes('--in-process');
const LIVE_PER_CLIENT = 4;
const SPREAD_POOLS = 100;
const GROUP_BYTES = 256 * MiB;



interface Stats {
  allocations: number;
  releases: number;
  refused: number;
  latenciesMs: number[];
  seconds: number;
  /** CPU seconds spent during the run: API process, Postgres (all its processes), this process (the clients). */
  cpu: { api: number; postgres: number; clients: number };
}

const TICKS = 100; // USER_HZ
/** utime + stime of a process (plus, with `children`, of its exited children), in seconds (0 once it is gone). */
function cpuSeconds(pid: number, children = false): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const own = Number(fields[11]) + Number(fields[12]);
    return (children ? own + Number(fields[13]) + Number(fields[14]) : own) / TICKS;
  } catch {
    return 0;
  }
}
/** Postgres: the postmaster and every process it forked (backends, WAL writer, …). */
function postgresPids(dataDir: string): number[] {
  let postmaster: number;
  try {
    postmaster = Number(readFileSync(join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
  } catch {
    return [];
  }
  const out = [postmaster];
  for (const d of readdirSync('/proc')) {
    if (!/^[0-9]+$/.test(d)) continue;
    try {
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === postmaster) out.push(Number(d));
    } catch {
      /* gone */
    }
  }
  return out;
}
let apiPid = process.pid;
let pgDataDir = '';
function cpuNow(): { api: number; postgres: number; clients: number; pgPids: number[] } {
  const pgPids = postgresPids(pgDataDir);
  const self = process.cpuUsage();
  const selfSeconds = (self.user + self.system) / 1e6;
  const api = apiPid === process.pid ? 0 : cpuSeconds(apiPid);
  // The postmaster reaps its backends, so its children's times include backends that exited during the run.
  const [postmaster, ...backends] = pgPids;
  const postgres = postmaster === undefined ? 0 : cpuSeconds(postmaster, true) + backends.reduce((s, p) => s + cpuSeconds(p), 0);
  return { api, postgres, clients: selfSeconds, pgPids };
}

/** bench/grpc-noop-server.ts in a child process, as the API runs in one. */
async function startNoopServer(root: string): Promise<{ port: number; pid: number; stop: () => Promise<void> }> {
  const child = spawn(process.execPath, [join(root, 'dist', 'bench', 'grpc-noop-server.js')], { stdio: ['ignore', 'pipe', 'inherit'] });
  const port = await new Promise<number>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /port (\d+)/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    child.once('exit', (code) => reject(new Error(`grpc-noop-server exited with ${code}`)));
  });
  return { port, pid: child.pid!, stop: () => stopChild(child) };
}

/** SIGTERM, then wait for the exit (at once if it has exited). */
function stopChild(child: ChildProcess): Promise<void> {
  return new Promise<void>((resolve) => {
    if (child.exitCode !== null) return resolve();
    child.once('exit', () => resolve());
    child.kill('SIGTERM');
  });
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

/** Runs `clients` loops for SECONDS; each op returns 'alloc' | 'release' | 'refused'. */
async function drive(clients: number, step: (client: number, i: number) => Promise<'alloc' | 'release' | 'refused'>): Promise<Stats> {
  const stats: Stats = { allocations: 0, releases: 0, refused: 0, latenciesMs: [], seconds: SECONDS, cpu: { api: 0, postgres: 0, clients: 0 } };
  const before = cpuNow();
  const t0 = performance.now();
  const deadline = t0 + SECONDS * 1000;
  await Promise.all(
    Array.from({ length: clients }, async (_, c) => {
      for (let i = 0; performance.now() < deadline; i++) {
        const s = performance.now();
        const r = await step(c, i);
        stats.latenciesMs.push(performance.now() - s);
        if (r === 'alloc') stats.allocations++;
        else if (r === 'release') stats.releases++;
        else stats.refused++;
      }
    }),
  );
  stats.seconds = (performance.now() - t0) / 1000;
  const after = cpuNow();
  stats.cpu = { api: after.api - before.api, postgres: after.postgres - before.postgres, clients: after.clients - before.clients };
  stats.latenciesMs.sort((a, b) => a - b);
  return stats;
}

async function main(): Promise<void> {
  const root = projectRoot();
  const dir = join(root, '.cache', `bench-ledger-${process.pid}`);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const stops: (() => Promise<void>)[] = [async () => rmSync(dir, { recursive: true, force: true })];
  const stopAll = async () => {
    for (const s of stops.reverse()) await s().catch(() => undefined);
  };
  process.once('SIGINT', () => void stopAll().then(() => process.exit(130)));
  try {
    console.log(`# ledger benchmark: ${cpus().length} CPUs, load average ${loadavg().map((l) => l.toFixed(2)).join(' ')}; ${SECONDS} s per run`);
    pgDataDir = join(dir, 'postgres');
    const pg = await startEmbeddedPostgres({ dir: pgDataDir, port: await freePort(), database: 'memplane', ...(PG_STATEMENTS ? { settings: PG_STATEMENTS_SETTINGS } : {}) });
    stops.push(pg.stop);
    const redis = await startEmbeddedRedis({ dir: join(dir, 'redis'), port: await freePort() });
    stops.push(redis.stop);
    await applyMigrations(pg.url);

    const key = generateApiKey();
    const httpPort = await freePort();
    const grpcPort = await freePort();
    const env = {
      DATABASE_URL: pg.url,
      REDIS_URL: redis.url,
      MEMPLANE_HTTP_PORT: String(httpPort),
      MEMPLANE_GRPC_PORT: String(grpcPort),
      MEMPLANE_BOOTSTRAP_KEY: key,
      MEMPLANE_LOG_LEVEL: 'error',
    };
    if (IN_PROCESS) {
      const running = await startMemplane(loadConfig(env));
      stops.push(running.stop);
    } else {
      const nodeArgs = process.env.MEMPLANE_BENCH_API_NODE_ARGS?.split(' ').filter(Boolean) ?? [];
      const child: ChildProcess = spawn(process.execPath, [...nodeArgs, join(root, 'dist', 'apps', 'api', 'src', 'main.js')], { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'inherit'] });
      apiPid = child.pid ?? process.pid;
      stops.push(() => stopChild(child));
      for (let i = 0; ; i++) {
        const ok = await fetch(`http://127.0.0.1:${httpPort}/readyz`).then((r) => r.ok, () => false);
        if (ok) break;
        if (i > 300 || child.exitCode !== null) throw new Error('the API did not become ready');
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    const rest = async (method: string, path: string, body?: unknown) => {
      const r = await fetch(`http://127.0.0.1:${httpPort}${path}`, {
        method,
        headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
        ...(body ? { body: JSON.stringify(body) } : {}),
      });
      if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${await r.text()}`);
      return r.json();
    };

    // Inventory: one host with a large CXL node; a hot pool, 100 spread pools; a VM per client per phase.
    await rest('POST', '/v1/hosts', {
      name: 'bench-host',
      nodes: [
        { nodeId: 0, cpus: [0, 1], memoryBytes: 512 * GiB, kind: 'DRAM' },
        { nodeId: 1, cpus: [], memoryBytes: 64 * TiB, kind: 'CXL' },
      ],
    });
    const hotCapacity = (HOT_CLIENTS + 1) * LIVE_PER_CLIENT * GROUP_BYTES * 4;
    await rest('POST', '/v1/pools', { name: 'hot', host: 'bench-host', hostNodeId: 1, capacityBytes: hotCapacity });
    await rest('POST', '/v1/pools', { name: 'hot-pg', host: 'bench-host', hostNodeId: 1, capacityBytes: hotCapacity });
    const spreadPools = Array.from({ length: SPREAD_POOLS }, (_, i) => `p-${String(i).padStart(3, '0')}`);
    for (const p of spreadPools) {
      await rest('POST', '/v1/pools', { name: p, host: 'bench-host', hostNodeId: 1, capacityBytes: 64 * GiB });
      await rest('POST', '/v1/pools', { name: `${p}-pg`, host: 'bench-host', hostNodeId: 1, capacityBytes: 64 * GiB });
    }
    const vmNames = (phase: string, n: number) => Array.from({ length: n }, (_, i) => `${phase}-vm-${i}`);
    const allVms = [...vmNames('hot', HOT_CLIENTS), ...vmNames('spread', SPREAD_CLIENTS), ...vmNames('pg', Math.max(HOT_CLIENTS, SPREAD_CLIENTS))];
    for (const name of allVms) {
      await rest('POST', '/v1/vms', {
        name,
        host: 'bench-host',
        kernelProfile: 'linux-6.12',
        guestNodes: [{ guestNodeId: 0, vcpus: 2, bootMemoryBytes: 4 * GiB }],
        memorySlots: 256,
        maxMemoryBytes: 4 * TiB,
      });
    }

    // ---- through the API (gRPC)
    const client = new MemoryGroupServiceClient(`127.0.0.1:${grpcPort}`, credentials.createInsecure());
    const md = new Metadata();
    md.set('authorization', `Bearer ${key}`);
    const unaryOn =
      (via: MemoryGroupServiceClient) =>
      <Req>(method: 'createMemoryGroup' | 'deleteMemoryGroup', req: Req) =>
        new Promise<void>((resolve, reject) => (via[method] as (r: Req, m: Metadata, cb: (e: ServiceError | null) => void) => void).call(via, req, md, (e) => (e ? reject(e) : resolve())));

    let runs = 0;
    const apiRun = async (phase: string, clients: number, poolOf: (c: number, i: number) => string, via = client): Promise<Stats> => {
      const run = ++runs;
      const unary = unaryOn(via);
      const live: { vm: string; name: string }[][] = Array.from({ length: clients }, () => []);
      return drive(clients, async (c, i) => {
        const vm = `${phase}-vm-${c}`;
        if (live[c]!.length >= LIVE_PER_CLIENT) {
          const g = live[c]!.shift()!;
          await unary('deleteMemoryGroup', DeleteMemoryGroupRequest.fromPartial({ vm: g.vm, name: g.name, requestId: `del-${run}-${phase}-${c}-${i}` }));
          return 'release';
        }
        const name = `g-${i}`;
        const dynamic = i % 4 === 3;
        const group = dynamic
          ? { name, pool: poolOf(c, i), kind: MemoryGroupKind.MEMORY_GROUP_KIND_DYNAMIC, maxSizeBytes: BigInt(GiB), requestedBytes: BigInt(GROUP_BYTES), onlineType: GroupOnlineType.GROUP_ONLINE_TYPE_ONLINE_MOVABLE }
          : { name, pool: poolOf(c, i), kind: MemoryGroupKind.MEMORY_GROUP_KIND_STATIC, sizeBytes: BigInt(GROUP_BYTES), onlineType: GroupOnlineType.GROUP_ONLINE_TYPE_ONLINE_MOVABLE };
        try {
          await unary('createMemoryGroup', CreateMemoryGroupRequest.fromPartial({ vm, memoryGroup: group, requestId: `new-${run}-${phase}-${c}-${i}` }));
        } catch (e) {
          if ((e as ServiceError).code === 8 /* RESOURCE_EXHAUSTED */) return 'refused';
          throw e;
        }
        live[c]!.push({ vm, name });
        return 'alloc';
      });
    };

    // ---- the same reservation as a bare SQL transaction through pg
    const db = new PgPool({ connectionString: pg.url, max: 20, idleTimeoutMillis: 0 });
    stops.push(() => db.end());
    const ids = new Map<string, { id: string; capacity: number; granule: number }>();
    for (const r of (await db.query(`select id, name, capacity_bytes, granule_bytes from pools`)).rows) {
      ids.set(r.name, { id: r.id, capacity: Number(r.capacity_bytes), granule: Number(r.granule_bytes) });
    }
    const vmIds = new Map<string, string>((await db.query(`select id, name from vms`)).rows.map((r: { id: string; name: string }) => [r.name, r.id]));
    const tx = async <T>(fn: (c: PoolClient) => Promise<T>): Promise<T> => {
      const c = await db.connect();
      try {
        await c.query('begin');
        const out = await fn(c);
        await c.query('commit');
        return out;
      } catch (e) {
        await c.query('rollback').catch(() => undefined);
        throw e;
      } finally {
        c.release();
      }
    };
    const ledgerOf = async (c: PoolClient, poolName: string) => {
      const p = ids.get(poolName)!;
      await c.query('select allocated_bytes from pools where id = $1 for no key update', [p.id]);
      const rows = (await c.query('select group_id, offset_bytes, size_bytes from pool_extents where pool_id = $1', [p.id])).rows;
      const extents: LedgerExtent[] = rows.map((r: { group_id: string; offset_bytes: string; size_bytes: string }) => ({ groupId: r.group_id, offsetBytes: Number(r.offset_bytes), sizeBytes: Number(r.size_bytes) }));
      return { p, state: { capacityBytes: p.capacity, granuleBytes: p.granule, extents } };
    };
    const writeChange = async (c: PoolClient, poolId: string, groupId: string, added: readonly LedgerExtent[], removed: readonly LedgerExtent[], held: number) => {
      for (const e of removed) await c.query('delete from pool_extents where pool_id = $1 and group_id = $2 and offset_bytes = $3', [poolId, groupId, e.offsetBytes]);
      for (const e of added) await c.query('insert into pool_extents (pool_id, group_id, offset_bytes, size_bytes) values ($1, $2, $3, $4)', [poolId, groupId, e.offsetBytes, e.sizeBytes]);
      const delta = added.reduce((s, e) => s + e.sizeBytes, 0) - removed.reduce((s, e) => s + e.sizeBytes, 0);
      await c.query('update pools set allocated_bytes = allocated_bytes + $2 where id = $1', [poolId, delta]);
      await c.query('update memory_groups set held_bytes = $2 where id = $1', [groupId, held]);
    };
    const pgRun = async (clients: number, poolOf: (c: number, i: number) => string): Promise<Stats> => {
      const run = ++runs;
      const live: { groupId: string; pool: string }[][] = Array.from({ length: clients }, () => []);
      return drive(clients, async (c, i) => {
        if (live[c]!.length >= LIVE_PER_CLIENT) {
          const g = live[c]!.shift()!;
          await tx(async (client) => {
            const { p, state } = await ledgerOf(client, g.pool);
            const change = ledgerRelease(state, g.groupId);
            await writeChange(client, p.id, g.groupId, change.added, change.removed, 0);
            await client.query('delete from memory_groups where id = $1', [g.groupId]);
          });
          return 'release';
        }
        const pool = poolOf(c, i);
        const dynamic = i % 4 === 3;
        const groupId = await tx(async (client) => {
          const p = ids.get(pool)!;
          const g = await client.query(
            `insert into memory_groups (id, vm_id, name, pool_id, kind, size_bytes, max_size_bytes, block_size_bytes, requested_bytes, online_type)
             values (gen_random_uuid(), $1, $2, $3, $4, $5, $6, $7, $8, 'ONLINE_MOVABLE') returning id`,
            [vmIds.get(`pg-vm-${c}`), `g-${run}-${i}`, p.id, dynamic ? 'DYNAMIC' : 'STATIC', dynamic ? 0 : GROUP_BYTES, dynamic ? GiB : 0, dynamic ? 2 * MiB : 0, dynamic ? GROUP_BYTES : 0],
          );
          const id = g.rows[0].id as string;
          const { state } = await ledgerOf(client, pool);
          const change = ledgerReserve(state, id, GROUP_BYTES);
          await writeChange(client, p.id, id, change.added, change.removed, change.heldBytes);
          return id;
        });
        live[c]!.push({ groupId, pool });
        return 'alloc';
      });
    };

    const spreadPool = (suffix: string) => (c: number, i: number) => `${spreadPools[(c * 37 + i * 11) % SPREAD_POOLS]!}${suffix}`;
    const results: { scenario: string; clients: number; api: Stats; pg: Stats }[] = [];
    console.log('# warming up');
    await apiRun('hot', HOT_CLIENTS, () => 'hot').catch((e) => {
      throw e;
    });
    // The warm-up leaves groups behind on the hot VMs; start every measured run from empty VMs.
    await db.query(`delete from pool_extents`);
    await db.query(`delete from memory_groups`);
    await db.query(`update pools set allocated_bytes = 0`);

    console.log(`# hot pool: ${HOT_CLIENTS} clients`);
    const hotApi = await apiRun('hot', HOT_CLIENTS, () => 'hot');
    const hotPg = await pgRun(HOT_CLIENTS, () => 'hot-pg');
    results.push({ scenario: 'one hot pool', clients: HOT_CLIENTS, api: hotApi, pg: hotPg });
    console.log(`# ${SPREAD_POOLS} pools: ${SPREAD_CLIENTS} clients`);
    const statements = PG_STATEMENTS ? await statementsSince(pg.url, 'the 100-pool API run', 'allocation') : undefined;
    const spreadApi = await apiRun('spread', SPREAD_CLIENTS, spreadPool(''));
    if (statements) console.log((await statements(spreadApi.allocations)).join('\n'));
    const spreadPg = await pgRun(SPREAD_CLIENTS, spreadPool('-pg'));
    results.push({ scenario: `${SPREAD_POOLS} pools`, clients: SPREAD_CLIENTS, api: spreadApi, pg: spreadPg });
    client.close();

    // ---- the ceiling: the same clients and calls against a gRPC server that answers at once
    console.log(`# ceiling: the same ${SPREAD_CLIENTS} clients against a no-op gRPC server (grpc-noop-server.js: no service, no database)`);
    const ceiling = await startNoopServer(root);
    stops.push(ceiling.stop);
    const noop = new MemoryGroupServiceClient(`127.0.0.1:${ceiling.port}`, credentials.createInsecure());
    const servicePid = apiPid;
    apiPid = ceiling.pid;
    const ceilingStats = await apiRun('spread', SPREAD_CLIENTS, spreadPool(''), noop);
    apiPid = servicePid;
    noop.close();

    const rate = (s: Stats) => s.allocations / s.seconds;
    const f = (n: number, d = 0) => n.toFixed(d).padStart(8);
    console.log('');
    console.log('scenario       clients | API (gRPC)  alloc/s  release/s   p50 ms   p99 ms refused | bare pg  alloc/s  release/s   p50 ms   p99 ms | API/pg');
    for (const r of results) {
      console.log(
        `${r.scenario.padEnd(14)} ${String(r.clients).padStart(7)} |          ${f(rate(r.api))}   ${f(r.api.releases / r.api.seconds)} ${f(percentile(r.api.latenciesMs, 50), 2)} ${f(percentile(r.api.latenciesMs, 99), 2)} ${String(r.api.refused).padStart(7)} |         ${f(rate(r.pg))}   ${f(r.pg.releases / r.pg.seconds)} ${f(percentile(r.pg.latenciesMs, 50), 2)} ${f(percentile(r.pg.latenciesMs, 99), 2)} | ${(rate(r.api) / rate(r.pg)).toFixed(2).padStart(6)}`,
      );
    }
    console.log(
      `${'no-op gRPC'.padEnd(14)} ${String(SPREAD_CLIENTS).padStart(7)} |          ${f(rate(ceilingStats))}   ${f(ceilingStats.releases / ceilingStats.seconds)} ${f(percentile(ceilingStats.latenciesMs, 50), 2)} ${f(percentile(ceilingStats.latenciesMs, 99), 2)}         | (the ceiling: the same calls answered at once, no service, no database)`,
    );
    console.log('(latencies are per ledger operation, create or delete, as the client sees them)');
    console.log('');
    console.log('CPU per ledger operation (ms)   API process  Postgres  clients (this process)  total | machine CPU used of 2 cores');
    const cpuRows = results.flatMap((r) => [[`${r.scenario}, API`, r.api], [`${r.scenario}, bare pg`, r.pg]] as const);
    for (const [label, st] of [...cpuRows, ['no-op gRPC server (ceiling)', ceilingStats]] as const) {
      const ops = st.allocations + st.releases + st.refused;
      const per = (x: number) => ((x * 1000) / ops).toFixed(2).padStart(8);
      const total = st.cpu.api + st.cpu.postgres + st.cpu.clients;
      console.log(`${label.padEnd(32)} ${per(st.cpu.api)}    ${per(st.cpu.postgres)}   ${per(st.cpu.clients)}              ${per(total)} | ${((total / st.seconds / cpus().length) * 100).toFixed(0)} %`);
    }

    // ---- invariants over every pool, read straight from the tables
    const pools = (await db.query(`select id, name, capacity_bytes, granule_bytes, allocated_bytes from pools order by name`)).rows;
    const extents = (await db.query(`select pool_id, group_id, offset_bytes, size_bytes from pool_extents`)).rows;
    const byPool = new Map<string, LedgerExtent[]>();
    for (const e of extents) {
      const list = byPool.get(e.pool_id) ?? [];
      list.push({ groupId: e.group_id, offsetBytes: Number(e.offset_bytes), sizeBytes: Number(e.size_bytes) });
      byPool.set(e.pool_id, list);
    }
    let overlaps = 0;
    let overAllocated = 0;
    let mismatched = 0;
    let other = 0;
    for (const p of pools) {
      const list = byPool.get(p.id) ?? [];
      const report = checkLedgerInvariants({ capacityBytes: Number(p.capacity_bytes), granuleBytes: Number(p.granule_bytes), extents: list });
      overlaps += report.overlaps.length;
      other += report.invalid.length + report.misaligned.length + report.overCapacity.length;
      const sum = list.reduce((s, e) => s + e.sizeBytes, 0);
      if (Number(p.allocated_bytes) > Number(p.capacity_bytes)) overAllocated++;
      if (sum !== Number(p.allocated_bytes)) mismatched++;
    }
    const orphans = Number((await db.query(`select count(*) n from pool_extents e left join memory_groups g on g.id = e.group_id where g.id is null`)).rows[0].n);
    const heldMismatch = Number(
      (await db.query(`select count(*) n from memory_groups g where g.held_bytes <> coalesce((select sum(size_bytes) from pool_extents e where e.group_id = g.id), 0)`)).rows[0].n,
    );
    console.log('');
    console.log(
      `invariants over ${pools.length} pools, ${extents.length} extents: overlaps ${overlaps}, over-allocated pools ${overAllocated}, ` +
        `allocated_bytes ≠ Σ extents ${mismatched}, extents past capacity/misaligned/invalid ${other}, orphan extents ${orphans}, groups whose held_bytes ≠ their extents ${heldMismatch}`,
    );
    const targets = [
      ['≥ 1000 allocations/s across 100 pools', rate(spreadApi) >= 1000, `${rate(spreadApi).toFixed(0)}; the no-op gRPC ceiling here: ${rate(ceilingStats).toFixed(0)}`],
      ['≥ 300 allocations/s on one hot pool', rate(hotApi) >= 300, rate(hotApi).toFixed(0)],
      ['p99 ≤ 50 ms (hot pool)', percentile(hotApi.latenciesMs, 99) <= 50, percentile(hotApi.latenciesMs, 99).toFixed(1)],
      ['p99 ≤ 50 ms (100 pools)', percentile(spreadApi.latenciesMs, 99) <= 50, percentile(spreadApi.latenciesMs, 99).toFixed(1)],
      ['zero overlaps and zero over-allocation', overlaps + overAllocated + mismatched + other + orphans + heldMismatch === 0, String(overlaps + overAllocated)],
    ] as const;
    for (const [what, ok, got] of targets) console.log(`${ok ? 'MET   ' : 'MISSED'} ${what} (measured ${got})`);
    console.log(`# load average after: ${loadavg().map((l) => l.toFixed(2)).join(' ')}`);
    if (overlaps + overAllocated + mismatched + other + orphans + heldMismatch > 0) process.exitCode = 1;
  } finally {
    await stopAll();
  }
}

main().catch((e: unknown) => {
  console.error(`ledger benchmark failed: ${(e as Error)?.stack ?? String(e)}`);
  process.exit(1);
});
