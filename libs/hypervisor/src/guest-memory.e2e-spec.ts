import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { bootGuest, eventually, type BootedGuest, type GuestKernel } from '#testing/guest';
import type { DimmDevice, VirtioMemDevice } from './memory-devices';
import { peripheralPath } from './memory-devices';

/**
 * Real guests under TCG: memory hotplug end to end through QMP and the guest agent, on both
 * guest kernels Memplane profiles. One boot per kernel; the steps below run in order on it.
 */

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

// node0: 2 CPUs + 256 MiB; node1: CPU-less 256 MiB (the "CXL" node); a virtio-mem device on
// node1 cold-plugged empty; room for pc-dimms (slots/maxmem).
const TOPOLOGY = [
  '-machine', 'pc',
  '-smp', '2',
  '-m', '512M,slots=4,maxmem=8G',
  '-object', 'memory-backend-ram,id=ram0,size=256M',
  '-numa', 'node,nodeid=0,cpus=0-1,memdev=ram0',
  '-object', 'memory-backend-ram,id=ram1,size=256M',
  '-numa', 'node,nodeid=1,memdev=ram1',
  '-object', 'memory-backend-ram,id=vmem-g2,size=1G',
  '-device', 'virtio-mem-pci,id=vmem2,memdev=vmem-g2,node=1,requested-size=0',
]; // prettier-ignore

function meminfoKiB(text: string, field: string): number {
  const m = new RegExp(`${field}:\\s+(\\d+) kB`).exec(text);
  assert.ok(m, `${field} missing in:\n${text}`);
  return Number(m[1]);
}

function blockIndexes(addressBytes: number, sizeBytes: number, blockBytes: number): number[] {
  const first = addressBytes / blockBytes;
  return Array.from({ length: sizeBytes / blockBytes }, (_, i) => first + i);
}

for (const kernel of ['linux-6.1', 'linux-6.12'] as GuestKernel[]) {
  describe(`memory hotplug on a ${kernel} guest`, { timeout: 300_000 }, () => {
    let g: BootedGuest;
    let blockBytes = 0;
    let node1BootKiB = 0;

    before(async () => {
      // auto-movable: plain "online" (all QGA can write) puts the DIMM in ZONE_MOVABLE, so it
      // can be offlined again reliably (node1 has boot kernel memory for the 301 % ratio).
      g = await bootGuest({ kernel, qemuArgs: TOPOLOGY, kernelArgs: ['memory_hotplug.online_policy=auto-movable'] });
      console.log(`${kernel} (${g.kernelRelease}) booted to guest agent in ${g.bootMs} ms`);
    });
    after(async () => {
      await g?.stop();
    });

    it('QMP lists the cold-plugged, empty virtio-mem device', async () => {
      const devices = await g.driver.queryMemoryDevices(g.vmId);
      assert.equal(devices.length, 1);
      const vmem = devices[0] as VirtioMemDevice;
      assert.equal(vmem.kind, 'virtio-mem');
      assert.equal(vmem.id, 'vmem2');
      assert.equal(vmem.node, 1);
      assert.equal(vmem.requestedSizeBytes, 0);
      assert.equal(vmem.sizeBytes, 0);
      assert.equal(vmem.maxSizeBytes, 1 * GiB);
      assert.equal(vmem.blockSizeBytes, 2 * MiB); // THP size on x86_64 hosts
      assert.equal(vmem.memdev, '/objects/vmem-g2');
    });

    it('guest agent reports 128 MiB memory blocks, all boot blocks online', async () => {
      blockBytes = await g.driver.guestMemoryBlockSizeBytes(g.vmId);
      assert.equal(blockBytes, 128 * MiB);
      const blocks = await g.driver.guestMemoryBlocks(g.vmId);
      assert.equal(blocks.length, 512 / 128);
      assert.ok(blocks.every((b) => b.online));
      assert.equal(g.kernelRelease.startsWith(kernel === 'linux-6.1' ? '6.1.' : '6.12.'), true);
      const uname = (await g.exec('uname', ['-r'])).stdout.toString().trim();
      assert.equal(uname, g.kernelRelease);
    });

    it('reads node1 meminfo through guest-exec (CPU-less node with boot memory)', async () => {
      const text = await g.readGuestFile('/sys/devices/system/node/node1/meminfo');
      node1BootKiB = meminfoKiB(text, 'Node 1 MemTotal');
      // Less than the 256 MiB backend: early reservations (e.g. swiotlb, memmap) come off the
      // top node; 6.1 showed ~186 MiB, 6.12 ~149 MiB.
      assert.ok(node1BootKiB > 128 * 1024 && node1BootKiB <= 256 * 1024, `node1 MemTotal ${node1BootKiB} kB`);
      assert.equal((await g.readGuestFile('/sys/devices/system/node/node1/cpulist')).trim(), '');
      // The same file through guest-file-open/read (no process spawned).
      const viaFile = (await g.qga.readFile('/sys/devices/system/node/node1/meminfo')).toString();
      assert.equal(meminfoKiB(viaFile, 'Node 1 MemTotal'), node1BootKiB);
    });

    it('hotplugs a pc-dimm on node1, onlines its blocks (Movable), offlines and unplugs it', async () => {
      const { driver, vmId } = g;
      await driver.objectAdd(vmId, 'memory-backend-ram', 'mem-g1', { size: 256 * MiB });
      await driver.deviceAdd(vmId, 'pc-dimm', 'dimm-g1', { memdev: 'mem-g1', node: 1 });

      const dimm = (await driver.queryMemoryDevices(vmId)).find((d) => d.kind === 'dimm') as DimmDevice;
      assert.ok(dimm, 'dimm listed');
      assert.deepEqual(
        [dimm.id, dimm.node, dimm.sizeBytes, dimm.hotplugged, dimm.memdev],
        ['dimm-g1', 1, 256 * MiB, true, '/objects/mem-g1'],
      );
      const indexes = blockIndexes(dimm.addressBytes, dimm.sizeBytes, blockBytes);

      // The guest adds the two blocks offline (memhp_default_state=offline).
      const added = await eventually('DIMM blocks visible in the guest', async () => {
        const blocks = await driver.guestMemoryBlocks(vmId);
        const mine = blocks.filter((b) => indexes.includes(b.physIndex));
        return mine.length === indexes.length ? mine : undefined;
      });
      assert.ok(added.every((b) => !b.online));
      for (const i of indexes) {
        assert.equal((await g.exec('ls', [`/sys/devices/system/node/node1/memory${i}`])).exitCode, 0, `memory${i} on node1`);
      }

      const onlined = await driver.setGuestMemoryBlocks(vmId, indexes.map((physIndex) => ({ physIndex, online: true })));
      assert.deepEqual(onlined.map((r) => r.response), indexes.map(() => 'success'));
      const nowBlocks = await driver.guestMemoryBlocks(vmId);
      assert.ok(indexes.every((i) => nowBlocks.find((b) => b.physIndex === i)?.online));
      for (const i of indexes) {
        assert.equal((await g.readGuestFile(`/sys/devices/system/memory/memory${i}/valid_zones`)).trim(), 'Movable');
      }
      const node1KiB = meminfoKiB(await g.readGuestFile('/sys/devices/system/node/node1/meminfo'), 'Node 1 MemTotal');
      assert.equal(node1KiB - node1BootKiB, 256 * 1024);

      const offlined = await driver.setGuestMemoryBlocks(vmId, indexes.map((physIndex) => ({ physIndex, online: false })));
      assert.deepEqual(offlined.map((r) => r.response), indexes.map(() => 'success'));

      const cursor = driver.eventCursor(vmId);
      const deleted = await driver.deviceDel(vmId, 'dimm-g1', { deletedTimeoutMs: 30_000 });
      assert.equal(deleted?.data['device'], 'dimm-g1');
      // The guest's _OST evaluation is reported too (ACPI eject succeeded: status 0).
      const ost = await driver.waitForEvent(vmId, (e) => e.event === 'ACPI_DEVICE_OST', { after: cursor, timeoutMs: 5_000 });
      assert.equal((ost.data['info'] as { device?: string }).device, 'dimm-g1');

      assert.equal((await driver.queryMemoryDevices(vmId)).filter((d) => d.kind === 'dimm').length, 0);
      await eventually('DIMM blocks gone from the guest', async () => {
        const blocks = await driver.guestMemoryBlocks(vmId);
        return blocks.some((b) => indexes.includes(b.physIndex)) ? undefined : true;
      });
      await driver.objectDel(vmId, 'mem-g1'); // the backend is free again once the DIMM is gone
    });

    it('grows a virtio-mem device to 512 MiB and shrinks it to 128 MiB, then to 0', async () => {
      const { driver, vmId } = g;
      const qomPath = peripheralPath('vmem2');
      const vmemSize = async (): Promise<VirtioMemDevice> =>
        (await driver.queryMemoryDevices(vmId)).find((d) => d.kind === 'virtio-mem') as VirtioMemDevice;

      let cursor = driver.eventCursor(vmId);
      await driver.qomSet(vmId, qomPath, 'requested-size', 512 * MiB);
      const ev = await driver.waitForEvent(
        vmId,
        (e) => e.event === 'MEMORY_DEVICE_SIZE_CHANGE' && e.data['id'] === 'vmem2',
        { after: cursor, timeoutMs: 30_000 },
      );
      assert.equal(ev.data['qom-path'], qomPath);
      // Events are throttled to one a second per device, so poll for the final size.
      const grown = await eventually('virtio-mem plugged 512 MiB', async () => {
        const d = await vmemSize();
        return d.sizeBytes === 512 * MiB ? d : undefined;
      });
      assert.equal(grown.requestedSizeBytes, 512 * MiB);
      assert.equal(await driver.qomGet<number>(vmId, qomPath, 'size'), 512 * MiB);

      // SBM (2 MiB subblocks < 128 MiB blocks): the guest added 4 blocks on node1, offline.
      const vmemBlocks = blockIndexes(grown.addressBytes, 512 * MiB, blockBytes);
      const blocks = await driver.guestMemoryBlocks(vmId);
      assert.deepEqual(
        vmemBlocks.map((i) => blocks.find((b) => b.physIndex === i)?.online),
        vmemBlocks.map(() => false),
      );
      assert.equal((await g.exec('ls', [`/sys/devices/system/node/node1/memory${vmemBlocks[0]}`])).exitCode, 0);

      cursor = driver.eventCursor(vmId);
      await driver.qomSet(vmId, qomPath, 'requested-size', 128 * MiB);
      await eventually('virtio-mem shrunk to 128 MiB', async () => ((await vmemSize()).sizeBytes === 128 * MiB ? true : undefined));
      const shrinkEvent = await driver.waitForEvent(vmId, 'MEMORY_DEVICE_SIZE_CHANGE', { after: cursor, timeoutMs: 5_000 });
      assert.equal(shrinkEvent.data['id'], 'vmem2');

      await driver.qomSet(vmId, qomPath, 'requested-size', 0);
      await eventually('virtio-mem empty', async () => ((await vmemSize()).sizeBytes === 0 ? true : undefined));
    });

    it('guest agent stream survives a timed-out command and a reconnect', async () => {
      // With the guest's vCPUs paused the agent cannot answer in time: its reply arrives once
      // they run again, late, and must be dropped by the resync, not taken as the answer to
      // the next command. (A 1 ms timeout was not always shorter than the round trip.)
      await g.qmp.execute('stop');
      try {
        await assert.rejects(g.qga.execute('guest-get-memory-blocks', undefined, { timeoutMs: 200 }), /timed out/);
      } finally {
        await g.qmp.execute('cont');
      }
      assert.deepEqual(await g.qga.execute('guest-ping'), {});
      await g.qga.reconnect();
      assert.equal(await g.qga.getMemoryBlockSizeBytes(), 128 * MiB);
    });

    it('rejects a virtio-mem request beyond the backend with the QEMU message', async () => {
      await assert.rejects(g.driver.qomSet(g.vmId, peripheralPath('vmem2'), 'requested-size', 2 * GiB), (e: Error & { reason?: string }) => {
        assert.equal(e.reason, 'QEMU_GENERIC_ERROR');
        assert.match(e.message, /requested-size/);
        return true;
      });
    });
  });
}
