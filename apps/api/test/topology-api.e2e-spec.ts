import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { status, type ServiceError } from '@grpc/grpc-js';
import { GroupOnlineType, MemoryGroupKind, type MemoryGroup } from '#contracts/generated/memplane/v1/memory_group';
import {
  GetTopologyRequest,
  HmatDataType,
  MemoryDeviceModel,
  PciePortPurpose,
  PreviewTopologyRequest,
  SratSource,
  TierSource,
  TopologyNodeKind,
  TopologyServiceClient,
  type Topology,
} from '#contracts/generated/memplane/v1/topology';
import { Vm } from '#contracts/generated/memplane/v1/vm';
import { call, errorDetails, GiB, grpcMetadata, http, insecure, MiB, startTestApi, type HttpResult, type TestApi } from './harness';

/**
 * Two DRAM sockets (host nodes 0 and 1) and one CXL node (2). The host table has
 * socket 0 → CXL at 250 ns / 20480 MB/s against DRAM at 100 ns / 51200 MB/s: the
 * domain-spec's golden example G1, which a 6.12 guest puts in memory_tier28.
 */
function topoHost(name: string, o: { dramLatencyNs?: number; cxlLatencyNs?: number } = {}) {
  const dram = o.dramLatencyNs ?? 100;
  const cxl = o.cxlLatencyNs ?? 250;
  return {
    name,
    nodes: [
      { nodeId: 0, cpus: [0, 1, 2, 3], memoryBytes: 32 * GiB, kind: 'DRAM' },
      { nodeId: 1, cpus: [4, 5, 6, 7], memoryBytes: 32 * GiB, kind: 'DRAM' },
      { nodeId: 2, cpus: [], memoryBytes: 128 * GiB, kind: 'CXL' },
    ],
    performance: [
      { cpuNodeId: 0, memoryNodeId: 0, readLatencyNs: dram, writeLatencyNs: dram, readBandwidthMBps: 51200, writeBandwidthMBps: 51200 },
      { cpuNodeId: 0, memoryNodeId: 2, readLatencyNs: cxl, writeLatencyNs: cxl, readBandwidthMBps: 20480, writeBandwidthMBps: 20480 },
      { cpuNodeId: 1, memoryNodeId: 1, readLatencyNs: dram, writeLatencyNs: dram, readBandwidthMBps: 51200, writeBandwidthMBps: 51200 },
      { cpuNodeId: 1, memoryNodeId: 2, readLatencyNs: 300, writeLatencyNs: 300, readBandwidthMBps: 16384, writeBandwidthMBps: 16384 },
    ],
    distances: [
      { fromNodeId: 0, toNodeId: 1, distance: 21 },
      { fromNodeId: 0, toNodeId: 2, distance: 24 },
      { fromNodeId: 1, toNodeId: 2, distance: 28 },
    ],
  };
}

const vmBody = (name: string, o: Record<string, unknown> = {}) => ({
  name,
  host: 'hv-topo',
  kernelProfile: 'linux-6.12',
  guestNodes: [
    { guestNodeId: 0, vcpus: 2, bootMemoryBytes: 2 * GiB, hostNodeId: 0 },
    { guestNodeId: 1, vcpus: 2, bootMemoryBytes: 2 * GiB, hostNodeId: 1 },
  ],
  memorySlots: 2,
  maxMemoryBytes: 16 * GiB,
  sparePciePorts: 1,
  ...o,
});
const staticGroup = { name: 's-1', pool: 'p-cxl', kind: 'STATIC', sizeBytes: GiB };
const dynamicGroup = { name: 'd-1', pool: 'p-cxl', kind: 'DYNAMIC', maxSizeBytes: 4 * GiB, requestedBytes: GiB };

function expectProblem(r: HttpResult, statusCode: number, reason: string): any {
  assert.equal(r.status, statusCode, JSON.stringify(r.body));
  assert.equal(r.headers.get('content-type')?.split(';')[0], 'application/problem+json');
  assert.equal(r.body.reason, reason, JSON.stringify(r.body));
  return r.body;
}

async function grpcFailure(p: Promise<unknown>): Promise<ReturnType<typeof errorDetails>> {
  try {
    await p;
  } catch (e) {
    return errorDetails(e as ServiceError);
  }
  assert.fail('the call succeeded');
}

/** The argv values following each occurrence of `flag`. */
function flagValues(argv: string[], flag: string): string[] {
  return argv.flatMap((a, i) => (a === flag ? [argv[i + 1] as string] : []));
}

describe('GetTopology and PreviewTopology', () => {
  let api: TestApi;
  let client: TopologyServiceClient;
  let viewerKey: string;
  const md = () => grpcMetadata(api.adminKey);

  before(async () => {
    api = await startTestApi();
    client = new TopologyServiceClient(api.grpc, insecure());
    for (const h of [topoHost('hv-topo'), topoHost('hv-wide', { dramLatencyNs: 101, cxlLatencyNs: 70001 }), topoHost('hv-other')]) {
      assert.equal((await http(api, 'POST', '/v1/hosts', { body: h })).status, 201, h.name);
    }
    for (const p of [
      { name: 'p-cxl', host: 'hv-topo', hostNodeId: 2, capacityBytes: 16 * GiB },
      { name: 'p-wide', host: 'hv-wide', hostNodeId: 2, capacityBytes: 16 * GiB },
      { name: 'p-other', host: 'hv-other', hostNodeId: 2, capacityBytes: 16 * GiB },
    ]) {
      assert.equal((await http(api, 'POST', '/v1/pools', { body: p })).status, 201, p.name);
    }
    assert.equal((await http(api, 'POST', '/v1/vms', { body: vmBody('vm-t') })).status, 201);
    for (const g of [staticGroup, dynamicGroup]) {
      const r = await http(api, 'POST', '/v1/vms/vm-t/memory-groups', { body: g });
      assert.equal(r.status, 201, JSON.stringify(r.body));
    }
    const viewer = await http(api, 'POST', '/v1/api-keys', { body: { name: 'topology-reader', role: 'viewer' } });
    assert.equal(viewer.status, 201);
    viewerKey = viewer.body.secret;
  });
  after(async () => {
    client?.close();
    await api?.stop();
  });

  it('GET /v1/vms/{vm}/topology: nodes, distances, HMAT, tiers, demotion, argv, libvirt XML and kernel command line', async () => {
    const r = await http(api, 'GET', '/v1/vms/vm-t/topology');
    assert.equal(r.status, 200, JSON.stringify(r.body));
    const t = r.body;
    assert.equal(t.vm, 'vm-t');
    assert.equal(t.host, 'hv-topo');
    assert.equal(t.kernelProfile, 'linux-6.12');
    assert.equal(t.machine.type, 'q35'); // a spare PCIe root port needs q35
    assert.equal(t.vcpuCount, 4);

    // Guest nodes: two CPU nodes on their pinned sockets, one CXL node for host node 2.
    assert.deepEqual(
      t.nodes.map((n: any) => [n.guestNodeId, n.kind, n.hostNodeId, n.vcpuIds, n.srat]),
      [
        [0, 'CPU', 0, [0, 1], 'BOOT_MEMORY'],
        [1, 'CPU', 1, [2, 3], 'BOOT_MEMORY'],
        [2, 'CXL', 2, [], 'HOTPLUG_REGION'],
      ],
    );
    assert.equal(t.nodes[2].initiatorGuestNodeId, 0); // socket 0 is nearer (250 < 300 ns)
    assert.deepEqual(t.nodes[2].pools, ['p-cxl']);

    // SLIT: host distances, the missing reverse entries mirrored.
    assert.deepEqual(t.distances, [
      [10, 21, 24],
      [21, 10, 28],
      [24, 28, 10],
    ]);

    // HMAT: initiators are the CPU nodes, every node a target.
    assert.deepEqual(t.hmat.initiators, [0, 1]);
    assert.deepEqual(t.hmat.targets, [0, 1, 2]);
    assert.equal(t.hmat.cells.length, 6);
    const cell = (i: number, tg: number) => t.hmat.cells.find((c: any) => c.initiator === i && c.target === tg);
    assert.deepEqual(cell(0, 2).guest, { readLatencyNs: 250, writeLatencyNs: 250, readBandwidthMBps: 20480, writeBandwidthMBps: 20480 });
    assert.deepEqual(cell(0, 2).qemu, { readLatencyNs: 250, writeLatencyNs: 250, readBandwidthBps: 20480 * MiB, writeBandwidthBps: 20480 * MiB });
    assert.deepEqual(cell(1, 2).guest, { readLatencyNs: 300, writeLatencyNs: 300, readBandwidthMBps: 16384, writeBandwidthMBps: 16384 });
    assert.deepEqual(cell(0, 0).guest, { readLatencyNs: 100, writeLatencyNs: 100, readBandwidthMBps: 51200, writeBandwidthMBps: 51200 });
    assert.match(cell(0, 1).derivation, /missing/); // no 0→1 entry on the host: derived
    assert.equal(t.hmat.bandwidthDivisor, 1);
    assert.deepEqual(
      t.hmat.structures.map((s: any) => s.dataType),
      ['READ_LATENCY', 'WRITE_LATENCY', 'READ_BANDWIDTH', 'WRITE_BANDWIDTH'],
    );
    assert.deepEqual(t.hmat.structures[0].entries, [
      [10, 21, 25],
      [21, 10, 30],
    ]);

    // 6.12 tiers: 250 ns / 20480 MB/s against 100 / 51200 → adistance 3600, memory_tier28.
    assert.equal(t.tiers.hmatTiering.enabled, true);
    assert.equal(t.tiers.hmatTiering.referenceGuestNodeId, 0);
    const cxlTier = t.tiers.nodes.find((n: any) => n.guestNodeId === 2);
    assert.equal(cxlTier.adistance, 3600);
    assert.equal(cxlTier.tier, 28);
    assert.equal(cxlTier.source, 'HMAT');
    assert.deepEqual(cxlTier.calculation.steps, [288000, 1440, 147_456_000, 3600]);
    assert.deepEqual(
      t.tiers.memoryTiers.map((m: any) => [m.tier, m.nodelist]),
      [
        [4, '0-1'],
        [28, '2'],
      ],
    );
    assert.deepEqual(t.demotionTargets, [
      { guestNodeId: 0, preferred: [2], fallback: [2] },
      { guestNodeId: 1, preferred: [2], fallback: [2] },
      { guestNodeId: 2, preferred: [], fallback: [] },
    ]);

    // Devices: the DYNAMIC group is on the command line, the STATIC one hotplugged after boot.
    const dev = (g: string) => t.memoryDevices.find((d: any) => d.memoryGroup === g);
    assert.equal(dev('d-1').model, 'VIRTIO_MEM_PCI');
    assert.equal(dev('d-1').onCommandLine, true);
    assert.equal(dev('d-1').guestNodeId, 2);
    assert.equal(dev('s-1').model, 'PC_DIMM');
    assert.equal(dev('s-1').onCommandLine, false);
    assert.deepEqual(
      t.pciePorts.map((p: any) => [p.purpose, p.memoryGroup]),
      [
        ['VIRTIO_MEM', 'd-1'],
        ['SPARE', undefined],
      ],
    );

    // QEMU argv.
    const argv: string[] = t.qemuArgv;
    assert.deepEqual(flagValues(argv, '-machine'), ['q35,hmat=on']);
    const numa = flagValues(argv, '-numa');
    assert.ok(numa.includes('node,nodeid=2,initiator=0'), numa.join('\n'));
    assert.ok(numa.includes('dist,src=0,dst=2,val=24'));
    assert.equal(numa.filter((n) => n.startsWith('hmat-lb,')).length, 6 * 4);
    assert.ok(numa.includes('hmat-lb,initiator=0,target=2,hierarchy=memory,data-type=read-latency,latency=250'));
    assert.ok(numa.includes('hmat-lb,initiator=0,target=2,hierarchy=memory,data-type=read-bandwidth,bandwidth=20G'));
    const devices = flagValues(argv, '-device');
    assert.ok(devices.some((d) => d.startsWith('virtio-mem-pci,id=vmem-d-1,') && d.includes('node=2')), devices.join('\n'));
    assert.ok(!devices.some((d) => d.startsWith('pc-dimm')), 'STATIC groups are hotplugged after boot');
    assert.ok(flagValues(argv, '-object').includes('memory-backend-ram,id=ram-node0,size=2G,host-nodes=0,policy=bind'));
    assert.ok(flagValues(argv, '-chardev')[0]?.includes('path=/run/memplane/vm-t/qmp.sock'));

    // libvirt XML and the guest kernel command line.
    assert.match(t.libvirtXml, /^<domain type='qemu'>/);
    assert.match(t.libvirtXml, /<interconnects>[\s\S]*<latency initiator='0' target='2' type='read' value='250'\/>[\s\S]*<\/interconnects>/);
    assert.ok(t.kernelCmdline.args.length > 0);
    assert.ok(t.kernelCmdline.args.includes('memhp_default_state=online_movable'), t.kernelCmdline.cmdline);
    assert.equal(t.kernelCmdline.cmdline, t.kernelCmdline.args.join(' '));
    assert.deepEqual(flagValues(argv, '-append'), [t.kernelCmdline.cmdline]);
  });

  it('GetTopology over gRPC answers the same topology', async () => {
    const rest = (await http(api, 'GET', '/v1/vms/vm-t/topology')).body;
    const t = await call<GetTopologyRequest, Topology>(client, 'getTopology', GetTopologyRequest.create({ vm: 'vm-t' }), md());
    assert.equal(t.vm, 'vm-t');
    assert.equal(t.machine?.type, 'q35');
    assert.deepEqual(
      t.nodes.map((n) => [n.guestNodeId, n.kind, n.hostNodeId, n.srat]),
      [
        [0, TopologyNodeKind.TOPOLOGY_NODE_KIND_CPU, 0, SratSource.SRAT_SOURCE_BOOT_MEMORY],
        [1, TopologyNodeKind.TOPOLOGY_NODE_KIND_CPU, 1, SratSource.SRAT_SOURCE_BOOT_MEMORY],
        [2, TopologyNodeKind.TOPOLOGY_NODE_KIND_CXL, 2, SratSource.SRAT_SOURCE_HOTPLUG_REGION],
      ],
    );
    assert.deepEqual(
      t.distances.map((r) => r.values),
      rest.distances,
    );
    const c02 = t.hmat?.cells.find((c) => c.initiator === 0 && c.target === 2);
    assert.deepEqual(c02?.guest, { readLatencyNs: 250n, writeLatencyNs: 250n, readBandwidthMbps: 20480n, writeBandwidthMbps: 20480n });
    assert.equal(c02?.qemu?.readBandwidthBps, BigInt(20480 * MiB));
    assert.equal(t.hmat?.structures[2]?.dataType, HmatDataType.HMAT_DATA_TYPE_READ_BANDWIDTH);
    assert.deepEqual(
      t.hmat?.structures[0]?.entries.map((r) => r.values),
      rest.hmat.structures[0].entries,
    );
    assert.equal(t.tiers?.hmatTiering?.enabled, true);
    assert.equal(t.tiers?.hmatTiering?.referenceGuestNodeId, 0);
    const n2 = t.tiers?.nodes.find((n) => n.guestNodeId === 2);
    assert.equal(n2?.tier, 28);
    assert.equal(n2?.adistance, 3600);
    assert.equal(n2?.source, TierSource.TIER_SOURCE_HMAT);
    assert.deepEqual(n2?.calculation?.steps, [288000n, 1440n, 147_456_000n, 3600n]);
    assert.deepEqual(
      t.tiers?.memoryTiers.map((m) => [m.tier, m.guestNodeIds, m.nodelist]),
      [
        [4, [0, 1], '0-1'],
        [28, [2], '2'],
      ],
    );
    assert.deepEqual(t.demotionTargets, rest.demotionTargets);
    const d1 = t.memoryDevices.find((d) => d.memoryGroup === 'd-1');
    assert.equal(d1?.model, MemoryDeviceModel.MEMORY_DEVICE_MODEL_VIRTIO_MEM_PCI);
    assert.equal(d1?.onCommandLine, true);
    assert.equal(d1?.onlineType, GroupOnlineType.GROUP_ONLINE_TYPE_ONLINE_MOVABLE);
    assert.equal(t.memoryDevices.find((d) => d.memoryGroup === 's-1')?.model, MemoryDeviceModel.MEMORY_DEVICE_MODEL_PC_DIMM);
    assert.deepEqual(
      t.pciePorts.map((p) => p.purpose),
      [PciePortPurpose.PCIE_PORT_PURPOSE_VIRTIO_MEM, PciePortPurpose.PCIE_PORT_PURPOSE_SPARE],
    );
    assert.deepEqual(t.qemuArgv, rest.qemuArgv);
    assert.ok(t.qemuArgv.some((a) => a.startsWith('hmat-lb,')));
    assert.equal(t.libvirtXml, rest.libvirtXml);
    assert.equal(t.kernelCmdline?.cmdline, rest.kernelCmdline.cmdline);
    assert.ok((t.kernelCmdline?.args.length ?? 0) > 0);
  });

  it('an unknown VM is NOT_FOUND on both transports', async () => {
    expectProblem(await http(api, 'GET', '/v1/vms/vm-nope/topology'), 404, 'VM_NOT_FOUND');
    const e = await grpcFailure(call(client, 'getTopology', GetTopologyRequest.create({ vm: 'vm-nope' }), md()));
    assert.equal(e.code, status.NOT_FOUND);
    assert.equal(e.reason, 'VM_NOT_FOUND');
  });

  it('PreviewTopology compiles a hypothetical VM and stores nothing', async () => {
    const before = (await http(api, 'GET', '/v1/vms')).body.totalSize;
    const poolBefore = (await http(api, 'GET', '/v1/pools/p-cxl')).body;
    const stored = (await http(api, 'GET', '/v1/vms/vm-t/topology')).body;

    // The same VM and groups as vm-t: the same topology.
    const same = await http(api, 'POST', '/v1/topology:preview', { body: { ...vmBody('vm-t'), memoryGroups: [staticGroup, dynamicGroup] } });
    assert.equal(same.status, 200, JSON.stringify(same.body));
    assert.deepEqual(same.body, stored);

    // A new name, another group, no name at all: still nothing stored.
    const other = await http(api, 'POST', '/v1/topology:preview', {
      body: { ...vmBody('vm-what-if'), memoryGroups: [dynamicGroup, { ...staticGroup, name: 's-2', sizeBytes: 2 * GiB, onlineType: 'ONLINE_KERNEL' }] },
    });
    assert.equal(other.status, 200, JSON.stringify(other.body));
    assert.equal(other.body.vm, 'vm-what-if');
    assert.equal(other.body.memoryDevices.length, 2);
    const { name: _n, ...unnamed } = vmBody('x');
    const anonymous = await http(api, 'POST', '/v1/topology:preview', { body: unnamed });
    assert.equal(anonymous.status, 200, JSON.stringify(anonymous.body));
    assert.equal(anonymous.body.vm, 'preview');
    assert.deepEqual(
      anonymous.body.nodes.map((n: any) => n.kind),
      ['CPU', 'CPU'],
    );

    const grpc = await call<PreviewTopologyRequest, Topology>(
      client,
      'previewTopology',
      PreviewTopologyRequest.create({
        vm: Vm.create({
          name: 'vm-grpc-preview',
          host: 'hv-topo',
          kernelProfile: 'linux-6.12',
          guestNodes: [
            { guestNodeId: 0, vcpus: 2, bootMemoryBytes: BigInt(2 * GiB), hostNodeId: 0 },
            { guestNodeId: 1, vcpus: 2, bootMemoryBytes: BigInt(2 * GiB), hostNodeId: 1 },
          ],
          memorySlots: 2,
          maxMemoryBytes: BigInt(16 * GiB),
          sparePciePorts: 1,
        }),
        memoryGroups: [
          { name: 's-1', pool: 'p-cxl', kind: MemoryGroupKind.MEMORY_GROUP_KIND_STATIC, sizeBytes: BigInt(GiB) } as MemoryGroup,
          { name: 'd-1', pool: 'p-cxl', kind: MemoryGroupKind.MEMORY_GROUP_KIND_DYNAMIC, maxSizeBytes: BigInt(4 * GiB), requestedBytes: BigInt(GiB) } as MemoryGroup,
        ],
      }),
      md(),
    );
    assert.equal(grpc.vm, 'vm-grpc-preview');
    assert.equal(grpc.tiers?.nodes.find((n) => n.guestNodeId === 2)?.tier, 28);
    assert.deepEqual(
      grpc.distances.map((r) => r.values),
      stored.distances,
    );
    assert.equal(grpc.memoryDevices.length, 2);

    assert.equal((await http(api, 'GET', '/v1/vms')).body.totalSize, before);
    assert.equal((await http(api, 'GET', '/v1/vms/vm-what-if')).status, 404);
    const poolAfter = (await http(api, 'GET', '/v1/pools/p-cxl')).body;
    assert.equal(poolAfter.allocatedBytes, poolBefore.allocatedBytes);
    assert.equal(poolAfter.etag, poolBefore.etag);
    assert.equal((await http(api, 'GET', '/v1/vms/vm-t/memory-groups')).body.totalSize, 2);
  });

  it('a preview beyond a pool’s free capacity is answered, with a warning', async () => {
    const r = await http(api, 'POST', '/v1/topology:preview', {
      body: { ...vmBody('vm-big', { maxMemoryBytes: 64 * GiB }), memoryGroups: [{ ...staticGroup, sizeBytes: 32 * GiB }] },
    });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.ok(
      r.body.warnings.some((w: string) => w.includes('p-cxl') && w.includes('POOL_CAPACITY_EXHAUSTED')),
      JSON.stringify(r.body.warnings),
    );
  });

  it('preview errors: unknown host and pool, bad shapes, other host, a matrix QEMU cannot encode', async () => {
    const host = expectProblem(await http(api, 'POST', '/v1/topology:preview', { body: { ...vmBody('vm-x'), host: 'hv-nope' } }), 400, 'VM_HOST_NOT_FOUND');
    assert.deepEqual(
      host.violations.map((v: any) => v.field),
      ['host'],
    );

    const pool = expectProblem(
      await http(api, 'POST', '/v1/topology:preview', { body: { ...vmBody('vm-x'), memoryGroups: [dynamicGroup, { ...staticGroup, pool: 'p-nope' }] } }),
      400,
      'MEMORY_GROUP_POOL_NOT_FOUND',
    );
    assert.deepEqual(
      pool.violations.map((v: any) => v.field),
      ['memoryGroups[1].pool'],
    );

    const elsewhere = expectProblem(
      await http(api, 'POST', '/v1/topology:preview', { body: { ...vmBody('vm-x'), memoryGroups: [{ ...staticGroup, pool: 'p-other' }] } }),
      400,
      'POOL_ON_OTHER_HOST',
    );
    assert.deepEqual(
      elsewhere.violations.map((v: any) => v.field),
      ['memoryGroups[0].pool'],
    );

    // Every shape problem of the VM and its groups in one answer.
    const shapes = expectProblem(
      await http(api, 'POST', '/v1/topology:preview', {
        body: {
          ...vmBody('vm-x', { guestNodes: [{ guestNodeId: 0, vcpus: 0, bootMemoryBytes: 2 * GiB }] }),
          memoryGroups: [{ name: 's-1', pool: 'p-cxl', kind: 'STATIC' }, dynamicGroup, { ...dynamicGroup }],
        },
      }),
      400,
      'INVALID_TOPOLOGY_PREVIEW',
    );
    const fields = shapes.violations.map((v: any) => v.field);
    for (const f of ['guestNodes[0].vcpus', 'memoryGroups[0].sizeBytes', 'memoryGroups[2].name']) assert.ok(fields.includes(f), JSON.stringify(shapes.violations));

    const strict = expectProblem(await http(api, 'POST', '/v1/topology:preview', { body: { ...vmBody('vm-x'), bogus: 1 } }), 400, 'INVALID_BODY');
    assert.deepEqual(
      strict.violations.map((v: any) => v.field),
      ['bogus'],
    );

    // 101 ns DRAM and 70001 ns CXL share no power-of-ten base that fits HMAT's u16 entries.
    const wide = expectProblem(
      await http(api, 'POST', '/v1/topology:preview', { body: { ...vmBody('vm-x', { host: 'hv-wide' }), memoryGroups: [{ ...staticGroup, pool: 'p-wide' }] } }),
      409,
      'HMAT_LATENCY_NOT_REPRESENTABLE',
    );
    assert.equal(wide.code, 'FAILED_PRECONDITION');
    assert.match(wide.detail, /range too wide/);

    // The same over gRPC, with ErrorInfo reasons and BadRequest field violations.
    const vm = (o: Partial<Vm> = {}) =>
      Vm.create({
        host: 'hv-topo',
        kernelProfile: 'linux-6.12',
        guestNodes: [{ guestNodeId: 0, vcpus: 2, bootMemoryBytes: BigInt(2 * GiB), hostNodeId: 0 }],
        memorySlots: 2,
        maxMemoryBytes: BigInt(16 * GiB),
        ...o,
      });
    const staticOn = (p: string) => ({ name: 's-1', pool: p, kind: MemoryGroupKind.MEMORY_GROUP_KIND_STATIC, sizeBytes: BigInt(GiB) }) as MemoryGroup;
    const gHost = await grpcFailure(call(client, 'previewTopology', PreviewTopologyRequest.create({ vm: vm({ host: 'hv-nope' }) }), md()));
    assert.equal(gHost.code, status.INVALID_ARGUMENT);
    assert.equal(gHost.reason, 'VM_HOST_NOT_FOUND');
    assert.deepEqual(
      gHost.violations.map((v) => v.field),
      ['host'],
    );
    const gPool = await grpcFailure(call(client, 'previewTopology', PreviewTopologyRequest.create({ vm: vm(), memoryGroups: [staticOn('p-nope')] }), md()));
    assert.equal(gPool.code, status.INVALID_ARGUMENT);
    assert.equal(gPool.reason, 'MEMORY_GROUP_POOL_NOT_FOUND');
    assert.deepEqual(
      gPool.violations.map((v) => v.field),
      ['memoryGroups[0].pool'],
    );
    const gWide = await grpcFailure(call(client, 'previewTopology', PreviewTopologyRequest.create({ vm: vm({ host: 'hv-wide' }), memoryGroups: [staticOn('p-wide')] }), md()));
    assert.equal(gWide.code, status.FAILED_PRECONDITION);
    assert.equal(gWide.reason, 'HMAT_LATENCY_NOT_REPRESENTABLE');
    const gNoVm = await grpcFailure(call(client, 'previewTopology', PreviewTopologyRequest.create({}), md()));
    assert.equal(gNoVm.code, status.INVALID_ARGUMENT);
    assert.deepEqual(
      gNoVm.violations.map((v) => v.field),
      ['vm'],
    );
  });

  it('a viewer key reads and previews topology; no key is refused', async () => {
    assert.equal((await http(api, 'GET', '/v1/vms/vm-t/topology', { key: viewerKey })).status, 200);
    const preview = await http(api, 'POST', '/v1/topology:preview', { key: viewerKey, body: { ...vmBody('vm-v'), memoryGroups: [dynamicGroup] } });
    assert.equal(preview.status, 200, JSON.stringify(preview.body));
    const t = await call<GetTopologyRequest, Topology>(client, 'getTopology', GetTopologyRequest.create({ vm: 'vm-t' }), grpcMetadata(viewerKey));
    assert.equal(t.nodes.length, 3);
    expectProblem(await http(api, 'GET', '/v1/vms/vm-t/topology', { key: null }), 401, 'INVALID_API_KEY');
    const e = await grpcFailure(call(client, 'getTopology', GetTopologyRequest.create({ vm: 'vm-t' }), grpcMetadata(null)));
    assert.equal(e.code, status.UNAUTHENTICATED);
  });

  it('the preview route is the literal custom method only', async () => {
    for (const path of ['/v1/topology', '/v1/topology:other', '/v1/topologyx:preview', '/v1/vms/vm-t/topology:preview']) {
      assert.equal((await http(api, 'POST', path, { body: vmBody('vm-x') })).status, 404, path);
    }
  });

  it('the OpenAPI document lists both endpoints', async () => {
    const doc = (await http(api, 'GET', '/openapi.json', { key: null })).body;
    assert.ok(doc.paths['/v1/vms/{vm}/topology']?.get);
    assert.ok(doc.paths['/v1/topology:preview']?.post);
    assert.ok(doc.components.schemas.Topology);
  });
});
