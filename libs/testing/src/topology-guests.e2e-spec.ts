import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { compileTopology, GiB, memoryDeviceHotplugCommands, MiB, renderQemuArgv, type KernelProfile, type PerfValues, type Topology, type TopologyInput } from '#domain';
import { bootGuest, eventually, type BootedGuest } from './guest';

/**
 * The topology compiler's claims, checked against real guests: QEMU 7.2 must accept the
 * rendered argv, the guest kernel must report exactly the compiled HMAT in
 * /sys/devices/system/node/nodeN/access0/initiators/*, and a 6.12 guest must put every node
 * in the predicted memory tier.
 */

const perf = (rl: number, wl: number, rb: number, wb: number): PerfValues => ({ readLatencyNs: rl, writeLatencyNs: wl, readBandwidthMBps: rb, writeBandwidthMBps: wb });
const DRAM = perf(100, 100, 51200, 51200);

/**
 * One CPU node (2 vCPUs, 512 MiB) and CXL pools with one 256 MiB DIMM each: hotplugged after
 * boot through QMP, as the control plane does, or (coldDimm) given on the command line.
 */
function input(name: string, profile: KernelProfile, dram: PerfValues, cxl: PerfValues[], coldDimm: boolean): TopologyInput {
  return {
    host: {
      nodes: [{ nodeId: 0, cpus: [0, 1, 2, 3], memoryBytes: 64 * GiB, kind: 'DRAM' }, ...cxl.map((_, i) => ({ nodeId: i + 1, cpus: [], memoryBytes: 64 * GiB, kind: 'CXL' as const }))],
      performance: [{ cpuNodeId: 0, memoryNodeId: 0, ...dram }, ...cxl.map((p, i) => ({ cpuNodeId: 0, memoryNodeId: i + 1, ...p }))],
      distances: cxl.map((_, i) => ({ fromNodeId: 0, toNodeId: i + 1, distance: 20 + 5 * (i + 1) })),
    },
    vm: { name, kernelProfile: profile, guestNodes: [{ guestNodeId: 0, vcpus: 2, memoryBytes: 512 * MiB }], maxMemoryBytes: 4 * GiB, memorySlots: 4, sparePciePorts: 0 },
    pools: cxl.map((_, i) => ({ id: `pool-${i + 1}`, hostNodeId: i + 1, memoryType: 'VOLATILE' as const })),
    groups: cxl.map((_, i) => ({ id: `dimm-${i + 1}`, name: `dimm-${i + 1}`, kind: 'STATIC' as const, poolId: `pool-${i + 1}`, sizeBytes: 256 * MiB, onlineType: 'ONLINE_MOVABLE' as const, plugged: coldDimm })),
  };
}

interface Case {
  name: string;
  dram: PerfValues;
  cxl: PerfValues[];
  coldDimm?: boolean;
  /** Independent of the compiler: what the spec's worked examples (and observation) say the 6.12 guest shows. */
  golden?: { node: number; readLatencyNs?: number; readBandwidthMBps?: number; tier: number }[];
}

const CASES: Case[] = [
  // G1: the full chain, DRAM vs CXL: node1 250 ns / 20480 MB/s, adistance 3600, tier 28.
  { name: 'g1', dram: DRAM, cxl: [perf(250, 250, 20480, 20480)], golden: [{ node: 0, tier: 4 }, { node: 1, readLatencyNs: 250, readBandwidthMBps: 20480, tier: 28 }] },
  // G2: one nanosecond past the DRAM tier's edge: 112 ns gives adistance 645, tier 5.
  { name: 'g2', dram: DRAM, cxl: [perf(112, 112, 51200, 51200)], golden: [{ node: 1, readLatencyNs: 112, tier: 5 }] },
  // G3: a faster, HBM-like node: 80 ns and 200 GiB/s, adistance 115, tier 0.
  { name: 'g3', dram: DRAM, cxl: [perf(80, 80, 204800, 204800)], golden: [{ node: 1, readLatencyNs: 80, readBandwidthMBps: 204800, tier: 0 }] },
  // G4: integer truncation decides the tier (real numbers say 10): adistance 1279, tier 9.
  { name: 'g4', dram: DRAM, cxl: [perf(75, 74, 17163, 17162)], golden: [{ node: 1, readLatencyNs: 75, readBandwidthMBps: 17163, tier: 9 }] },
  // Three nodes: two CXL pools of different performance in two different tiers.
  { name: 'two-cxl', dram: DRAM, cxl: [perf(250, 250, 20480, 20480), perf(400, 400, 10240, 10240)], golden: [{ node: 1, tier: 28 }, { node: 2, tier: 90 }] },
  // G1 with the DIMM on the command line: onlined during boot, before HMAT tiering exists, so
  // the 6.12 guest leaves node1 in the DRAM tier (observed here; see tiers.ts).
  { name: 'g1-cold-dimm', dram: DRAM, cxl: [perf(250, 250, 20480, 20480)], coldDimm: true, golden: [{ node: 1, readLatencyNs: 250, tier: 4 }] },
];

/** `%*pbl` node lists: "0-1,4" → [0, 1, 4]. */
function expandNodelist(list: string): number[] {
  return list.split(',').flatMap((part) => {
    const [a, b] = part.split('-').map(Number);
    return b === undefined ? [a!] : Array.from({ length: b - a! + 1 }, (_, i) => a! + i);
  });
}

async function sysfsPerf(guest: BootedGuest, node: number): Promise<PerfValues & { initiators: string[] }> {
  const base = `/sys/devices/system/node/node${node}/access0/initiators`;
  // Only a number is a value: Number('') is 0. Once in five fresh-clone runs (2026-12-06) this
  // test saw write_latency 0 for g4's node1 on 6.1, where the HMAT says 74 and every other
  // run read 74; an empty read is the likely cause, and is now read again. A 0 the guest
  // really shows is still a 0, and still fails.
  const read = (f: string) =>
    eventually(`${base}/${f} reads as a number`, async () => {
      const text = (await guest.readGuestFile(`${base}/${f}`)).trim();
      return /^\d+$/.test(text) ? Number(text) : undefined;
    }, 5_000, 100);
  const ls = await guest.exec('ls', [base]);
  return {
    readLatencyNs: await read('read_latency'),
    writeLatencyNs: await read('write_latency'),
    readBandwidthMBps: await read('read_bandwidth'),
    writeBandwidthMBps: await read('write_bandwidth'),
    initiators: ls.stdout.toString().split(/\s+/).filter((x) => /^node\d+$/.test(x)),
  };
}

async function sysfsTiers(guest: BootedGuest): Promise<Map<number, string>> {
  const r = await guest.exec('sh', ['-c', 'for t in /sys/devices/virtual/memory_tiering/memory_tier*; do echo "${t##*memory_tier} $(cat $t/nodelist)"; done']);
  assert.equal(r.exitCode, 0, r.stderr.toString());
  const tiers = new Map<number, string>();
  for (const line of r.stdout.toString().trim().split('\n')) {
    const [tier, nodelist] = line.trim().split(/\s+/);
    if (tier && nodelist !== undefined) tiers.set(Number(tier), nodelist);
  }
  return tiers;
}

for (const kernel of ['linux-6.1', 'linux-6.12'] as const) {
  describe(`compiled topologies on a real ${kernel} guest`, () => {
    let guest: BootedGuest | undefined;
    after(async () => guest?.stop());

    for (const c of CASES) {
      it(`${c.name}: QEMU accepts the argv and the guest reports the compiled HMAT${kernel === 'linux-6.12' ? ' and tiers' : ''}`, async () => {
        const topology: Topology = compileTopology(input(c.name, kernel, c.dram, c.cxl, c.coldDimm ?? false));
        // This machine has one NUMA node, so the modelled host nodes are not bound; the guest's view is unchanged.
        const qemuArgs = renderQemuArgv(topology, { hostNodeBinding: 'none' });
        guest = await bootGuest({ kernel, qemuArgs, memhpDefaultState: 'online_movable' });
        const g = guest;
        try {
          for (const d of topology.memoryDevices.filter((x) => !x.plugged)) {
            for (const cmd of memoryDeviceHotplugCommands(topology, d.groupId, undefined, 'none')) await g.qmp.execute(cmd.execute, cmd.arguments);
          }
          for (const node of topology.guestNodes) {
            await eventually(`guest node ${node.guestNodeId} has memory`, async () => {
              const meminfo = await g.readGuestFile(`/sys/devices/system/node/node${node.guestNodeId}/meminfo`);
              return Number(/MemTotal:\s+(\d+) kB/.exec(meminfo)?.[1]) > 0 ? true : undefined;
            });
          }
          // Every initiator-target cell as the guest decodes it, from the best (and only) initiator node0.
          for (const target of topology.guestNodes) {
            const cell = topology.hmat.cells.find((x) => x.initiator === 0 && x.target === target.guestNodeId);
            assert.ok(cell, `a cell for target ${target.guestNodeId}`);
            const seen = await sysfsPerf(guest, target.guestNodeId);
            assert.deepEqual(
              { readLatencyNs: seen.readLatencyNs, writeLatencyNs: seen.writeLatencyNs, readBandwidthMBps: seen.readBandwidthMBps, writeBandwidthMBps: seen.writeBandwidthMBps },
              cell.guest,
              `node${target.guestNodeId} access0 on ${kernel}`,
            );
            assert.deepEqual(seen.initiators, [`node${target.initiatorGuestNodeId}`]);
          }
          for (const g of c.golden ?? []) {
            const seen = await sysfsPerf(guest, g.node);
            if (g.readLatencyNs !== undefined) assert.equal(seen.readLatencyNs, g.readLatencyNs);
            if (g.readBandwidthMBps !== undefined) assert.equal(seen.readBandwidthMBps, g.readBandwidthMBps);
          }

          const tiers = await sysfsTiers(guest);
          const predicted = new Map(topology.tiers.tiers.map((t) => [t.tier, t.nodelist]));
          assert.deepEqual(Object.fromEntries(tiers), Object.fromEntries(predicted), `memory tiers on ${kernel}`);
          if (kernel === 'linux-6.12') {
            for (const g of c.golden ?? []) {
              const tier = [...tiers].find(([, list]) => expandNodelist(list).includes(g.node))?.[0];
              assert.equal(tier, g.tier, `node${g.node} is in memory_tier${g.tier} (spec golden example)`);
            }
          } else {
            // 6.1 has no HMAT-based tiering: every boot node is in the DRAM tier.
            assert.deepEqual([...tiers.keys()], [4]);
          }
        } finally {
          await guest.stop();
          guest = undefined;
        }
      });
    }
  });
}
