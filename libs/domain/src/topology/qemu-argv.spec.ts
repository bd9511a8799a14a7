import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { GiB, MiB } from '../units';
import { compileTopology } from './compile';
import { memoryDeviceHotplugCommands, qemuSize, renderQemuArgv } from './qemu-argv';
import { oneCxlInput, perfOf, twoSocketInput } from './spec-helpers';

/** [flag, value] pairs of an argv. */
function pairs(args: string[]): [string, string][] {
  const out: [string, string][] = [];
  for (let i = 0; i < args.length; i += 2) out.push([args[i] as string, args[i + 1] as string]);
  return out;
}

function parseSize(s: string): number {
  const m = /^(\d+)([KMGT]?)$/.exec(s);
  assert.ok(m, `size ${s}`);
  const mult = { '': 1, K: 1024, M: MiB, G: GiB, T: 1024 * GiB }[m[2] as '' | 'K' | 'M' | 'G' | 'T'];
  return Number(m[1]) * mult;
}

function opts(value: string): Map<string, string> {
  return new Map(value.split(',').map((kv) => kv.split('=') as [string, string]));
}

const options = { accel: 'tcg', cpuModel: 'max,-cx16', qmpSocketPath: '/run/vm/qmp.sock', qgaSocketPath: '/run/vm/qga.sock', kernel: '/k', initrd: '/i', append: 'console=ttyS0' };

describe('QEMU argv', () => {
  const topo = compileTopology(twoSocketInput());
  const args = renderQemuArgv(topo, { ...options, extraArgs: ['-display', 'none'] });
  const p = pairs(args);
  const numa = p.filter(([f]) => f === '-numa').map(([, v]) => v);

  it('is an array of flag/value pairs, extraArgs last', () => {
    assert.ok(args.every((a) => typeof a === 'string'));
    assert.deepEqual(args.slice(-2), ['-display', 'none']);
    assert.equal(p.find(([f]) => f === '-machine')?.[1], 'q35,hmat=on');
    assert.equal(p.find(([f]) => f === '-smp')?.[1], '4,sockets=4,cores=1,threads=1');
    assert.equal(p.find(([f]) => f === '-cpu')?.[1], 'max,-cx16');
  });

  it('declares every -numa node before any -numa dist, and those before any hmat-lb', () => {
    const kinds = numa.map((v) => v.split(',')[0]);
    const lastNode = kinds.lastIndexOf('node');
    const firstDist = kinds.indexOf('dist');
    const lastDist = kinds.lastIndexOf('dist');
    const firstLb = kinds.indexOf('hmat-lb');
    assert.ok(lastNode < firstDist && lastDist < firstLb, kinds.join(' '));
    assert.equal(kinds.filter((k) => k === 'node').length, topo.guestNodes.length);
    assert.equal(kinds.filter((k) => k === 'dist').length, 4 * 3);
  });

  it('Σ -numa node memdev sizes == -m size; slots and maxmem carried over', () => {
    const backends = new Map(
      p.filter(([f, v]) => f === '-object' && v.startsWith('memory-backend')).map(([, v]) => [opts(v).get('id'), parseSize(opts(v).get('size') ?? '')]),
    );
    const memdevs = numa.filter((v) => v.startsWith('node,')).map((v) => opts(v).get('memdev')).filter((x): x is string => !!x);
    const sum = memdevs.reduce((s, id) => s + (backends.get(id) ?? NaN), 0);
    const m = opts(p.find(([f]) => f === '-m')?.[1] ?? '');
    assert.equal(sum, parseSize(m.get('size') ?? ''));
    assert.equal(sum, topo.bootMemoryBytes);
    assert.equal(m.get('slots'), '8');
    assert.equal(parseSize(m.get('maxmem') ?? ''), 16 * GiB);
  });

  it('every backend precedes its user, and root ports precede the devices on them', () => {
    const seen = new Set<string>();
    for (const [flag, value] of p) {
      const o = opts(value);
      if (flag === '-object' || (flag === '-device' && value.startsWith('pcie-root-port'))) seen.add(o.get('id') ?? '');
      const uses = [o.get('memdev'), flag === '-device' ? o.get('bus') : undefined].filter((x): x is string => !!x && !x.startsWith('virtio-serial'));
      for (const u of uses) assert.ok(seen.has(u), `${u} used before declared in ${value}`);
    }
  });

  it('binds memory to host nodes and names the CXL initiator', () => {
    assert.ok(numa.includes('node,nodeid=2,memdev=ram-node2,initiator=0'));
    assert.ok(numa.includes('node,nodeid=3,initiator=1'), 'the last CXL node has no boot memory');
    assert.ok(args.includes('memory-backend-ram,id=ram-node2,size=128M,host-nodes=2,policy=bind'));
    assert.ok(args.includes('memory-backend-ram,id=memgrp-vmem-b,size=2G,host-nodes=3,policy=bind,reserve=off'));
    assert.ok(args.includes('virtio-mem-pci,id=vmem-vmem-b,memdev=memgrp-vmem-b,node=3,block-size=2M,requested-size=512M,bus=rp-vmem-b'));
    assert.ok(args.includes('pc-dimm,id=dimm-dimm-a,memdev=memgrp-dimm-a,node=2'));
    assert.ok(!args.some((a) => a.includes('vmem-later')), 'groups hotplugged later are not on the command line');
  });

  it('hmat-lb: full matrix, read/write types only, self entries for every CPU node, exact 1 MiB-aligned bandwidth', () => {
    const lbs = numa.filter((v) => v.startsWith('hmat-lb,')).map(opts);
    assert.equal(lbs.length, 2 * 4 * 4);
    for (const type of ['read-latency', 'write-latency', 'read-bandwidth', 'write-bandwidth'])
      for (const cpu of ['0', '1']) assert.ok(lbs.some((o) => o.get('data-type') === type && o.get('initiator') === cpu && o.get('target') === cpu));
    assert.ok(lbs.every((o) => !(o.get('data-type') ?? '').startsWith('access')));
    for (const o of lbs.filter((x) => x.has('bandwidth'))) assert.equal(parseSize(o.get('bandwidth') ?? '') % MiB, 0);
    assert.ok(lbs.some((o) => o.get('bandwidth') === '20G' && o.get('target') === '2'));
  });

  it('QMP and guest-agent sockets', () => {
    assert.ok(args.includes('socket,id=qmp0,path=/run/vm/qmp.sock,server=on,wait=off'));
    assert.ok(args.includes('chardev=qmp0,mode=control'));
    assert.ok(args.includes('virtserialport,bus=virtio-serial0.0,chardev=qga0,name=org.qemu.guest_agent.0'));
  });

  it('escapes commas in option values', () => {
    const input = oneCxlInput(perfOf(100, 100, 51200, 51200), perfOf(250, 250, 20480, 20480));
    input.vm.name = 'a,b';
    const a = renderQemuArgv(compileTopology(input), { qmpSocketPath: '/tmp/x,y' });
    assert.ok(a.includes('guest=a,,b'));
    assert.ok(a.includes('socket,id=qmp0,path=/tmp/x,,y,server=on,wait=off'));
  });

  it('pc machine, no maxmem when there is no device memory', () => {
    const input = oneCxlInput(perfOf(100, 100, 51200, 51200), perfOf(250, 250, 20480, 20480));
    input.groups = [];
    input.vm.memorySlots = 0;
    input.vm.maxMemoryBytes = 512 * MiB;
    const a = renderQemuArgv(compileTopology(input));
    assert.ok(a.includes('pc,hmat=on'));
    assert.equal(a[a.indexOf('-m') + 1], 'size=512M');
  });

  it('exact size literals', () => {
    assert.equal(qemuSize(50 * GiB), '50G');
    assert.equal(qemuSize(17163 * MiB), '17163M');
    assert.equal(qemuSize(1536 * 1024), '1536K');
    assert.equal(qemuSize(1000), '1000B');
  });

  it('hotplug commands for a later group reuse the same ids and need a spare port on q35', () => {
    const [objectAdd, deviceAdd] = memoryDeviceHotplugCommands(topo, 'vmem-later', 'rp-spare0');
    assert.deepEqual(objectAdd, {
      execute: 'object-add',
      arguments: { 'qom-type': 'memory-backend-ram', id: 'memgrp-vmem-later', size: GiB, 'host-nodes': [2], policy: 'bind', reserve: false },
    });
    assert.deepEqual(deviceAdd.arguments, {
      driver: 'virtio-mem-pci',
      id: 'vmem-vmem-later',
      memdev: 'memgrp-vmem-later',
      node: 2,
      'block-size': 2 * MiB,
      'requested-size': 0,
      bus: 'rp-spare0',
    });
    assert.throws(() => memoryDeviceHotplugCommands(topo, 'vmem-later'), /spare pcie-root-port/);
  });
});
