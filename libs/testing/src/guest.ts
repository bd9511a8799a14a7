import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  LocalHypervisorDriver,
  QemuProcess,
  type GuestExecResult,
  type QemuPaths,
  type QgaClient,
  type QmpClient,
} from '#hypervisor';

/**
 * Boots real guests for end-to-end tests: a Debian cloud kernel plus the busybox initramfs
 * built by scripts/guest/build-guest-images.sh, under TCG (no KVM here), driven through the
 * same LocalHypervisorDriver the workers use.
 */

export type GuestKernel = 'linux-6.1' | 'linux-6.12';

export interface GuestImage {
  kernel: GuestKernel;
  vmlinuz: string;
  initramfs: string;
  kernelRelease: string;
}

export interface BootGuestOptions {
  kernel: GuestKernel;
  /** The guest's topology (-machine, -smp, -m, -object, -numa, -device ...), e.g. from the topology compiler. */
  qemuArgs: readonly string[];
  /** Appended to the kernel command line. */
  kernelArgs?: readonly string[];
  /**
   * Hotplugged memory stays offline until the guest agent onlines it (default), so tests
   * see and control every transition. Pass e.g. 'online_movable' to test the kernel policy.
   */
  memhpDefaultState?: 'offline' | 'online' | 'online_kernel' | 'online_movable' | null;
  vmId?: string;
  bootTimeoutMs?: number;
  /**
   * Launch QEMU detached (own session, pidfile, outlives this process) and leave it out of
   * the SIGINT/SIGTERM clean-up: for crash-safety tests that re-attach from another process.
   */
  detached?: boolean;
}

export interface BootedGuest {
  vmId: string;
  kernel: GuestKernel;
  kernelRelease: string;
  driver: LocalHypervisorDriver;
  process: QemuProcess;
  qmp: QmpClient;
  qga: QgaClient;
  dir: string;
  logFile: string;
  /** The paths QEMU was launched with (with the pidfile of a detached launch). */
  paths: QemuPaths;
  /** Wall time from spawn to the guest agent answering. */
  bootMs: number;
  /** `cat <path>` in the guest (sysfs, procfs); throws unless it exits 0. */
  readGuestFile(path: string): Promise<string>;
  exec(cmd: string, args?: readonly string[], opts?: { timeoutMs?: number }): Promise<GuestExecResult>;
  log(): string;
  stop(): Promise<void>;
}

/**
 * Pinned on purpose, because a flaky guest is a flaky suite:
 * - `-cx16` (no cmpxchg16b): the 6.12 guest with >= 2 vCPUs oopsed during boot in about
 *   half of the runs under TCG (corrupted SLUB freelist in kmem_cache_alloc), with or
 *   without NUMA, even single-threaded; without cmpxchg16b it boots cleanly.
 * - `thread=single`: with multi-threaded TCG we also saw (1 boot in ~50) a 6.12 oops
 *   "int3" in kernel text being live-patched (static calls/jump labels patched through
 *   int3 while the other vCPU executes it). One TCG thread runs the vCPUs in turn, so
 *   cross-vCPU code patching is coherent; boot time was the same (~5 s) on this 2-core host.
 * Both kernels get the same CPU so their results compare. See docs/environment.md.
 */
export const GUEST_CPU_MODEL = 'max,-cx16';
export const GUEST_ACCEL = 'tcg,thread=single';

function repoRoot(): string {
  for (let dir = __dirname; dir !== path.dirname(dir); dir = path.dirname(dir)) {
    if (fs.existsSync(path.join(dir, 'scripts/guest/build-guest-images.sh'))) return dir;
  }
  throw new Error('cannot find scripts/guest/build-guest-images.sh above ' + __dirname);
}

const images = new Map<GuestKernel, GuestImage>();

/** Builds (first call, cached on disk under .cache/guest) and returns the image paths. */
export function ensureGuestImages(kernel: GuestKernel): GuestImage {
  const known = images.get(kernel);
  if (known) return known;
  const script = path.join(repoRoot(), 'scripts/guest/build-guest-images.sh');
  const r = spawnSync('bash', [script, '--quiet', kernel], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  if (r.status !== 0) throw new Error(`${script} ${kernel} failed with status ${r.status}`);
  const line = r.stdout.trim().split('\n').find((l) => l.startsWith(`${kernel} `));
  if (!line) throw new Error(`${script} printed no paths for ${kernel}:\n${r.stdout}`);
  const [, vmlinuz, initramfs] = line.split(' ') as [string, string, string];
  const kernelRelease = fs.readFileSync(path.join(path.dirname(vmlinuz), 'kernel-release'), 'utf8').trim();
  const image = { kernel, vmlinuz, initramfs, kernelRelease };
  images.set(kernel, image);
  return image;
}

// Test processes that die on SIGINT/SIGTERM (Ctrl-C, runner timeout) must not leave QEMUs.
const live = new Set<QemuProcess>();
let signalsHooked = false;
function hookSignals(): void {
  if (signalsHooked) return;
  signalsHooked = true;
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      for (const p of live) if (p.pid) process.kill(p.pid, 'SIGKILL');
      process.kill(process.pid, sig); // default action now that our listener is gone
    });
  }
}

let counter = 0;

export async function bootGuest(opts: BootGuestOptions): Promise<BootedGuest> {
  const image = ensureGuestImages(opts.kernel);
  const vmId = opts.vmId ?? `test-${opts.kernel.replace('.', '_')}-${process.pid}-${++counter}`;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'memplane-guest-'));
  const paths = {
    qmpSocket: path.join(dir, 'qmp.sock'),
    qgaSocket: path.join(dir, 'qga.sock'),
    logFile: path.join(dir, 'qemu.log'),
  };
  const memhp = opts.memhpDefaultState === undefined ? 'offline' : opts.memhpDefaultState;
  const cmdline = [
    'console=ttyS0',
    'panic=-1', // with -no-reboot a panic ends QEMU at once, so the launcher fails fast
    ...(memhp ? [`memhp_default_state=${memhp}`] : []),
    ...(opts.kernelArgs ?? []),
  ].join(' ');
  const argv = [
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-no-reboot',
    ...opts.qemuArgs,
    // After the caller's args so the pinned model wins if a topology also names one.
    '-accel',
    GUEST_ACCEL,
    '-cpu',
    GUEST_CPU_MODEL,
    '-kernel',
    image.vmlinuz,
    '-initrd',
    image.initramfs,
    '-append',
    cmdline,
  ];

  hookSignals();
  const driver = new LocalHypervisorDriver({ killOnExit: true });
  const started = Date.now();
  try {
    await driver.launch(vmId, argv, paths, { guestAgentTimeoutMs: opts.bootTimeoutMs ?? 120_000, detached: opts.detached ?? false });
  } catch (err) {
    // The launcher already killed QEMU; keep the log (kernel oops, QEMU error) for the reader.
    if (err instanceof Error) err.message += `\n(full guest log kept in ${paths.logFile})`;
    throw err;
  }
  const bootMs = Date.now() - started;
  const proc = driver.process(vmId);
  if (!(proc instanceof QemuProcess)) throw new Error(`VM ${vmId} was not launched by this driver`);
  if (!opts.detached) live.add(proc);
  const qga = proc.qga;

  const exec = (cmd: string, args: readonly string[] = [], o: { timeoutMs?: number } = {}): Promise<GuestExecResult> =>
    qga.exec(cmd, args, o);

  return {
    vmId,
    kernel: opts.kernel,
    kernelRelease: image.kernelRelease,
    driver,
    process: proc,
    qmp: proc.qmp,
    qga,
    dir,
    logFile: paths.logFile,
    paths: proc.paths,
    bootMs,
    exec,
    async readGuestFile(file: string): Promise<string> {
      const r = await exec('cat', [file]);
      if (r.exitCode !== 0) throw new Error(`cat ${file} in guest ${vmId}: exit ${r.exitCode}: ${r.stderr.toString()}`);
      return r.stdout.toString('utf8');
    },
    log: () => fs.readFileSync(paths.logFile, 'utf8'),
    async stop(): Promise<void> {
      await driver.stop(vmId, { powerdownTimeoutMs: 0, quitTimeoutMs: 3_000 });
      live.delete(proc);
      if (process.env['MEMPLANE_KEEP_GUEST_LOGS']) console.log(`guest ${vmId} log kept in ${paths.logFile}`);
      else fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Polls `fn` until it returns a value other than undefined, or fails after `timeoutMs`. */
export async function eventually<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs = 30_000, stepMs = 200): Promise<T> {
  const deadlineAt = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v !== undefined) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadlineAt) {
      throw new Error(`${what}: not reached within ${timeoutMs} ms${last ? ` (last error: ${(last as Error).message})` : ''}`);
    }
    await new Promise((r) => setTimeout(r, stepMs));
  }
}
