import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { MiB } from '../units';
import { nextHotplugStep, zoneMismatches, type DesiredGroupMemory, type ObservedMemoryDevice, type ObservedVmMemory } from './reconcile';

const BS = 128 * MiB;
const ADDR = 4096 * MiB; // device memory starts at 4 GiB: block 32
const objectAdd = { execute: 'object-add' as const, arguments: { 'qom-type': 'memory-backend-ram', id: 'mem-g', size: 256 * MiB } };
const deviceAdd = { execute: 'device_add' as const, arguments: { driver: 'pc-dimm', id: 'dimm-g', memdev: 'mem-g', node: 1 } };

const staticGroup = (present = true): DesiredGroupMemory => ({
  groupId: 'g',
  kind: 'STATIC',
  present,
  deviceId: 'dimm-g',
  backendId: 'mem-g',
  sizeBytes: 256 * MiB,
  onlineType: 'ONLINE_MOVABLE',
  objectAdd,
  deviceAdd,
});
const dynamicGroup = (requestedBytes: number, present = true): DesiredGroupMemory => ({
  ...staticGroup(present),
  kind: 'DYNAMIC',
  deviceId: 'vmem-g',
  requestedBytes,
  sizeBytes: undefined,
  deviceAdd: { execute: 'device_add', arguments: { driver: 'virtio-mem-pci', id: 'vmem-g', memdev: 'mem-g', node: 1 } },
});
const dimm: ObservedMemoryDevice = { id: 'dimm-g', model: 'pc-dimm', backendId: 'mem-g', addrBytes: ADDR, sizeBytes: 256 * MiB, node: 1 };
const vmem = (size: number, requested: number): ObservedMemoryDevice => ({
  id: 'vmem-g',
  model: 'virtio-mem-pci',
  backendId: 'mem-g',
  addrBytes: ADDR,
  sizeBytes: size,
  requestedBytes: requested,
  maxSizeBytes: 1024 * MiB,
  node: 1,
});
const vm = (devices: ObservedMemoryDevice[], backends: string[], blocks: [number, boolean, string?][] = []): ObservedVmMemory => ({
  devices,
  backendIds: backends,
  guestBlockSizeBytes: BS,
  blocks: [[0, true, 'Normal'] as [number, boolean, string?], ...blocks].map(([index, online, zone]) => ({ index, online, ...(zone ? { zone } : {}) })),
});

describe('static group plug', () => {
  const steps: [string, ObservedVmMemory, string][] = [
    ['nothing yet: add the backend', vm([], []), 'object-add'],
    ['backend only: add the DIMM', vm([], ['mem-g']), 'device-add'],
    ['DIMM present, guest has not added its blocks: wait', vm([dimm], ['mem-g']), 'wait'],
    ['one of two blocks added: wait', vm([dimm], ['mem-g'], [[32, false]]), 'wait'],
    ['blocks offline: online them movable', vm([dimm], ['mem-g'], [[32, false], [33, false]]), 'online-blocks'],
    ['one block online: online the other', vm([dimm], ['mem-g'], [[32, true, 'Movable'], [33, false]]), 'online-blocks'],
    ['all online: done', vm([dimm], ['mem-g'], [[32, true, 'Movable'], [33, true, 'Movable']]), 'done'],
  ];
  for (const [what, observed, kind] of steps) it(what, () => assert.equal(nextHotplugStep(staticGroup(), observed).kind, kind));

  it('onlines exactly the offline blocks of its own DIMM, in the zone the online type names', () => {
    const step = nextHotplugStep(staticGroup(), vm([dimm], ['mem-g'], [[32, true, 'Movable'], [33, false], [34, false]]));
    assert.deepEqual(step, { kind: 'online-blocks', indexes: [33], zone: 'online_movable' });
    assert.deepEqual(nextHotplugStep({ ...staticGroup(), onlineType: 'ONLINE_KERNEL' }, vm([dimm], ['mem-g'], [[32, false], [33, false]])), {
      kind: 'online-blocks',
      indexes: [32, 33],
      zone: 'online_kernel',
    });
    assert.equal((nextHotplugStep({ ...staticGroup(), onlineType: 'AUTO' }, vm([dimm], ['mem-g'], [[32, false], [33, false]])) as { zone: string }).zone, 'online');
  });

  it('reports plugged bytes, online blocks and zones when done', () => {
    assert.deepEqual(nextHotplugStep(staticGroup(), vm([dimm], ['mem-g'], [[32, true, 'Movable'], [33, true, 'Movable']])), {
      kind: 'done',
      pluggedBytes: 256 * MiB,
      onlineBlocks: [32, 33],
      zones: { Movable: 2 },
    });
  });
});

describe('static group unplug', () => {
  const steps: [string, ObservedVmMemory, string][] = [
    ['blocks online: offline them first', vm([dimm], ['mem-g'], [[32, true], [33, true]]), 'offline-blocks'],
    ['blocks offline: device_del', vm([dimm], ['mem-g'], [[32, false], [33, false]]), 'device-del'],
    ['device gone, backend left: object-del', vm([], ['mem-g']), 'object-del'],
    ['all gone: done', vm([], []), 'done'],
  ];
  for (const [what, observed, kind] of steps) it(what, () => assert.equal(nextHotplugStep(staticGroup(false), observed).kind, kind));
  it('never touches blocks outside its DIMM', () => {
    assert.deepEqual(nextHotplugStep(staticGroup(false), vm([dimm], ['mem-g'], [[31, true], [33, true], [34, true]])), { kind: 'offline-blocks', indexes: [33] });
  });
});

describe('dynamic group', () => {
  it('creates, sets the requested size, waits for the guest, onlines', () => {
    assert.equal(nextHotplugStep(dynamicGroup(512 * MiB), vm([], [])).kind, 'object-add');
    assert.equal(nextHotplugStep(dynamicGroup(512 * MiB), vm([], ['mem-g'])).kind, 'device-add');
    assert.deepEqual(nextHotplugStep(dynamicGroup(512 * MiB), vm([vmem(0, 0)], ['mem-g'])), { kind: 'set-requested-size', deviceId: 'vmem-g', bytes: 512 * MiB });
    assert.equal(nextHotplugStep(dynamicGroup(512 * MiB), vm([vmem(256 * MiB, 512 * MiB)], ['mem-g'])).kind, 'wait');
    assert.deepEqual(nextHotplugStep(dynamicGroup(512 * MiB), vm([vmem(512 * MiB, 512 * MiB)], ['mem-g'], [[32, true], [33, false], [34, false], [35, true]])), {
      kind: 'online-blocks',
      indexes: [33, 34],
      zone: 'online_movable',
    });
    assert.equal(nextHotplugStep(dynamicGroup(512 * MiB), vm([vmem(512 * MiB, 512 * MiB)], ['mem-g'], [[32, true], [33, true]])).kind, 'wait');
    assert.equal(nextHotplugStep(dynamicGroup(512 * MiB), vm([vmem(512 * MiB, 512 * MiB)], ['mem-g'], [[32, true], [33, true], [34, true], [35, true]])).kind, 'done');
  });
  it('leaves alone an offline block the driver is removing after a shrink', () => {
    assert.equal(nextHotplugStep(dynamicGroup(128 * MiB), vm([vmem(128 * MiB, 128 * MiB)], ['mem-g'], [[32, true], [33, false]])).kind, 'done');
    assert.deepEqual(nextHotplugStep(dynamicGroup(256 * MiB), vm([vmem(256 * MiB, 256 * MiB)], ['mem-g'], [[32, true], [33, false], [34, false]])), {
      kind: 'online-blocks',
      indexes: [33],
      zone: 'online_movable',
    });
  });
  it('shrinks by lowering the requested size and waiting for the guest', () => {
    assert.deepEqual(nextHotplugStep(dynamicGroup(128 * MiB), vm([vmem(512 * MiB, 512 * MiB)], ['mem-g'])), { kind: 'set-requested-size', deviceId: 'vmem-g', bytes: 128 * MiB });
    assert.equal(nextHotplugStep(dynamicGroup(128 * MiB), vm([vmem(384 * MiB, 128 * MiB)], ['mem-g'])).kind, 'wait');
  });
  it('removes: requested 0, wait for 0 plugged, device_del, object-del', () => {
    assert.deepEqual(nextHotplugStep(dynamicGroup(0, false), vm([vmem(512 * MiB, 512 * MiB)], ['mem-g'])), { kind: 'set-requested-size', deviceId: 'vmem-g', bytes: 0 });
    assert.equal(nextHotplugStep(dynamicGroup(0, false), vm([vmem(128 * MiB, 0)], ['mem-g'])).kind, 'wait');
    assert.equal(nextHotplugStep(dynamicGroup(0, false), vm([vmem(0, 0)], ['mem-g'])).kind, 'device-del');
    assert.equal(nextHotplugStep(dynamicGroup(0, false), vm([], ['mem-g'])).kind, 'object-del');
    assert.equal(nextHotplugStep(dynamicGroup(0, false), vm([], [])).kind, 'done');
  });
});

describe('what a wait depends on', () => {
  const on = (d: DesiredGroupMemory, o: ObservedVmMemory) => {
    const step = nextHotplugStep(d, o);
    assert.equal(step.kind, 'wait');
    return (step as { on: string }).on;
  };
  it('the guest adding memory blocks: re-read the guest', () => {
    assert.equal(on(staticGroup(), vm([dimm], ['mem-g'], [[32, false]])), 'guest');
    assert.equal(on(dynamicGroup(512 * MiB), vm([vmem(512 * MiB, 512 * MiB)], ['mem-g'], [[32, true], [33, true]])), 'guest');
  });
  it('virtio-mem converging: re-read QEMU', () => {
    assert.equal(on(dynamicGroup(128 * MiB), vm([vmem(384 * MiB, 128 * MiB)], ['mem-g'])), 'qemu');
    assert.equal(on(dynamicGroup(0, false), vm([vmem(128 * MiB, 0)], ['mem-g'])), 'qemu');
  });
});

describe('zone verification', () => {
  it('flags blocks the guest put in another zone than asked', () => {
    const blocks = [
      { index: 32, online: true, zone: 'Movable' },
      { index: 33, online: true, zone: 'Normal' },
    ];
    assert.deepEqual(zoneMismatches('ONLINE_MOVABLE', blocks).map((b) => b.index), [33]);
    assert.deepEqual(zoneMismatches('ONLINE_KERNEL', blocks).map((b) => b.index), [32]);
    assert.deepEqual(zoneMismatches('AUTO', blocks), []);
  });
});
