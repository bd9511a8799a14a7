import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DomainError } from '#domain';
import { ensureGuestImages, eventually, GUEST_ACCEL, GUEST_CPU_MODEL, type BootGuestOptions } from '#testing/guest';
import { LocalHypervisorDriver } from './driver';
import type { DimmDevice } from './memory-devices';
import { launchQemu, probeQemuPid, type QemuPaths, type QemuProcess } from './qemu-launcher';

/**
 * Crash safety: a QEMU launched detached outlives the process that launched it, and another
 * process re-attaches to it from the persisted pid and socket paths and finishes the job.
 * Paused machines (no guest, cheap) pin down launch/attach/stop semantics and the errors;
 * one real 6.12 guest, launched by a child "worker" that is SIGKILLed, covers the whole
 * crash → attach → hotplug → zone-exact online → unplug → stop path.
 */

const MiB = 1024 * 1024;
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

/** Field 6 of /proc/<pid>/stat: the session id (setsid makes it the pid itself). */
function sessionId(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[3]);
}

/** A pid that certainly does not exist any more. */
function deadPid(): number {
  const r = spawnSync('true');
  assert.ok(r.pid && r.pid > 0);
  return r.pid;
}

function killIfAlive(pid: number | undefined): void {
  if (pid && probeQemuPid(pid).state === 'running') process.kill(pid, 'SIGKILL');
}

describe('detached launch and attach (real QEMU, paused machine)', { timeout: 120_000 }, () => {
  const leftovers: number[] = [];
  before(() => ensureGuestImages('linux-6.12')); // installs qemu-system-x86 on a fresh machine
  after(() => leftovers.forEach(killIfAlive));

  it('launches in its own session with a pidfile, attaches once the launcher lets go, stops by pid', async () => {
    const paths = tempPaths('detached');
    const exitHooks = process.listenerCount('exit');
    const launcher = new LocalHypervisorDriver({ killOnExit: true });
    const st0 = await launcher.launch('detached-1', PAUSED_PC, paths, { detached: true });
    const launched = launcher.process('detached-1') as QemuProcess;
    const pid = st0.pid!;
    leftovers.push(pid);
    assert.deepEqual([st0.running, st0.origin, st0.detached, launched.detached], [true, 'launched', true, true]);
    assert.equal(process.listenerCount('exit'), exitHooks, 'killOnExit does not apply to a detached launch');
    assert.equal(sessionId(pid), pid, 'QEMU leads its own session');
    assert.equal(st0.paths?.pidFile, path.join(path.dirname(paths.qmpSocket), 'qmp.pid'));
    assert.equal(fs.readFileSync(st0.paths!.pidFile!, 'utf8').trim(), String(pid));
    assert.deepEqual(probeQemuPid(pid, paths.qmpSocket).state, 'running');

    // QEMU's monitor serves one client at a time: while the launcher holds it, no greeting.
    const driver = new LocalHypervisorDriver();
    await rejectsDomain(driver.attach('detached-1', { paths: st0.paths!, pid }, { qmpTimeoutMs: 1_000 }), (e) => {
      assert.equal(e.code, 'DEADLINE_EXCEEDED');
      assert.equal(e.reason, 'QMP_TIMEOUT');
      assert.match(e.message, /another client/);
    });
    assert.equal(driver.status('detached-1').running, false, 'a failed attach tracks nothing');

    // The launching worker hands the VM over (a dead one would have let go too).
    const released = await launcher.release('detached-1');
    assert.deepEqual([released.running, released.pid], [true, pid]);
    assert.equal(launcher.status('detached-1').pid, undefined, 'forgotten by the launcher');
    // No pid given: read from the pidfile.
    const st = await driver.attach('detached-1', { paths: st0.paths! });
    assert.deepEqual(
      [st.running, st.pid, st.origin, st.detached, st.paths?.qmpSocket, st.paths?.pidFile],
      [true, pid, 'attached', true, paths.qmpSocket, st0.paths?.pidFile],
    );
    assert.deepEqual(await driver.attach('detached-1', { paths: st0.paths!, pid }), st, 'idempotent');
    await rejectsDomain(driver.attach('detached-1', { paths: st0.paths!, pid: pid + 1 }), (e) => {
      assert.equal(e.reason, 'VM_ALREADY_RUNNING');
      assert.equal(e.code, 'ALREADY_EXISTS');
    });
    const status = await driver.qmp('detached-1').execute<{ status: string }>('query-status');
    assert.equal(status.status, 'prelaunch');

    const stopped = await driver.stop('detached-1', { quitTimeoutMs: 3_000 });
    assert.equal(stopped.running, false);
    assert.deepEqual(stopped.exit, { code: null, signal: null }, 'quit worked; the code is not observable by a non-parent');
    assert.notEqual(probeQemuPid(pid, paths.qmpSocket).state, 'running');
    assert.equal(fs.existsSync(paths.qmpSocket), false);
    assert.equal(fs.existsSync(st0.paths!.pidFile!), false);
    // The launching process is still QEMU's parent, so it does observe the exit.
    // (waitForExit, not `exited`: an unref'd child alone does not keep the event loop alive.)
    assert.equal(await launched.waitForExit(5_000), true);
    assert.deepEqual(launched.exit, { code: 0, signal: null });
  });

  it('refuses dead, reused and mismatched pids with QEMU_NOT_RUNNING', async () => {
    const paths = tempPaths('refuse');
    const proc = await launchQemu('refuse-1', PAUSED_PC, paths, { detached: true });
    leftovers.push(proc.pid!);
    const driver = new LocalHypervisorDriver();
    const cases: [number, QemuPaths, string][] = [
      [deadPid(), paths, 'gone'],
      [process.pid, paths, 'other-process'], // alive, but a node, not a QEMU
      [proc.pid!, tempPaths('other'), 'other-process'], // a QEMU, but not this VM's
    ];
    for (const [pid, p, pidState] of cases) {
      await rejectsDomain(driver.attach('refuse-1', { paths: p, pid }), (e) => {
        assert.equal(e.code, 'NOT_FOUND');
        assert.equal(e.reason, 'QEMU_NOT_RUNNING');
        assert.equal(e.metadata['pidState'], pidState);
        assert.equal(e.metadata['pid'], String(pid));
      });
    }
    await proc.stop({ quitTimeoutMs: 2_000 });
  });

  it('reports a live QEMU whose QMP socket is gone as QMP_UNAVAILABLE', async () => {
    const paths = tempPaths('nosock');
    const proc: QemuProcess = await launchQemu('nosock-1', PAUSED_PC, paths, { detached: true });
    leftovers.push(proc.pid!);
    await proc.qmp.close();
    fs.rmSync(paths.qmpSocket);
    await rejectsDomain(new LocalHypervisorDriver().attach('nosock-1', { paths: proc.paths, pid: proc.pid! }), (e) => {
      assert.equal(e.code, 'UNAVAILABLE');
      assert.equal(e.reason, 'QMP_UNAVAILABLE');
      assert.match(e.message, /alive but its QMP socket refused/);
    });
    const exit = await proc.stop({ quitTimeoutMs: 100 });
    assert.equal(exit.signal, 'SIGKILL');
  });
});

// node0: 2 CPUs + 256 MiB; node1: CPU-less 256 MiB (the "CXL" node); room for pc-dimms.
const TOPOLOGY = [
  '-machine', 'pc',
  '-smp', '2',
  '-m', '512M,slots=4,maxmem=4G',
  '-object', 'memory-backend-ram,id=ram0,size=256M',
  '-numa', 'node,nodeid=0,cpus=0-1,memdev=ram0',
  '-object', 'memory-backend-ram,id=ram1,size=256M',
  '-numa', 'node,nodeid=1,memdev=ram1',
]; // prettier-ignore

interface WorkerReport {
  vmId: string;
  pid: number;
  paths: QemuPaths;
  dir: string;
  bootMs: number;
}

/** Starts the "worker" child and resolves with the JSON line it prints once the guest is up. */
function startWorker(spec: BootGuestOptions, backendId: string): { child: ChildProcess; report: Promise<WorkerReport> } {
  const script = path.join(__dirname, 'testing', 'detached-guest.js');
  const child = spawn(process.execPath, [script, JSON.stringify(spec), backendId], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  const report = new Promise<WorkerReport>((resolve, reject) => {
    child.stdout!.on('data', (c: Buffer) => {
      out += c.toString();
      const nl = out.indexOf('\n');
      if (nl >= 0) resolve(JSON.parse(out.slice(0, nl)) as WorkerReport);
    });
    child.stderr!.on('data', (c: Buffer) => (err += c.toString()));
    child.once('exit', (code, signal) => reject(new Error(`worker exited (${code ?? signal}) before reporting:\n${err}`)));
  });
  return { child, report };
}

function blockIndexes(dimm: DimmDevice, blockBytes: number): number[] {
  return Array.from({ length: dimm.sizeBytes / blockBytes }, (_, i) => dimm.addressBytes / blockBytes + i);
}

describe('a worker dies mid-hotplug; another attaches and finishes (linux-6.12 guest)', { timeout: 300_000 }, () => {
  let worker: ChildProcess;
  let vm: WorkerReport;
  let driver: LocalHypervisorDriver;
  let blockBytes = 0;

  before(async () => {
    ensureGuestImages('linux-6.12');
    const started = startWorker({ kernel: 'linux-6.12', qemuArgs: TOPOLOGY }, 'mem-crash');
    worker = started.child;
    vm = await started.report;
    console.log(`6.12 guest booted detached by worker pid ${worker.pid} in ${vm.bootMs} ms: QEMU pid ${vm.pid}`);
  });
  after(async () => {
    worker?.kill('SIGKILL');
    await driver?.stopAll({ quitTimeoutMs: 2_000 });
    killIfAlive(vm?.pid);
    if (vm && !process.env['MEMPLANE_KEEP_GUEST_LOGS']) fs.rmSync(vm.dir, { recursive: true, force: true });
  });

  it('QEMU keeps running when its worker is SIGKILLed mid-operation', async () => {
    assert.equal(vm.paths.pidFile && fs.readFileSync(vm.paths.pidFile, 'utf8').trim(), String(vm.pid));
    const exited = new Promise((resolve) => worker.once('exit', (_code, signal) => resolve(signal)));
    worker.kill('SIGKILL');
    assert.equal(await exited, 'SIGKILL');
    await new Promise((r) => setTimeout(r, 300));
    const probe = probeQemuPid(vm.pid, vm.paths.qmpSocket);
    assert.equal(probe.state, 'running', probe.detail);
    assert.equal(sessionId(vm.pid), vm.pid);
    // The pinned TCG settings reached QEMU (the child used the same harness).
    const cmdline = fs.readFileSync(`/proc/${vm.pid}/cmdline`, 'utf8').split('\0');
    assert.ok(cmdline.includes(GUEST_CPU_MODEL) && cmdline.includes(GUEST_ACCEL));
  });

  it('a fresh driver attaches (QMP + guest agent), idempotently', async () => {
    driver = new LocalHypervisorDriver();
    const t0 = Date.now();
    const st = await driver.attach(vm.vmId, { paths: vm.paths, pid: vm.pid });
    console.log(`attached in ${Date.now() - t0} ms`);
    assert.deepEqual([st.running, st.pid, st.origin, st.paths], [true, vm.pid, 'attached', vm.paths]);
    assert.deepEqual(await driver.attach(vm.vmId, { paths: vm.paths, pid: vm.pid }), st);
    blockBytes = await driver.guestMemoryBlockSizeBytes(vm.vmId);
    assert.equal(blockBytes, 128 * MiB);
    // The dead worker's half-done step is visible: the backend exists, no DIMM uses it yet.
    assert.equal(await driver.qomGet<number>(vm.vmId, '/objects/mem-crash', 'size'), 256 * MiB);
    assert.deepEqual(await driver.queryMemoryDevices(vm.vmId), []);
  });

  it('finishes the hotplug: pc-dimm on node1, online_movable → Movable, offline, unplug', async () => {
    const vmId = vm.vmId;
    await driver.deviceAdd(vmId, 'pc-dimm', 'dimm-crash', { memdev: 'mem-crash', node: 1 });
    const dimm = (await driver.queryMemoryDevices(vmId)).find((d) => d.kind === 'dimm') as DimmDevice;
    assert.deepEqual([dimm.id, dimm.node, dimm.sizeBytes], ['dimm-crash', 1, 256 * MiB]);
    const idx = blockIndexes(dimm, blockBytes);

    const added = await eventually('DIMM blocks in the guest', async () => {
      const z = await driver.guestMemoryBlockZones(vmId, idx);
      return z.every((b) => b.present) ? z : undefined;
    });
    // memhp_default_state=offline: both zones are possible until we choose.
    for (const b of added) {
      assert.equal(b.online, false);
      assert.deepEqual([...(b.validZones ?? [])].sort(), ['Movable', 'Normal']);
    }

    const onlined = await driver.onlineGuestMemoryBlocks(vmId, idx, 'online_movable');
    assert.deepEqual(onlined, idx.map((physIndex) => ({ physIndex, response: 'success', zone: 'Movable' })));
    const zones = await driver.guestMemoryBlockZones(vmId, idx);
    assert.deepEqual(zones.map((z) => [z.online, z.zone]), idx.map(() => [true, 'Movable']));
    // Idempotent: asking again for the zone the blocks are in is a success without a write.
    assert.deepEqual((await driver.onlineGuestMemoryBlocks(vmId, idx, 'online_movable')).map((r) => r.response), ['success', 'success']);
    const node1 = await (await driver.qga(vmId)).exec('ls', [`/sys/devices/system/node/node1/memory${idx[0]}`]);
    assert.equal(node1.exitCode, 0, 'block on node1');

    const offlined = await driver.offlineGuestMemoryBlocks(vmId, idx);
    assert.deepEqual(offlined.map((r) => r.response), ['success', 'success']);
    assert.deepEqual((await driver.guestMemoryBlockZones(vmId, idx)).map((z) => z.online), [false, false]);

    const cursor = driver.eventCursor(vmId);
    const deleted = await driver.deviceDel(vmId, 'dimm-crash', { deletedTimeoutMs: 30_000 });
    assert.equal(deleted?.data['device'], 'dimm-crash');
    assert.ok(deleted!.seq > cursor);
    await eventually('DIMM blocks gone from the guest', async () =>
      (await driver.guestMemoryBlockZones(vmId, idx)).every((z) => !z.present) ? true : undefined,
    );
    await driver.objectDel(vmId, 'mem-crash');
  });

  it('online_kernel puts a DIMM in Normal; refusals come back per block, not as exceptions', async () => {
    const vmId = vm.vmId;
    await driver.objectAdd(vmId, 'memory-backend-ram', 'mem-k', { size: 256 * MiB });
    await driver.deviceAdd(vmId, 'pc-dimm', 'dimm-k', { memdev: 'mem-k', node: 1 });
    const dimm = (await driver.queryMemoryDevices(vmId)).find((d) => d.id === 'dimm-k') as DimmDevice;
    const idx = blockIndexes(dimm, blockBytes);
    await eventually('DIMM blocks in the guest', async () =>
      (await driver.guestMemoryBlockZones(vmId, idx)).every((b) => b.present) ? true : undefined,
    );

    const missing = 4095; // beyond maxmem: no such block
    const onlined = await driver.onlineGuestMemoryBlocks(vmId, [...idx, missing], 'online_kernel');
    assert.deepEqual(
      onlined.map((r) => [r.physIndex, r.response, r.zone]),
      [...idx.map((i) => [i, 'success', 'Normal']), [missing, 'not-found', undefined]],
    );
    const zones = await driver.guestMemoryBlockZones(vmId, [...idx, missing]);
    assert.deepEqual(zones.map((z) => [z.present, z.online, z.zone]), [...idx.map(() => [true, true, 'Normal']), [false, false, undefined]]);

    // A block cannot move zones while online: a clear per-block failure.
    const wrongZone = await driver.onlineGuestMemoryBlocks(vmId, idx, 'online_movable');
    for (const r of wrongZone) {
      assert.equal(r.response, 'operation-failed');
      assert.equal(r.zone, 'Normal');
      assert.match(r.message ?? '', /already online in zone Normal/);
    }

    // Boot memory in a kernel zone holds unmovable kernel pages: offlining is refused per block.
    const boot = await driver.offlineGuestMemoryBlocks(vmId, [0, 1]);
    for (const r of boot) {
      assert.equal(r.response, 'operation-failed', JSON.stringify(r));
      assert.ok(r.errorCode === 16 || r.errorCode === 22, `errno ${r.errorCode}`); // EBUSY, or EINVAL for block 0 (holes)
      assert.match(r.message ?? '', /offline failed with errno \d+ \(E[A-Z]+\)/);
    }
    console.log(`boot blocks refused offline: ${boot.map((r) => r.message).join('; ')}`);
    assert.deepEqual((await driver.guestMemoryBlockZones(vmId, [0, 1])).map((z) => z.online), [true, true]);

    // An idle Normal DIMM usually offlines; if a kernel allocation landed on it, the answer is per block too.
    const off = await driver.offlineGuestMemoryBlocks(vmId, idx);
    for (const r of off) assert.ok(r.response === 'success' || (r.response === 'operation-failed' && r.message), JSON.stringify(r));
    if (off.every((r) => r.response === 'success')) {
      // Plain 'online' goes through guest-set-memory-blocks; the guest policy picks the zone.
      const plain = await driver.onlineGuestMemoryBlocks(vmId, idx, 'online');
      assert.deepEqual(plain.map((r) => r.response), ['success', 'success']);
      assert.deepEqual((await driver.guestMemoryBlockZones(vmId, idx)).map((z) => z.online), [true, true]);
    } else {
      console.log(`Normal DIMM not offlinable: ${off.map((r) => r.message).join('; ')}`);
    }
  });

  it('rejects bad block indexes and online types before touching the guest', async () => {
    await rejectsDomain(driver.guestMemoryBlockZones(vm.vmId, [-1]), (e) => assert.equal(e.code, 'INVALID_ARGUMENT'));
    await rejectsDomain(driver.onlineGuestMemoryBlocks(vm.vmId, [1.5], 'online_movable'), (e) => assert.equal(e.code, 'INVALID_ARGUMENT'));
    await rejectsDomain(driver.onlineGuestMemoryBlocks(vm.vmId, [32], 'online_dma' as never), (e) => assert.equal(e.reason, 'INVALID_ONLINE_TYPE'));
    assert.deepEqual(await driver.onlineGuestMemoryBlocks(vm.vmId, [], 'online_kernel'), []);
  });

  it('stop() ends the attached QEMU: QMP quit, the pid vanishes, sockets are removed', async () => {
    const t0 = Date.now();
    const st = await driver.stop(vm.vmId, { quitTimeoutMs: 5_000 });
    console.log(`stopped in ${Date.now() - t0} ms`);
    assert.equal(st.running, false);
    assert.deepEqual(st.exit, { code: null, signal: null }, 'quit sufficed, no SIGKILL');
    // Reparented to init when the worker died; gone once init reaps it (a zombie until then).
    const state = await eventually('QEMU reaped', async () => {
      const s = probeQemuPid(vm.pid).state;
      return s === 'gone' ? s : undefined;
    }, 10_000, 100).catch(() => probeQemuPid(vm.pid).state);
    assert.ok(state === 'gone' || state === 'zombie', state);
    for (const p of [vm.paths.qmpSocket, vm.paths.qgaSocket!, vm.paths.pidFile!]) assert.equal(fs.existsSync(p), false, p);
    assert.equal(driver.status(vm.vmId).running, false);
    await rejectsDomain(driver.attach(vm.vmId, { paths: vm.paths, pid: vm.pid }), (e) => assert.equal(e.reason, 'QEMU_NOT_RUNNING'));
  });
});
