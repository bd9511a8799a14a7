/**
 * Topology compiler throughput: compiles 10,000 random VM topologies (seeded, so every run
 * compiles the same inputs) and prints topologies/s. Input generation is not timed.
 *
 *   npx tsc -p tsconfig.json && node dist/bench/topology.bench.js [count] [seed]
 *
 * Random shapes: 1–4 host DRAM sockets, 1–4 CXL host nodes, up to 4 pools, up to 8 guest
 * nodes (CPU nodes + one per CXL class used), 1–6 memory groups, both kernel profiles, host
 * distance and performance tables with random holes (exercising the derivation rules), and a
 * quarter of the hosts with arbitrary CDAT-like numbers compiled with hmatRounding 'round'.
 */
import { loadavg } from 'node:os';
import { isDomainError } from '../libs/domain/src/errors';
import { GiB, MiB } from '../libs/domain/src/units';
import { compileTopology, renderLibvirtDomainXml, renderQemuArgv, type TopologyInput } from '../libs/domain/src/topology';

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomTopology(rnd: () => number): TopologyInput {
  const int = (lo: number, hi: number) => lo + Math.floor(rnd() * (hi - lo + 1));
  const pick = <T>(xs: T[]): T => xs[Math.floor(rnd() * xs.length)] as T;

  const sockets = int(1, 4);
  const cxlNodes = int(1, 4);
  const nodes: TopologyInput['host']['nodes'] = [];
  for (let s = 0; s < sockets; s++) nodes.push({ nodeId: s, cpus: [s * 2, s * 2 + 1], memoryBytes: 256 * GiB, kind: 'DRAM' });
  for (let c = 0; c < cxlNodes; c++) nodes.push({ nodeId: sockets + c, cpus: [], memoryBytes: 512 * GiB, kind: 'CXL' });

  const performance: TopologyInput['host']['performance'] = [];
  const distances: NonNullable<TopologyInput['host']['distances']> = [];
  // A quarter of the hosts report arbitrary (CDAT-like) numbers and compile with hmatRounding 'round'.
  const arbitrary = rnd() < 0.25;
  const localLat = arbitrary ? int(75, 125) : 10 * int(8, 12);
  const localBw = arbitrary ? int(30_000, 250_000) : 1024 * int(40, 60);
  for (let s = 0; s < sockets; s++) {
    for (const n of nodes) {
      const local = n.nodeId === s;
      const cxl = n.kind === 'CXL';
      const hops = cxl ? (n.nodeId - sockets) % sockets === s ? 0 : 1 : local ? 0 : 1;
      const lat = (cxl ? (arbitrary ? int(180, 320) : 10 * int(20, 30)) : localLat) + hops * 10 * int(4, 8);
      const bw = (cxl ? (arbitrary ? int(8_000, 30_000) : 1024 * int(10, 25)) : localBw) >> hops;
      // Leave out ~15 % of the remote pairs: the compiler derives them.
      if (!local && rnd() < 0.15 && !(cxl && hops === 0)) continue;
      performance.push({ cpuNodeId: s, memoryNodeId: n.nodeId, readLatencyNs: lat, writeLatencyNs: lat + 10 * int(0, 2), readBandwidthMBps: bw, writeBandwidthMBps: bw });
    }
  }
  for (const a of nodes)
    for (const b of nodes) {
      if (a.nodeId >= b.nodeId || rnd() < 0.2) continue;
      distances.push({ fromNodeId: a.nodeId, toNodeId: b.nodeId, distance: a.kind === 'CXL' || b.kind === 'CXL' ? int(22, 40) : int(16, 21) });
    }

  const poolCount = int(1, 4);
  const pools: TopologyInput['pools'] = [];
  for (let p = 0; p < poolCount; p++) pools.push({ id: `pool-${p}`, hostNodeId: sockets + int(0, cxlNodes - 1), memoryType: 'VOLATILE' });
  const classes = new Set(pools.map((p) => p.hostNodeId)).size;

  const cpuGuests = int(1, Math.min(8 - classes, 6));
  const guestNodes = Array.from({ length: cpuGuests }, (_, g) => ({
    guestNodeId: g,
    vcpus: int(1, 4),
    memoryBytes: 512 * MiB * int(1, 8),
    ...(rnd() < 0.5 ? { hostNodeId: int(0, sockets - 1) } : {}),
  }));

  const groups: TopologyInput['groups'] = [];
  const usedPools = pools.slice();
  const groupCount = int(usedPools.length, 6);
  for (let i = 0; i < groupCount; i++) {
    const pool = i < usedPools.length ? (usedPools[i] as (typeof pools)[number]) : pick(pools);
    if (rnd() < 0.5)
      groups.push({ id: `g${i}`, name: `g${i}`, kind: 'STATIC', poolId: pool.id, sizeBytes: 128 * MiB * int(1, 8), onlineType: pick(['ONLINE_MOVABLE', 'AUTO', 'ONLINE_KERNEL'] as const), plugged: rnd() < 0.7 });
    else {
      const max = 128 * MiB * int(2, 16);
      groups.push({ id: `g${i}`, name: `g${i}`, kind: 'DYNAMIC', poolId: pool.id, maxSizeBytes: max, requestedBytes: 2 * MiB * int(0, max / (2 * MiB)), onlineType: 'ONLINE_MOVABLE', plugged: rnd() < 0.7 });
    }
  }
  const boot = guestNodes.reduce((s, g) => s + g.memoryBytes, 0) + classes * 128 * MiB;
  const devices = groups.reduce((s, g) => s + (g.sizeBytes ?? g.maxSizeBytes ?? 0), 0);
  const later = groups.filter((g) => g.kind === 'DYNAMIC' && !g.plugged).length;
  return {
    host: { nodes, performance, distances },
    vm: {
      name: 'bench',
      kernelProfile: rnd() < 0.5 ? 'linux-6.1' : 'linux-6.12',
      guestNodes,
      maxMemoryBytes: boot + devices + GiB * int(0, 4),
      memorySlots: groups.filter((g) => g.kind === 'STATIC').length + int(0, 4),
      sparePciePorts: rnd() < 0.5 ? later + int(0, 2) : 0,
    },
    pools,
    groups,
    ...(arbitrary ? { policy: { hmatRounding: 'round' as const } } : {}),
  };
}

/** Wall time, and this process's CPU time (user+system): the honest figure on a shared machine. */
function run(inputs: TopologyInput[]): { ns: bigint; cpuUs: number; ok: number; refused: Map<string, number> } {
  const refused = new Map<string, number>();
  let ok = 0;
  const cpu = process.cpuUsage();
  const start = process.hrtime.bigint();
  for (const input of inputs) {
    try {
      compileTopology(input);
      ok++;
    } catch (e) {
      if (!isDomainError(e)) throw e;
      refused.set(e.reason, (refused.get(e.reason) ?? 0) + 1);
    }
  }
  const ns = process.hrtime.bigint() - start;
  const used = process.cpuUsage(cpu);
  return { ns, cpuUs: used.user + used.system, ok, refused };
}

const count = Number(process.argv[2] ?? 10_000);
const seed = Number(process.argv[3] ?? 20240601);
const rnd = mulberry32(seed);
const inputs = Array.from({ length: count }, () => randomTopology(rnd));

const rate = (n: number, ns: bigint) => Math.round((n * 1e9) / Number(ns));
const fmt = (n: number) => n.toLocaleString('en-US');
const report = (label: string, r: ReturnType<typeof run>) =>
  console.log(
    `  ${label}: ${fmt(rate(count, r.ns))} topologies/s wall (${(Number(r.ns) / 1e6).toFixed(0)} ms), ` +
      `${fmt(Math.round((count * 1e6) / r.cpuUs))} topologies/s of CPU time (${(r.cpuUs / 1e3).toFixed(0)} ms)`,
  );
const first = run(inputs);
const second = run(inputs);
const third = run(inputs);
console.log(`topology compiler, ${count} random topologies (seed ${seed}), node ${process.version}, single-threaded`);
console.log(`  load average at start of run: ${loadavg().map((l) => l.toFixed(2)).join(' ')}`);
report('pass 1 (cold JIT)', first);
report('pass 2 (warm)    ', second);
report('pass 3 (warm)    ', third);
console.log(`  compiled ${first.ok}, refused ${count - first.ok}${first.refused.size ? ': ' + [...first.refused].map(([r, n]) => `${r} ${n}`).join(', ') : ''}`);

const compiled = inputs.slice(0, 2000).flatMap((i) => {
  try {
    return [compileTopology(i)];
  } catch {
    return [];
  }
});
const rStart = process.hrtime.bigint();
for (const t of compiled) {
  renderQemuArgv(t, { accel: 'tcg' });
  renderLibvirtDomainXml(t);
}
console.log(`  rendering argv + libvirt XML: ${rate(compiled.length, process.hrtime.bigint() - rStart).toLocaleString('en-US')} topologies/s`);
