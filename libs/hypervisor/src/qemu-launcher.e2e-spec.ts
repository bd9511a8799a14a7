import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DomainError } from '#domain';
import { ensureGuestImages } from '#testing/guest';
import { launchQemu, type QemuPaths, type QemuProcess } from './qemu-launcher';

/**
 * Real QEMU, no guest: `-S` keeps the vCPUs stopped, so these cases cost no TCG time.
 * They pin down the launcher's failure modes and how QEMU's errors reach callers.
 */

// Machine-level args only; a paused machine needs no kernel.
const PAUSED_PC = ['-S', '-nodefaults', '-no-user-config', '-display', 'none', '-accel', 'tcg', '-machine', 'pc'];

const tempDirs: string[] = [];
after(() => tempDirs.forEach((d) => fs.rmSync(d, { recursive: true, force: true })));

function tempPaths(name: string): QemuPaths {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `memplane-${name}-`));
  tempDirs.push(dir);
  return { qmpSocket: path.join(dir, 'qmp.sock'), logFile: path.join(dir, 'qemu.log') };
}

async function rejectsDomain(p: Promise<unknown>, check: (e: DomainError) => void): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof DomainError, `expected DomainError, got ${String(e)}`);
    check(e);
    return true;
  });
}

describe('QEMU launcher (real qemu-system-x86_64, paused machine)', { timeout: 120_000 }, () => {
  before(() => {
    // Installs qemu-system-x86 on a fresh machine; the images themselves are cached.
    ensureGuestImages('linux-6.1');
  });

  it('fails with QEMU_EXITED and the tail of QEMU log when argv is rejected', async () => {
    const paths = tempPaths('badargv');
    await rejectsDomain(launchQemu('bad-argv', [...PAUSED_PC, '-device', 'no-such-device-model'], paths), (e) => {
      assert.equal(e.code, 'FAILED_PRECONDITION');
      assert.equal(e.reason, 'QEMU_EXITED');
      assert.match(e.message, /'no-such-device-model' is not a valid device model name/);
      assert.match(e.metadata['logTail'] ?? '', /no-such-device-model/);
      assert.equal(e.metadata['exitCode'], '1');
    });
    assert.equal(fs.existsSync(paths.qmpSocket), false);
  });

  it('reports a missing binary as QEMU_SPAWN_FAILED', async () => {
    await rejectsDomain(launchQemu('no-binary', PAUSED_PC, tempPaths('nobin'), { binary: '/nonexistent/qemu' }), (e) => {
      assert.equal(e.reason, 'QEMU_SPAWN_FAILED');
    });
  });

  describe('QMP on a running (paused) machine', () => {
    let proc: QemuProcess;
    const paths = tempPaths('qmp');

    before(async () => {
      proc = await launchQemu('qmp-errors', [...PAUSED_PC, '-m', '512M,slots=4,maxmem=8G'], paths, { killOnExit: true });
    });
    after(async () => {
      await proc?.stop({ quitTimeoutMs: 2_000 });
    });

    it('negotiated capabilities and answers commands', async () => {
      assert.equal(proc.qmp.greeting.version.qemu.major >= 7, true);
      const status = await proc.qmp.execute<{ status: string; running: boolean }>('query-status');
      assert.equal(status.running, false);
    });

    it('maps a bad memdev on device_add (QEMU says DeviceNotFound) and keeps QEMU message', async () => {
      // QEMU 7.2 reports an unresolvable link property with the DeviceNotFound class,
      // although the missing thing is the backend object, not a device.
      await rejectsDomain(
        proc.qmp.execute('device_add', { driver: 'pc-dimm', id: 'd1', memdev: 'no-such-backend', node: 0 }),
        (e) => {
          assert.equal(e.code, 'NOT_FOUND');
          assert.equal(e.reason, 'QEMU_DEVICE_NOT_FOUND');
          assert.equal(e.metadata['qemuClass'], 'DeviceNotFound');
          assert.equal(e.metadata['qemuMessage'], "Device 'no-such-backend' not found");
          assert.equal(e.metadata['command'], 'device_add');
          assert.equal(e.message, "device_add: Device 'no-such-backend' not found");
        },
      );
    });

    it('maps GenericError (pc-dimm on a node the machine lacks)', async () => {
      await proc.qmp.execute('object-add', { 'qom-type': 'memory-backend-ram', id: 'm-node', size: 256 * 1024 * 1024 });
      await rejectsDomain(proc.qmp.execute('device_add', { driver: 'pc-dimm', id: 'd2', memdev: 'm-node', node: 7 }), (e) => {
        assert.equal(e.code, 'FAILED_PRECONDITION');
        assert.equal(e.reason, 'QEMU_GENERIC_ERROR');
        assert.match(e.message, /DIMM property node has value 7' which exceeds the number of numa nodes/);
      });
      await proc.qmp.execute('object-del', { id: 'm-node' });
    });

    it('keeps the backend-size message for a misaligned pc-dimm backend', async () => {
      await proc.qmp.execute('object-add', { 'qom-type': 'memory-backend-ram', id: 'odd', size: 3 * 1024 * 1024 });
      await rejectsDomain(proc.qmp.execute('device_add', { driver: 'pc-dimm', id: 'd-odd', memdev: 'odd' }), (e) => {
        assert.equal(e.reason, 'QEMU_GENERIC_ERROR');
        assert.match(e.message, /backend memory size must be multiple of 0x200000/);
      });
      await proc.qmp.execute('object-del', { id: 'odd' });
    });

    it('maps CommandNotFound and DeviceNotFound', async () => {
      await rejectsDomain(proc.qmp.execute('no-such-command'), (e) => {
        assert.equal(e.reason, 'QEMU_COMMAND_NOT_FOUND');
        assert.equal(e.code, 'FAILED_PRECONDITION');
      });
      await rejectsDomain(proc.qmp.execute('device_del', { id: 'never-added' }), (e) => {
        assert.equal(e.reason, 'QEMU_DEVICE_NOT_FOUND');
        assert.equal(e.code, 'NOT_FOUND');
        assert.match(e.message, /never-added/);
      });
    });

    it('times out waiting for an event with DEADLINE_EXCEEDED', async () => {
      await rejectsDomain(proc.qmp.waitForEvent('DEVICE_DELETED', { timeoutMs: 200 }), (e) => {
        assert.equal(e.code, 'DEADLINE_EXCEEDED');
        assert.equal(e.reason, 'QMP_TIMEOUT');
      });
    });

    it('delivers events, including ones that arrived before the wait started', async () => {
      const cursor = proc.qmp.eventCursor();
      await proc.qmp.execute('cont'); // RESUME (SeaBIOS finds nothing to boot: cheap)
      await new Promise((r) => setTimeout(r, 100));
      const resumed = await proc.qmp.waitForEvent('RESUME', { after: cursor, timeoutMs: 2_000 });
      assert.ok(resumed.seq > cursor);
      const stopped = proc.qmp.waitForEvent((e) => e.event === 'STOP', { timeoutMs: 2_000 });
      await proc.qmp.execute('stop');
      assert.ok((await stopped).seq > resumed.seq);
    });

    it('reconnects', async () => {
      await proc.qmp.reconnect();
      await proc.qmp.execute('query-status');
    });

    it('refuses a second QEMU on the same QMP socket', async () => {
      await rejectsDomain(launchQemu('qmp-errors-twice', PAUSED_PC, paths), (e) => {
        assert.equal(e.code, 'ALREADY_EXISTS');
        assert.equal(e.reason, 'QEMU_ALREADY_RUNNING');
      });
    });
  });

  it('stop() quits QEMU and removes its sockets', async () => {
    const paths = tempPaths('stop');
    const proc = await launchQemu('stop-me', PAUSED_PC, paths, { killOnExit: true });
    assert.ok(proc.running && proc.pid);
    const exit = await proc.stop({ quitTimeoutMs: 3_000 });
    assert.equal(proc.running, false);
    assert.equal(exit.code, 0); // `quit`, not SIGKILL
    assert.equal(fs.existsSync(paths.qmpSocket), false);
    assert.deepEqual(await proc.stop(), exit); // idempotent
  });
});
