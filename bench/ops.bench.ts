/**
 * Operations benchmark (not a test): what the control plane adds to a hotplug operation.
 *
 *   npm run bench:ops                          (after a build)
 *   node dist/bench/ops.bench.js [--iterations 100] [--queue-ops 1000] [--queue-vms 16] [--concurrency 16] [--end-claim-batch 32] [--end-claim-in-flight 2] [--skip-guest] [--skip-queue]
 *                                [--observe events|poll] [--aa] [--trace] [--profile-drain FILE.cpuprofile] [--profile-guest FILE.cpuprofile] [--pg-statements]
 *
 * 1. Queue machinery alone: Postgres, the outbox, BullMQ and the real executor, with the
 *    hypervisor replaced by an in-process recording driver (bench/recording-driver.ts, no
 *    QEMU): PLUG operations over several VMs are recorded through the REST API while no worker
 *    takes them, then one does; operations/s from then to the last SUCCEEDED. Twice: (a) a
 *    worker process started only then, cold (its connections, Postgres' first plans of its
 *    statements and the JIT fall in the drain); (b) a running worker, paused while the
 *    operations were recorded and then resumed (the target is about this one: a worker
 *    that runs). Then the same number again with REST clients creating while the worker
 *    runs (first request → last SUCCEEDED), which the API's own creation rate bounds.
 * 2. On a real guest (QEMU + Debian linux-6.12 guest): plug a 256 MiB STATIC group, shrink and
 *    grow a DYNAMIC (virtio-mem) group 512 MiB ↔ 128 MiB, unplug the static group — through the
 *    REST API (request → operation observed SUCCEEDED through its server-sent events, or with
 *    --observe poll by GETting it every 10 ms), beside a bare script issuing the same QMP/QGA
 *    steps straight through the worker's hypervisor driver (no API, no database, no queue),
 *    polling the guest every 10 ms. Who goes first alternates every iteration.
 *    The guest's own time varies a lot from one operation to the next (a shrink: 0.6-1.6 s),
 *    so each row also prints a bootstrap interval of how far the control plane's p99 is past
 *    the target's allowance, and --aa runs the bare script in both columns (an A/A run): what
 *    the comparison reads when nothing differs. With 30 iterations an A/A run read +152 ms
 *    "added" at p99 on one row; hence 100 iterations by default (about 6 minutes), where
 *    p99 is the 2nd slowest sample and an A/A run read between −13 and +120 ms (the shrink).

 * It starts its own embedded Postgres and redis-server under .cache/bench-ops-<pid>, the API
 * and the worker in this process. Targets (issue): the control plane adds at most 10 %, or at
 * most 60 ms at p99; the queue machinery runs ≥ 1,000 operations/s.
 */
import { mkdirSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { Session } from 'node:inspector';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { Client } from 'pg';
import { generateApiKey } from '#application';
import { applyMigrations, DEFAULT_WORKER_CONCURRENCY, freePort, loadConfig, projectRoot, startEmbeddedPostgres, startEmbeddedRedis } from '#platform';
import { ensureGuestImages } from '#testing/guest';
import { LocalHypervisorDriver, type HypervisorDriver } from '#hypervisor';
import { startMemplane } from '../apps/api/src/server';
import { startWorker, type RunningWorker } from '../apps/worker/src/worker';
import { guestExecutorConfig } from '../apps/worker/test/guest-executor';
import { RecordingDriver } from './recording-driver';
import { callsBetween, timedDriver } from './timed-driver';
import { PG_STATEMENTS_SETTINGS, statementsSince } from './pg-statements';
import { cxlHostBody, cxlVmBody, recordingExecutorConfig } from '#testing/fixtures';

const MiB = 1024 ** 2;
const GiB = 1024 ** 3;
const args = process.argv.slice(2);
const opt = (name: string, dflt: number) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : dflt;
};
const ITERATIONS = opt('iterations', 100);
const QUEUE_OPS = opt('queue-ops', 1000);
const QUEUE_VMS = opt('queue-vms', DEFAULT_WORKER_CONCURRENCY);
/** The worker's concurrency: its default, with one VM per slot. */
const CONCURRENCY = opt('concurrency', DEFAULT_WORKER_CONCURRENCY);
/** The worker's end-and-claim group commit (EndAndClaimBatcher): VMs per statement, statements in flight. */
const END_CLAIM = {
  ...(args.includes('--end-claim-batch') ? { maxBatch: opt('end-claim-batch', 32) } : {}),
  ...(args.includes('--end-claim-in-flight') ? { maxInFlight: opt('end-claim-in-flight', 1) } : {}),
};
const SKIP_GUEST = args.includes('--skip-guest');
const SKIP_QUEUE = args.includes('--skip-queue');
/** The API's and every worker's: the API queues the operations it records itself (OperationRelay), as in a deployment. */
const QUEUE_PREFIX = `mp${process.pid}`;
/**
 * How the REST client learns that an operation ended: `events` (default) follows the
 * operation's server-sent events (GET /v1/operations/{id}/events, woken by Postgres
 * NOTIFY on state changes); `poll` GETs the operation every POLL_MS.
 */
const OBSERVE = args.includes('--observe') ? args[args.indexOf('--observe') + 1] : 'events';
if (OBSERVE !== 'events' && OBSERVE !== 'poll') throw new Error(`--observe events|poll, not ${OBSERVE}`);
/** Print every driver call (offset from the request, duration) of each operation of the last iteration. */
const TRACE = args.includes('--trace');
/**
 * --aa: an A/A run. The bare script runs in the control plane's place too (same steps, same
 * alternation), so the table shows what the comparison reads when nothing differs: the
 * guest's own variance at these sample counts, the floor under any "added p99".
 */
const AA = args.includes('--aa');
/** With --pg-statements: Postgres' statements (pg_stat_statements, nested ones included) per operation, during the queue drain alone and during the real-guest iterations. */
const PG_STATEMENTS = args.includes('--pg-statements');
/** --pg-set name=value (repeatable): a Postgres server setting for the whole run, to measure what a setting changes. */
const PG_SETTINGS = Object.fromEntries(
  args.flatMap((a, i) => (a === '--pg-set' ? [args[i + 1] ?? ''] : [])).map((kv) => {
    const eq = kv.indexOf('=');
    if (eq <= 0) throw new Error(`--pg-set name=value, not ${kv}`);
    return [kv.slice(0, eq), kv.slice(eq + 1)];
  }),
);

/** With --profile-drain FILE: a V8 CPU profile of this process (worker, executor, recording driver) during the running worker's queue drain (1b) alone. */
const PROFILE_DRAIN = args.includes('--profile-drain') ? args[args.indexOf('--profile-drain') + 1] : undefined;
/** With --profile-guest FILE: a V8 CPU profile of this process during the real-guest iterations (both sides). */
const PROFILE_GUEST = args.includes('--profile-guest') ? args[args.indexOf('--profile-guest') + 1] : undefined;

/** Starts the profiler; the returned function stops it and writes the profile to `file`. */
async function startProfile(file: string): Promise<() => Promise<void>> {
  const session = new Session();
  session.connect();
  const post = (method: string, params?: object) =>
    new Promise<unknown>((resolve, reject) => session.post(method, params ?? {}, (e, r) => (e ? reject(e) : resolve(r))));
  await post('Profiler.enable');
  await post('Profiler.setSamplingInterval', { interval: 200 });
  await post('Profiler.start');
  return async () => {
    const { profile } = (await post('Profiler.stop')) as { profile: unknown };
    writeFileSync(file, JSON.stringify(profile));
    session.disconnect();
    console.log(`# CPU profile written to ${file}`);
  };
}
const POLL_MS = 10;



const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * CPU time (ms) used so far by this process and by the Postgres and redis-server processes
 * this benchmark started (their working directory is under `dir`), from /proc (Linux).
 */
function cpuMs(dir: string): { node: number; postgres: number; redis: number } {
  const tick = 1000 / 100; // USER_HZ
  const out = { node: 0, postgres: 0, redis: 0 };
  const self = process.cpuUsage();
  out.node = (self.user + self.system) / 1000;
  for (const pid of readdirSync('/proc')) {
    if (!/^\d+$/.test(pid) || Number(pid) === process.pid) continue;
    try {
      if (!readlinkSync(`/proc/${pid}/cwd`).startsWith(dir)) continue;
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const name = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      // utime + stime, and cutime + cstime: the postmaster reaps its backends, so a backend
      // that exits within the window (a pooled connection closed when idle) keeps counting.
      const ms = (Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14])) * tick;
      if (name.startsWith('postgres')) out.postgres += ms;
      else if (name.startsWith('redis')) out.redis += ms;
    } catch {
      /* gone meanwhile, or not ours to read */
    }
  }
  return out;
}

function pct(sorted: number[], p: number): number {
  if (!sorted.length) return NaN;
  const i = Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1);
  return sorted[Math.max(0, i)]!;
}
function stats(xs: number[]) {
  const s = [...xs].sort((a, b) => a - b);
  return { n: s.length, p50: pct(s, 50), p99: pct(s, 99), mean: s.reduce((a, b) => a + b, 0) / Math.max(1, s.length) };
}
const f = (x: number, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : '-');

/** 1st, 2nd, 3rd, 4th, …, 11th, 12th, 13th, …, 21st. */
const ordinal = (n: number) => {
  const teen = n % 100 >= 11 && n % 100 <= 13;
  return `${n}${teen ? 'th' : (['th', 'st', 'nd', 'rd'][n % 10] ?? 'th')}`;
};

/** The target's allowance over the bare script's p99: 60 ms, or 10 % of it when that is more. */
const allowanceMs = (bareP99: number) => Math.max(60, 0.1 * bareP99);

/** mulberry32: a small seeded generator, so a report's intervals follow from its samples alone. */
function seeded(seed: number): () => number {
  let a = seed | 0;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * How far the control plane's p99 is past the target's allowance (negative: inside it), as a
 * bootstrap interval: both sides resampled with replacement 2,000 times, the 5th and 95th
 * percentiles of (control plane p99 − bare p99 − allowance). The guest's own variance at p99
 * is large beside 60 ms (see --aa), so one point figure says little; an interval wholly below
 * 0 says the target holds at this sample count, wholly above says it does not. Extreme
 * quantiles are hard for any bootstrap: the interval is a guide to the noise, not a proof.
 */
function excessInterval(cpMs: readonly number[], bareMs: readonly number[]): { lo: number; hi: number } {
  const next = seeded(0x6d706c6e);
  const p99Of = (xs: readonly number[]) => pct(Array.from(xs, () => xs[Math.floor(next() * xs.length)]!).sort((a, b) => a - b), 99);
  const excess: number[] = [];
  for (let k = 0; k < 2000; k++) {
    const a = p99Of(cpMs);
    const b = p99Of(bareMs);
    excess.push(a - b - allowanceMs(b));
  }
  excess.sort((a, b) => a - b);
  return { lo: pct(excess, 5), hi: pct(excess, 95) };
}

let apiUrl = '';
let adminKey = '';
async function http(method: string, path: string, body?: unknown): Promise<{ status: number; body: any }> {
  const headers: Record<string, string> = { authorization: `Bearer ${adminKey}` };
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(`${apiUrl}${path}`, { method, headers, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
  const text = await res.text();
  let parsed: any = text;
  try {
    parsed = text ? JSON.parse(text) : undefined;
  } catch {
    /* not JSON */
  }
  return { status: res.status, body: parsed };
}
async function must(method: string, path: string, status: number, body?: unknown): Promise<any> {
  const r = await http(method, path, body);
  if (r.status !== status) throw new Error(`${method} ${path}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body;
}
async function waitOperation(name: string, timeoutMs = 180_000): Promise<any> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await must('GET', `/v1/operations/${name}`, 200);
    if (r.state === 'SUCCEEDED') return r;
    if (['FAILED', 'CANCELLED'].includes(r.state)) throw new Error(`operation ${name} ${r.state}: ${JSON.stringify(r.error ?? r)}`);
    if (Date.now() > deadline) throw new Error(`operation ${name} still ${r.state} after ${timeoutMs} ms`);
    await sleep(POLL_MS);
  }
}

/** Follows the operation's server-sent events until it ends; resolves with it once SUCCEEDED. */
async function followOperation(name: string, timeoutMs = 180_000): Promise<any> {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), timeoutMs);
  try {
    const res = await fetch(`${apiUrl}/v1/operations/${name}/events`, { headers: { authorization: `Bearer ${adminKey}`, accept: 'text/event-stream' }, signal: abort.signal });
    if (res.status !== 200) throw new Error(`GET /v1/operations/${name}/events: ${res.status} ${await res.text()}`);
    const decoder = new TextDecoder();
    let buffer = '';
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      buffer += decoder.decode(chunk, { stream: true });
      let i: number;
      while ((i = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, i);
        buffer = buffer.slice(i + 2);
        let event = 'message';
        let data = '';
        for (const line of block.split('\n')) {
          if (line.startsWith('event: ')) event = line.slice(7);
          else if (line.startsWith('data: ')) data += line.slice(6);
        }
        if (event === 'error') throw new Error(`operation ${name}: ${data}`);
        if (event !== 'message') continue;
        const op = JSON.parse(data);
        if (op.state === 'SUCCEEDED') return op;
        if (['FAILED', 'CANCELLED'].includes(op.state)) throw new Error(`operation ${name} ${op.state}: ${JSON.stringify(op.error ?? op)}`);
      }
    }
    throw new Error(`the event stream of operation ${name} ended before it did`);
  } finally {
    clearTimeout(timer);
    abort.abort();
  }
}


// ------------------------------------------------------------------ queue machinery

async function queueBench(databaseUrl: string, redisUrl: string, runtimeDir: string, benchDir: string): Promise<string[]> {
  const driver = new RecordingDriver();
  const workerOptions = {
    databaseUrl,
    redisUrl,
    prefix: QUEUE_PREFIX,
    intake: false,
    concurrency: CONCURRENCY,
    endAndClaim: END_CLAIM,
    driver,
    executor: recordingExecutorConfig(runtimeDir),
  };
  let worker: RunningWorker | undefined = await startWorker(workerOptions);
  const pg = new Client({ connectionString: databaseUrl });
  await pg.connect();
  const out: string[] = [];
  // Each run has VMs of its own (QUEUE_VMS of them), so each starts from VMs with one group:
  // an operation's work grows with the devices its VM already has.
  const RUNS = 3;
  const perVm = Math.ceil(QUEUE_OPS / QUEUE_VMS);
  const createPlugs = async (run: number) => {
    const from = run * QUEUE_OPS;
    const jobs: { vm: number; name: string }[] = [];
    for (let i = from; i < from + QUEUE_OPS; i++) jobs.push({ vm: run * QUEUE_VMS + (i % QUEUE_VMS), name: `g-${i}` });
    let next = 0;
    await Promise.all(
      Array.from({ length: 32 }, async () => {
        while (next < jobs.length) {
          const j = jobs[next++]!;
          await must('POST', `/v1/vms/qvm-${j.vm}/memory-groups`, 201, { name: j.name, pool: 'cxl-queue', kind: 'STATIC', sizeBytes: 128 * MiB, onlineType: 'ONLINE_MOVABLE' });
        }
      }),
    );
  };
  const maxSeq = async () => Number((await pg.query<{ max: string | null }>(`select max(seq)::text as max from operations`)).rows[0]?.max ?? 0);
  /**
   * Waits until every operation after `seqFloor` ended (looking every 20 ms: the looking
   * costs this process and Postgres CPU the drain would otherwise have); returns when that
   * was seen, and when the last one ended by Postgres' clock (epoch ms).
   */
  const allEnded = async (seqFloor: number) => {
    const deadline = Date.now() + 120_000;
    for (;;) {
      const { rows } = await pg.query<{ state: string; n: string; last: string | null }>(
        `select state::text as state, count(*)::text as n, (extract(epoch from max(ended_at)) * 1000)::text as last from operations where seq > $1 group by state`,
        [seqFloor],
      );
      const done = Number(rows.find((r) => r.state === 'SUCCEEDED')?.n ?? 0);
      const failed = rows.filter((r) => r.state === 'FAILED' || r.state === 'CANCELLED').reduce((a, r) => a + Number(r.n), 0);
      if (done + failed >= QUEUE_OPS || Date.now() > deadline) {
        return { done, failed, at: performance.now(), lastEndedAt: Math.max(...rows.map((r) => Number(r.last ?? 0))) };
      }
      await sleep(20);
    }
  };
  const latencies = async (seqFloor: number) => {
    const { rows } = await pg.query<{ ms: string }>(
      `select extract(epoch from (ended_at - created_at)) * 1000 as ms from operations where seq > $1 and state = 'SUCCEEDED'`,
      [seqFloor],
    );
    return stats(rows.map((r) => Number(r.ms)));
  };
  try {
    // The pool holds the three runs' plugs; the host's CXL node holds the pool (--queue-ops beyond ~1,000 needs more than 256 GiB).
    const poolBytes = (RUNS * (QUEUE_OPS + QUEUE_VMS) + 8) * 128 * MiB;
    await must('POST', '/v1/hosts', 201, cxlHostBody('hv-queue', Math.max(256 * GiB, poolBytes)));
    await must('POST', '/v1/pools', 201, { name: 'cxl-queue', host: 'hv-queue', hostNodeId: 1, capacityBytes: poolBytes });
    const vmIds: string[] = [];
    for (let v = 0; v < RUNS * QUEUE_VMS; v++) {
      const vm = await must('POST', '/v1/vms', 201, {
        name: `qvm-${v}`,
        host: 'hv-queue',
        kernelProfile: 'linux-6.12',
        guestNodes: [{ guestNodeId: 0, vcpus: 1, bootMemoryBytes: 512 * MiB, hostNodeId: 0 }],
        memorySlots: Math.min(256, perVm + 1),
        maxMemoryBytes: 512 * MiB + (perVm + 1) * 128 * MiB,
        sparePciePorts: 0,
      });
      vmIds.push(vm.uid);
      const start = await must('POST', `/v1/vms/qvm-${v}:start`, 202);
      await waitOperation(start.name, 30_000);
    }
    // Warm-up: one plug per VM (JIT, connection pools), not counted.
    await Promise.all(
      vmIds.map(async (_, v) => {
        const g = await must('POST', `/v1/vms/qvm-${v}/memory-groups`, 201, { name: 'warm', pool: 'cxl-queue', kind: 'STATIC', sizeBytes: 128 * MiB, onlineType: 'ONLINE_MOVABLE' });
        await waitOperation(g.operation, 30_000);
      }),
    );

    // 1. The queue machinery alone: QUEUE_OPS operations are recorded (through the API) while
    //    no worker takes them; then one does, outbox → BullMQ → executor → SUCCEEDED, twice:
    //    a. a worker process started only then (its connections, Postgres' first plans and
    //       the JIT are part of the drain);
    //    b. a running worker, paused (BullMQ Worker.pause) while they were recorded and then
    //       resumed: its connections are open, its statements planned. The target is about this one.
    const drain = async (run: number, label: string, idle: () => Promise<void>, begin: () => Promise<void>, diagnose: boolean): Promise<string[]> => {
      await idle();
      const floor = await maxSeq();
      const c0 = performance.now();
      await createPlugs(run);
      const createMs = performance.now() - c0;
      const calls0 = driver.calls.length;
      const batching0 = { ...(worker?.store.endAndClaims.stats ?? { statements: 0, items: 0 }) };
      // Diagnostics start before the drain's clocks do, so their setup is not counted in it.
      const stopProfile = diagnose && PROFILE_DRAIN ? await startProfile(PROFILE_DRAIN) : undefined;
      const statements = PG_STATEMENTS ? await statementsSince(databaseUrl) : undefined;
      const cpu0 = cpuMs(benchDir);
      const t1 = performance.now();
      const wall1 = Date.now();
      const mono1 = process.hrtime.bigint();
      await begin();
      const r1 = await allEnded(floor);
      const mono2 = process.hrtime.bigint();
      const cpu1 = cpuMs(benchDir);
      const batching1 = worker?.store.endAndClaims.stats ?? { statements: 0, items: 0 };
      const batching = { statements: batching1.statements - batching0.statements, items: batching1.items - batching0.items };
      const drainStatements = statements ? await statements(r1.done) : [];
      await stopProfile?.();
      // The drain ends when the last operation ended (Postgres' ended_at, same clock as this
      // machine's); the observed end is up to one look (20 ms) later.
      const drainMs = r1.lastEndedAt - wall1;
      // How long the worker took to hear of its first operation (part of the drain).
      const firstStartedAt = Number(
        (await pg.query<{ at: string | null }>(`select (extract(epoch from min(started_at)) * 1000)::text as at from operations where seq > $1`, [floor])).rows[0]?.at ?? wall1,
      );
      const observedMs = r1.at - t1;
      const rate = (r1.done / drainMs) * 1000;
      const l1 = await latencies(floor);
      const calls = driver.calls.length - calls0;
      const per = (k: 'node' | 'postgres' | 'redis') => f((cpu1[k] - cpu0[k]) / Math.max(1, r1.done), 2);
      return [
        `  ${label}: ${QUEUE_OPS} operations recorded through the API (${f(createMs, 0)} ms, ${f((QUEUE_OPS / createMs) * 1000, 0)} creations/s) while no worker took them, then:`,
        `     succeeded ${r1.done}, failed/cancelled ${r1.failed}; driver calls recorded: ${calls} (${f(calls / Math.max(1, r1.done), 1)} per operation)`,
        `     drain → last SUCCEEDED: ${f(drainMs, 0)} ms by ended_at (${f(observedMs, 0)} ms observed, ${f((r1.done / observedMs) * 1000, 1)}/s); per operation created → SUCCEEDED p50 ${f(l1.p50)} ms, p99 ${f(l1.p99)} ms (includes the time queued before the drain)`,
        `     CPU per operation: ${per('node')} ms this process (API idle, worker, recording driver, the poller), ${per('postgres')} ms Postgres, ${per('redis')} ms Redis; the drain kept ${f((cpu1.node + cpu1.postgres + cpu1.redis - cpu0.node - cpu0.postgres - cpu0.redis) / observedMs, 2)} of ${cpus().length} CPUs busy`,
        `     the first operation started ${f(firstStartedAt - wall1, 0)} ms after the drain began; from then on ${f((r1.done / Math.max(1, r1.lastEndedAt - firstStartedAt)) * 1000, 1)} operations/s`,
        `     end-and-claim statements: ${batching.statements} for ${batching.items} VM loop steps (${f(batching.items / Math.max(1, batching.statements), 2)} VMs per statement; options ${JSON.stringify(END_CLAIM)})`,
        // For `perf record -k CLOCK_MONOTONIC` (`perf report --time a,b`): the drain alone.
        `     drain window, CLOCK_MONOTONIC seconds: ${(Number(mono1) / 1e9).toFixed(6)},${(Number(mono2) / 1e9).toFixed(6)}`,
        `     throughput: ${f(rate, 1)} operations/s (by ended_at)${diagnose ? `   target ≥ 1000/s: ${rate >= 1000 ? 'MET' : 'NOT MET'}` : ''}`,
        ...drainStatements,
      ];
    };
    const cold = await drain(
      0,
      '1a. a worker process started after the operations were recorded (cold: connections, first plans, JIT)',
      async () => {
        await worker?.stop();
        worker = undefined;
      },
      async () => {
        worker = await startWorker(workerOptions);
      },
      false,
    );
    const running = await drain(
      1,
      '1b. the running worker, paused while the operations were recorded, then resumed',
      async () => worker!.worker!.pause(),
      async () => worker!.worker!.resume(),
      true,
    );

    // 2. End to end with the API in the loop: the same number of plugs created by REST
    //    clients while the worker runs (first request → last SUCCEEDED).
    const floor2 = await maxSeq();
    const t2 = performance.now();
    await createPlugs(2);
    const createdBy = performance.now() - t2;
    const wall2 = Date.now() - (performance.now() - t2);
    const r2 = await allEnded(floor2);
    const totalMs = r2.lastEndedAt - wall2;
    const rate2 = (r2.done / totalMs) * 1000;
    const l2 = await latencies(floor2);

    out.push('');
    out.push(`Queue machinery with an in-process recording driver (no QEMU) — Postgres + outbox + BullMQ + executor`);
    out.push(`  ${QUEUE_OPS} PLUG operations (STATIC 128 MiB) over ${QUEUE_VMS} VMs a run (each run its own VMs, with one group each before it), worker concurrency ${CONCURRENCY}, ${cpus().length} CPUs`);
    out.push(...cold, ...running);
    out.push(`  2. with the API in the loop: ${QUEUE_OPS} plugs created by 32 parallel REST clients while the worker runs`);
    out.push(`     succeeded ${r2.done}, failed/cancelled ${r2.failed}; all created after ${f(createdBy, 0)} ms, last SUCCEEDED after ${f(totalMs, 0)} ms by ended_at (${f(r2.at - t2, 0)} ms observed)`);
    out.push(`     per operation created → SUCCEEDED p50 ${f(l2.p50)} ms, p99 ${f(l2.p99)} ms, mean ${f(l2.mean)} ms`);
    out.push(`     throughput end to end (first request → last SUCCEEDED): ${f(rate2, 1)} operations/s (bounded by the API's creation rate)`);
  } finally {
    await pg.end().catch(() => undefined);
    await worker?.stop();
  }
  return out;
}

// ------------------------------------------------------------------ real guest

interface Samples {
  plug: number[];
  shrink: number[];
  grow: number[];
  unplug: number[];
}

async function blocksIn(driver: HypervisorDriver, vm: string, addr: number, region: number, bs: number) {
  const first = Math.floor(addr / bs);
  const end = Math.ceil((addr + region) / bs);
  return (await driver.guestMemoryBlocks(vm)).filter((b) => b.physIndex >= first && b.physIndex < end);
}

async function barePlug(driver: HypervisorDriver, vm: string, name: string, size: number, bs: number): Promise<void> {
  await driver.objectAdd(vm, 'memory-backend-ram', `memgrp-${name}`, { size });
  await driver.deviceAdd(vm, 'pc-dimm', `dimm-${name}`, { memdev: `memgrp-${name}`, node: 1 });
  const dev = (await driver.queryMemoryDevices(vm)).find((d) => d.id === `dimm-${name}`);
  if (!dev || dev.kind !== 'dimm') throw new Error(`bare: dimm-${name} not in query-memory-devices`);
  const want = Math.ceil(size / bs);
  for (;;) {
    const blocks = await blocksIn(driver, vm, dev.addressBytes, size, bs);
    if (blocks.length >= want) {
      const offline = blocks.filter((b) => !b.online).map((b) => b.physIndex);
      const res = await driver.onlineGuestMemoryBlocks(vm, offline, 'online_movable');
      const bad = res.filter((r) => r.response !== 'success');
      if (bad.length) throw new Error(`bare: online failed ${JSON.stringify(bad)}`);
      return;
    }
    await sleep(POLL_MS);
  }
}

async function bareUnplug(driver: HypervisorDriver, vm: string, name: string, bs: number): Promise<void> {
  const dev = (await driver.queryMemoryDevices(vm)).find((d) => d.id === `dimm-${name}`);
  if (!dev || dev.kind !== 'dimm') throw new Error(`bare: dimm-${name} not present`);
  const online = (await blocksIn(driver, vm, dev.addressBytes, dev.sizeBytes, bs)).filter((b) => b.online).map((b) => b.physIndex);
  const res = await driver.offlineGuestMemoryBlocks(vm, online);
  const bad = res.filter((r) => r.response !== 'success');
  if (bad.length) throw new Error(`bare: offline refused ${JSON.stringify(bad)}`);
  await driver.deviceDel(vm, `dimm-${name}`, { waitForDeleted: true, deletedTimeoutMs: 20_000 });
  await driver.objectDel(vm, `memgrp-${name}`);
}

async function bareResize(driver: HypervisorDriver, vm: string, deviceId: string, bytes: number, bs: number): Promise<void> {
  await driver.qomSet(vm, `/machine/peripheral/${deviceId}`, 'requested-size', bytes);
  const deadline = Date.now() + 60_000;
  for (;;) {
    const dev = (await driver.queryMemoryDevices(vm)).find((d) => d.id === deviceId);
    if (!dev || dev.kind !== 'virtio-mem') throw new Error(`bare: ${deviceId} not present`);
    if (dev.sizeBytes === bytes) {
      const needed = Math.ceil(bytes / bs);
      const blocks = await blocksIn(driver, vm, dev.addressBytes, dev.maxSizeBytes, bs);
      const online = blocks.filter((b) => b.online).length;
      if (online >= needed) return;
      const offline = blocks.filter((b) => !b.online).map((b) => b.physIndex);
      if (offline.length) await driver.onlineGuestMemoryBlocks(vm, offline.slice(0, needed - online), 'online_movable');
    }
    if (Date.now() > deadline) throw new Error(`bare: ${deviceId} did not reach ${bytes}`);
    await sleep(POLL_MS);
  }
}

async function guestBench(databaseUrl: string, redisUrl: string, runtimeDir: string): Promise<string[]> {
  ensureGuestImages('linux-6.12');
  // Both sides go through the same timed driver: calls and the time spent in QMP/QGA are counted per operation.
  const timed = timedDriver(new LocalHypervisorDriver({}));
  const worker: RunningWorker = await startWorker({
    driver: timed.driver,
    databaseUrl,
    redisUrl,
    prefix: QUEUE_PREFIX,
    intake: false,
    executor: guestExecutorConfig(runtimeDir),
  });
  const driver = worker.driver;
  let vmId = '';
  const out: string[] = [];
  try {
    await must('POST', '/v1/hosts', 201, cxlHostBody('hv-guest', 256 * GiB));
    await must('POST', '/v1/pools', 201, { name: 'cxl-guest', host: 'hv-guest', hostNodeId: 1, capacityBytes: 4 * GiB });
    const vm = await must('POST', '/v1/vms', 201, cxlVmBody('vm-bench', 'hv-guest', 'linux-6.12'));
    vmId = vm.uid;
    await must('POST', '/v1/vms/vm-bench/memory-groups', 201, { name: 'base', pool: 'cxl-guest', kind: 'STATIC', sizeBytes: 256 * MiB, onlineType: 'ONLINE_MOVABLE' });
    const bootT0 = performance.now();
    const start = await must('POST', '/v1/vms/vm-bench:start', 202);
    await waitOperation(start.name, 240_000);
    out.push(`  VM started (boot + static group) in ${f((performance.now() - bootT0) / 1000, 1)} s`);
    const dyn = await must('POST', '/v1/vms/vm-bench/memory-groups', 201, {
      name: 'vmem',
      pool: 'cxl-guest',
      kind: 'DYNAMIC',
      maxSizeBytes: 1 * GiB,
      blockSizeBytes: 2 * MiB,
      requestedBytes: 512 * MiB,
      onlineType: 'ONLINE_MOVABLE',
    });
    await waitOperation(dyn.operation, 60_000);
    const bs = await driver.guestMemoryBlockSizeBytes(vmId);

    const cp: Samples = { plug: [], shrink: [], grow: [], unplug: [] };
    const bare: Samples = { plug: [], shrink: [], grow: [], unplug: [] };
    const callStats: Record<string, { n: number; busyMs: number; samples: number }> = {};
    // Per operation: before its first QMP/QGA call began, and after its last one ended.
    const outside: Record<string, { lead: number[]; tail: number[] }> = {};
    const traces: string[] = [];
    const note = (label: string, t0: number, t1: number) => {
      const c = callsBetween(timed.calls, t0, t1);
      const s = (callStats[label] ??= { n: 0, busyMs: 0, samples: 0 });
      s.n += c.n;
      s.busyMs += c.busyMs;
      s.samples++;
      const o = (outside[label] ??= { lead: [], tail: [] });
      o.lead.push(c.leadMs);
      o.tail.push(c.tailMs);
      if (TRACE) traces.push(`  ${label}: ${(t1 - t0).toFixed(1)} ms, ${c.n} driver calls busy ${c.busyMs.toFixed(1)} ms`, ...c.list.map((l) => `      ${l}`));
    };
    let label = '';
    // This process's event loop (API, worker and this client share it) while each side's operations run.
    const loopDelay = { cp: monitorEventLoopDelay({ resolution: 1 }), bare: monitorEventLoopDelay({ resolution: 1 }) };
    const timeCp = async (req: () => Promise<any>) => {
      const wall = Date.now();
      loopDelay.cp.enable();
      const t = performance.now();
      const body = await req();
      const answered = performance.now() - t;
      const name = body.operation ?? body.name;
      await (OBSERVE === 'events' ? followOperation(name, 120_000) : waitOperation(name, 120_000));
      const t1 = performance.now();
      loopDelay.cp.disable();
      note(`control plane ${label}`, t, t1);
      if (TRACE) {
        // Where the control plane's own time goes: the operation's timestamps (Postgres' clock, this machine's) from the request.
        const db = new Client({ connectionString: databaseUrl });
        await db.connect();
        const r = (
          await db.query<{ c: number; s: number; e: number }>(
            `select extract(epoch from created_at) * 1000 - $2 as c, extract(epoch from started_at) * 1000 - $2 as s, extract(epoch from ended_at) * 1000 - $2 as e from operations where id = $1::uuid`,
            [String(name).split('/').pop(), wall],
          )
        ).rows[0];
        await db.end();
        if (r) traces.push(`      answered +${answered.toFixed(1)}, operation created +${Number(r.c).toFixed(1)}, claimed +${Number(r.s).toFixed(1)}, ended +${Number(r.e).toFixed(1)}, seen ended +${(t1 - t).toFixed(1)}`);
      }
      return t1 - t;
    };
    const timeBare = async (fn: () => Promise<void>, side = 'bare') => {
      loopDelay.bare.enable();
      const t = performance.now();
      await fn();
      const t1 = performance.now();
      loopDelay.bare.disable();
      note(`${side} ${label}`, t, t1);
      return t1 - t;
    };
    /** The control plane's column: the operation through the API, or in an A/A run (--aa) the bare script again. */
    const timeCpSide = (req: () => Promise<any>, aaStandIn: () => Promise<void>) => (AA ? timeBare(aaStandIn, 'control plane') : timeCp(req));
    const stmts = PG_STATEMENTS ? await statementsSince(databaseUrl, 'the control plane\'s operations') : undefined;
    const stopProfile = PROFILE_GUEST ? await startProfile(PROFILE_GUEST) : undefined;
    for (let i = 0; i < ITERATIONS; i++) {
      if (TRACE) traces.length = 0;
      // Alternate who goes first, so neither side always meets a guest that just did work.
      const cpFirst = i % 2 === 0;
      label = 'plug';
      const plugCp = () =>
        timeCpSide(
          () => must('POST', '/v1/vms/vm-bench/memory-groups', 201, { name: `p${i}`, pool: 'cxl-guest', kind: 'STATIC', sizeBytes: 256 * MiB, onlineType: 'ONLINE_MOVABLE' }),
          () => barePlug(driver, vmId, `aa${i}`, 256 * MiB, bs),
        );
      const plugBare = () => timeBare(() => barePlug(driver, vmId, `bare${i}`, 256 * MiB, bs));
      if (cpFirst) {
        cp.plug.push(await plugCp());
        bare.plug.push(await plugBare());
      } else {
        bare.plug.push(await plugBare());
        cp.plug.push(await plugCp());
      }
      // Resize: both sides shrink 512 → 128 and grow back to 512 on the same virtio-mem device,
      // so the API's record (512 MiB) matches QEMU again after each pair. Who goes first
      // alternates too: a shrink right after a plug met a busier guest than one after a grow.
      const resizeCp = async () => {
        label = 'shrink';
        const resize = (bytes: number) =>
          timeCpSide(
            () => must('POST', '/v1/vms/vm-bench/memory-groups/vmem:resize', 200, { requestedBytes: bytes }),
            () => bareResize(driver, vmId, 'vmem-vmem', bytes, bs),
          );
        cp.shrink.push(await resize(128 * MiB));
        label = 'grow';
        cp.grow.push(await resize(512 * MiB));
      };
      const resizeBare = async () => {
        label = 'shrink';
        bare.shrink.push(await timeBare(() => bareResize(driver, vmId, 'vmem-vmem', 128 * MiB, bs)));
        label = 'grow';
        bare.grow.push(await timeBare(() => bareResize(driver, vmId, 'vmem-vmem', 512 * MiB, bs)));
      };
      if (cpFirst) {
        await resizeCp();
        await resizeBare();
      } else {
        await resizeBare();
        await resizeCp();
      }
      label = 'unplug';
      const unplugCp = () =>
        timeCpSide(
          () => must('DELETE', `/v1/vms/vm-bench/memory-groups/p${i}`, 202),
          () => bareUnplug(driver, vmId, `aa${i}`, bs),
        );
      const unplugBare = () => timeBare(() => bareUnplug(driver, vmId, `bare${i}`, bs));
      if (cpFirst) {
        cp.unplug.push(await unplugCp());
        bare.unplug.push(await unplugBare());
      } else {
        bare.unplug.push(await unplugBare());
        cp.unplug.push(await unplugCp());
      }
      process.stderr.write(`  iteration ${i + 1}/${ITERATIONS} done\n`);
    }
    await stopProfile?.();

    if (AA) out.push('  A/A RUN (--aa): the "control plane" column is the bare script again; what it reads is the comparison\'s noise, not the control plane');
    out.push(
      `  ${ITERATIONS} iterations; times in ms from request to observed SUCCEEDED (control plane, ${OBSERVE === 'events' ? "through the operation's server-sent events" : `GET polled every ${POLL_MS} ms`}) / to the last QMP/QGA step done (bare)`,
    );
    const rank = Math.ceil(0.99 * ITERATIONS);
    out.push(`  (p99 is the ${ordinal(rank)} of ${ITERATIONS} samples in order: ${rank === ITERATIONS ? 'the slowest' : `the ${ordinal(ITERATIONS - rank + 1)} slowest`})`);
    out.push('');
    out.push('  step          | control plane p50 / p99 / mean     | bare QMP/QGA p50 / p99 / mean      | ratio p50  ratio p99 | added p99 ms | target (≤10% or ≤60 ms p99) | past the allowance, 90% bootstrap interval');
    out.push('  --------------+------------------------------------+------------------------------------+----------------------+--------------+-----------------------------+--------------------------------------------');
    const rows: [string, keyof Samples][] = [
      ['plug 256M', 'plug'],
      ['resize 512→128', 'shrink'],
      ['resize 128→512', 'grow'],
      ['unplug 256M', 'unplug'],
    ];
    for (const [label, k] of rows) {
      const a = stats(cp[k]);
      const b = stats(bare[k]);
      const added = a.p99 - b.p99;
      const ratio99 = a.p99 / b.p99;
      // ≤ 10 % or ≤ 60 ms: the same rule as the interval's (ratio99 ≤ 1.1 is added ≤ 0.1 × bare p99).
      const met = added <= allowanceMs(b.p99);
      const { lo, hi } = excessInterval(cp[k], bare[k]);
      const reading = hi <= 0 ? 'inside' : lo > 0 ? 'past' : 'either way';
      out.push(
        `  ${label.padEnd(14)}| ${`${f(a.p50)} / ${f(a.p99)} / ${f(a.mean)}`.padEnd(35)}| ${`${f(b.p50)} / ${f(b.p99)} / ${f(b.mean)}`.padEnd(35)}| ${f(a.p50 / b.p50, 2).padStart(8)}  ${f(ratio99, 2).padStart(9)} | ${f(added).padStart(12)} | ${(met ? 'MET' : 'NOT MET').padEnd(28)}| ${`${f(lo)} … ${f(hi)} ms`.padEnd(22)} ${reading}`,
      );
    }
    out.push('');
    out.push('  every sample, sorted (ms):');
    for (const [label, k] of rows) {
      const list = (xs: number[]) => [...xs].sort((a, b) => a - b).map((x) => x.toFixed(0)).join(' ');
      out.push(`  ${label.padEnd(14)}| control plane ${list(cp[k])}`);
      out.push(`  ${''.padEnd(14)}| bare          ${list(bare[k])}`);
    }
    out.push('');
    out.push('  driver calls per operation (QMP/QGA through the worker\'s driver) and mean time spent in them:');
    for (const [label, k] of rows) {
      const a = callStats[`control plane ${k}`];
      const b = callStats[`bare ${k}`];
      const per = (x: typeof a) => (x ? `${f(x.n / x.samples, 1)} calls, ${f(x.busyMs / x.samples)} ms` : '-');
      out.push(`  ${label.padEnd(14)}| control plane ${per(a).padEnd(24)}| bare ${per(b)}`);
    }
    out.push('');
    out.push("  the control plane's time outside QEMU and the guest, per operation (ms, p50 / p99): from the request to its first QMP/QGA call,");
    out.push('  and from the end of its last call to SUCCEEDED seen; what it adds between them is in the calls above (its own observations)');
    for (const [label, k] of rows) {
      const o = outside[`control plane ${k}`];
      if (!o) continue;
      const lead = stats(o.lead);
      const tail = stats(o.tail);
      const sum = stats(o.lead.map((x, i) => x + o.tail[i]!));
      out.push(`  ${label.padEnd(14)}| before the first call ${f(lead.p50)} / ${f(lead.p99)} | after the last ${f(tail.p50)} / ${f(tail.p99)} | both ${f(sum.p50)} / ${f(sum.p99)}`);
    }
    out.push('');
    const ms = (ns: number) => f(ns / 1e6, 1);
    // No max: the first delay after each enable() spans the time the histogram was off.
    const delay = (h: ReturnType<typeof monitorEventLoopDelay>) => `p50 ${ms(h.percentile(50))}, p99 ${ms(h.percentile(99))} ms`;
    out.push(
      `  this process's event-loop delay (API, worker and REST client share it; 1 ms resolution, the timer's own ~1 ms included): ${AA ? '' : `while the control plane's operations ran ${delay(loopDelay.cp)}; `}while the bare script's ran ${delay(loopDelay.bare)}`,
    );
    if (stmts) out.push(...(await stmts(ITERATIONS * 4)));
    if (TRACE) out.push('', '  trace of the last iteration (offset from the request or the first bare step):', ...traces);
  } finally {
    await http('POST', '/v1/vms/vm-bench:stop').catch(() => undefined);
    if (vmId) await driver.stop(vmId, { powerdownTimeoutMs: 0, quitTimeoutMs: 3_000 }).catch(() => undefined);
    await worker.stop();
  }
  return out;
}

// ------------------------------------------------------------------ main

async function main(): Promise<void> {
  const dir = join(projectRoot(), '.cache', `bench-ops-${process.pid}`);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const stops: (() => Promise<void>)[] = [async () => rmSync(dir, { recursive: true, force: true })];
  const stopAll = async () => {
    for (const s of stops.reverse()) await s().catch(() => undefined);
  };
  process.once('SIGINT', () => void stopAll().then(() => process.exit(130)));
  const report: string[] = [];
  let failed = false;
  try {
    const pg = await startEmbeddedPostgres({
      dir: join(dir, 'postgres'),
      port: await freePort(),
      database: 'memplane',
      settings: {
        ...PG_SETTINGS,
        ...(PG_STATEMENTS ? PG_STATEMENTS_SETTINGS : {}),
      },
    });
    stops.push(pg.stop);
    const redis = await startEmbeddedRedis({ dir: join(dir, 'redis'), port: await freePort() });
    stops.push(redis.stop);
    await applyMigrations(pg.url);
    adminKey = generateApiKey();
    const running = await startMemplane(
      loadConfig({
        DATABASE_URL: pg.url,
        REDIS_URL: redis.url,
        MEMPLANE_HTTP_PORT: '0',
        MEMPLANE_GRPC_PORT: '0',
        MEMPLANE_BOOTSTRAP_KEY: adminKey,
        MEMPLANE_LOG_LEVEL: 'error',
        MEMPLANE_DATA_DIR: join(dir, 'data'),
        MEMPLANE_QUEUE_PREFIX: QUEUE_PREFIX,
      }),
    );
    stops.push(running.stop);
    apiUrl = running.httpUrl;

    if (!SKIP_QUEUE) {
      try {
        report.push(...(await queueBench(pg.url, redis.url, join(dir, 'vms-queue'), dir)));
      } catch (e) {
        failed = true;
        report.push('', `Queue machinery benchmark FAILED: ${(e as Error).stack ?? e}`);
      }
    }
    if (!SKIP_GUEST) {
      report.push('', 'Plug / resize / unplug on a real guest (QEMU, linux-6.12 guest): control plane (REST API → outbox → BullMQ → executor) vs bare QMP/QGA script');
      try {
        report.push(...(await guestBench(pg.url, redis.url, join(dir, 'vms'))));
      } catch (e) {
        failed = true;
        report.push(`  real-guest benchmark FAILED: ${(e as Error).stack ?? e}`);
      }
    }
  } finally {
    console.log(report.join('\n'));
    await stopAll();
  }
  if (failed) process.exitCode = 1;
}

main().then(
  () => process.exit(process.exitCode ?? 0),
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
