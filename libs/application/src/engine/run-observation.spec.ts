import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { GuestMemoryBlock, HypervisorDriver, MemoryDevice } from '#hypervisor';
import { RunObservation } from './run-observation';

const MiB = 1024 ** 2;
const BLOCK = 128 * MiB;

/**
 * The run's view is rebuilt only where something changed (RunObservation keeps each part
 * until then). Here a scripted QEMU and guest change under it, and every view must say
 * what a fresh observation would.
 */
function scripted(devices: MemoryDevice[], blocks: GuestMemoryBlock[]) {
  const state = { devices, blocks };
  const driver = {
    queryMemoryDevices: async () => structuredClone(state.devices),
    guestMemoryBlocks: async () => structuredClone(state.blocks),
    qmp: () => ({ execute: async () => [{ name: 'mem-g1', type: 'memory-backend-ram' }] }),
  } as unknown as HypervisorDriver;
  return { driver, state };
}

const dimm = (id: string, addressBytes: number, sizeBytes = BLOCK): MemoryDevice => ({
  kind: 'dimm',
  id,
  addressBytes,
  sizeBytes,
  slot: 0,
  node: 1,
  memdev: `/objects/mem-${id}`,
  hotplugged: true,
  hotpluggable: true,
});

describe('RunObservation view', () => {
  it('follows online changes in place, blocks and devices that come and go, and backends', async () => {
    const base = 4 * BLOCK;
    const { driver, state } = scripted([dimm('g1', base)], [0, 1, 2, 3, 4].map((physIndex) => ({ physIndex, online: physIndex < 4 })));
    const o = await RunObservation.observe(driver, 'vm', Promise.resolve(BLOCK));
    const first = o.view();
    assert.deepEqual(first.backendIds, ['mem-g1']);
    assert.deepEqual(first.devices.map((d) => [d.id, d.backendId, d.addrBytes]), [['g1', 'mem-g1', base]]);
    assert.deepEqual(first.blocks.map((b) => b.online), [true, true, true, true, false]);

    state.blocks[4]!.online = true;
    o.applied({ kind: 'online-blocks', indexes: [4], zone: 'online_movable' }, [{ physIndex: 4, response: 'success', zone: 'Movable' }]);
    assert.deepEqual(o.view().blocks[4], { index: 4, online: true, zone: 'Movable' });

    // A second DIMM: QEMU places it, the guest adds its block.
    state.devices.push(dimm('g2', base + BLOCK));
    state.blocks.push({ physIndex: 5, online: false });
    o.applied({ kind: 'object-add', command: { execute: 'object-add', arguments: { id: 'mem-g2' } } });
    assert.deepEqual(o.view().backendIds, ['mem-g1', 'mem-g2']);
    const reread = o.applied({ kind: 'device-add', command: { execute: 'device_add', arguments: { id: 'g2' } } });
    assert.deepEqual(reread, { rereadDevices: true, rereadBlocks: true });
    await o.refreshDevices();
    assert.equal(o.blocksStale, true, 'a new device makes the blocks stale');
    assert.deepEqual(o.view().devices.map((d) => d.id), ['g1', 'g2']);
    await o.refreshBlocks();
    assert.deepEqual(o.view().blocks.map((b) => [b.index, b.online, b.zone]), [
      [0, true, undefined],
      [1, true, undefined],
      [2, true, undefined],
      [3, true, undefined],
      [4, true, 'Movable'],
      [5, false, undefined],
    ]);

    // Re-reading an unchanged QEMU leaves the blocks as they are.
    o.blocksStale = false;
    await o.refreshDevices();
    assert.equal(o.blocksStale, false);

    // The guest refuses one block it no longer has; then g1 leaves.
    o.applied({ kind: 'offline-blocks', indexes: [5] }, [{ physIndex: 5, response: 'not-found' }]);
    assert.deepEqual(o.view().blocks.map((b) => b.index), [0, 1, 2, 3, 4]);
    o.applied({ kind: 'device-del', deviceId: 'g1' });
    assert.deepEqual(o.view().devices.map((d) => d.id), ['g2']);
    assert.deepEqual(o.view().blocks.map((b) => b.index), [0, 1, 2, 3]);
    o.applied({ kind: 'object-del', backendId: 'mem-g1' });
    assert.deepEqual(o.view().backendIds, ['mem-g2']);
  });

  it('shows a virtio-mem request at once and marks the blocks stale when the plugged size moves', async () => {
    const vmem: MemoryDevice = {
      kind: 'virtio-mem',
      id: 'g3',
      addressBytes: 8 * BLOCK,
      requestedSizeBytes: 0,
      sizeBytes: 0,
      maxSizeBytes: 4 * BLOCK,
      blockSizeBytes: 2 * MiB,
      node: 1,
      memdev: '/objects/mem-g3',
    };
    const { driver, state } = scripted([vmem], []);
    const o = await RunObservation.observe(driver, 'vm', Promise.resolve(BLOCK));
    assert.equal(o.view().devices[0]?.requestedBytes, 0);
    o.applied({ kind: 'set-requested-size', deviceId: 'g3', bytes: 2 * BLOCK });
    assert.equal(o.view().devices[0]?.requestedBytes, 2 * BLOCK);
    await o.refreshDevices();
    assert.equal(o.blocksStale, false, 'nothing plugged yet');
    const d = state.devices[0] as typeof vmem & { kind: 'virtio-mem' };
    d.requestedSizeBytes = 2 * BLOCK;
    d.sizeBytes = BLOCK;
    await o.refreshDevices();
    assert.equal(o.blocksStale, true);
    assert.equal(o.view().devices[0]?.sizeBytes, BLOCK);
  });
});
