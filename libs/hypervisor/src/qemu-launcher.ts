import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DomainError } from '#domain';
import { QgaClient } from './qga-client';
import { QmpClient } from './qmp-client';
import { connectUnix, sleep } from './socket-lines';

/** Where one VM's control sockets and logs live (caller-chosen, one set per VM). */
export interface QemuPaths {
  /** QMP control socket; QEMU creates it. */
  qmpSocket: string;
  /** Guest agent socket; omit for a VM without an agent. */
  qgaSocket?: string;
  /** QEMU's stdout and stderr, and the serial console unless `serialLog` is set. */
  logFile: string;
  serialLog?: string;
  pidFile?: string;
}

export interface LaunchOptions {
  /** Default `qemu-system-x86_64` (looked up in PATH). */
  binary?: string;
  /**
   * Append the control-plane arguments (QMP monitor, serial log, guest-agent channel)
   * built from `paths` (default true). The caller's argv then only describes the guest.
   */
  addControlArgs?: boolean;
  qmpTimeoutMs?: number;
  /** Wait for the guest agent to answer (default: when `paths.qgaSocket` is set). */
  waitForGuestAgent?: boolean;
  guestAgentTimeoutMs?: number;
  /** SIGKILL QEMU when this Node process exits (tests; a host agent keeps VMs running). */
  killOnExit?: boolean;
  /** Own process group, so a Ctrl-C to the parent does not reach QEMU. */
  detached?: boolean;
  /** Lines of QEMU's log quoted in launch errors. */
  logTailLines?: number;
}

export interface StopOptions {
  /** ACPI power button, then wait this long; 0 skips it (a busybox guest has no acpid). */
  powerdownTimeoutMs?: number;
  /** QMP `quit`, then wait this long for the process to exit. */
  quitTimeoutMs?: number;
  /** SIGKILL, then wait this long. */
  killTimeoutMs?: number;
}

export interface QemuExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

const QGA_PORT_NAME = 'org.qemu.guest_agent.0';

/** QEMU option values escape a comma by doubling it. */
function optValue(v: string): string {
  return v.replace(/,/g, ',,');
}

/** The arguments that wire a VM to the control plane; ids are prefixed to avoid clashes. */
export function controlArgs(paths: QemuPaths): string[] {
  const args = [
    '-chardev',
    `socket,id=mp-qmp,path=${optValue(paths.qmpSocket)},server=on,wait=off`,
    '-mon',
    'chardev=mp-qmp,mode=control',
    // append=on because stdout/stderr are appended to the same file by default.
    '-chardev',
    `file,id=mp-serial,path=${optValue(paths.serialLog ?? paths.logFile)},append=on`,
    '-serial',
    'chardev:mp-serial',
  ];
  if (paths.pidFile) args.push('-pidfile', paths.pidFile);
  if (paths.qgaSocket) {
    args.push(
      '-chardev',
      `socket,id=mp-qga,path=${optValue(paths.qgaSocket)},server=on,wait=off`,
      '-device',
      'virtio-serial-pci,id=mp-vser0',
      '-device',
      `virtserialport,bus=mp-vser0.0,chardev=mp-qga,name=${QGA_PORT_NAME}`,
    );
  }
  return args;
}

/** A running (or exited) QEMU process with its protocol clients. */
export class QemuProcess {
  private exitInfo: QemuExit | undefined;
  readonly exited: Promise<QemuExit>;
  private qmpClient: QmpClient | undefined;
  private qgaClient: QgaClient | undefined;
  private exitHook: (() => void) | undefined;
  private stopping: Promise<QemuExit> | undefined;

  constructor(
    readonly vmId: string,
    private readonly child: ChildProcess,
    readonly argv: readonly string[],
    readonly paths: QemuPaths,
    /** Byte offset of this launch in the (appended) log file. */
    private readonly logOffset: number,
  ) {
    this.exited = new Promise((resolve) => {
      const done = (code: number | null, signal: NodeJS.Signals | null): void => {
        this.exitInfo ??= { code, signal };
        resolve(this.exitInfo);
      };
      child.once('exit', done);
      // A failed spawn (ENOENT...) emits 'error' and never 'exit'.
      child.on('error', () => {
        if (child.pid === undefined) done(null, null);
      });
    });
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  get running(): boolean {
    return this.exitInfo === undefined;
  }

  get exit(): QemuExit | undefined {
    return this.exitInfo;
  }

  get qmp(): QmpClient {
    if (!this.qmpClient) throw DomainError.precondition('QMP_UNAVAILABLE', `VM ${this.vmId} has no QMP connection`);
    return this.qmpClient;
  }

  get qga(): QgaClient {
    if (!this.qgaClient) throw DomainError.precondition('QGA_UNAVAILABLE', `VM ${this.vmId} has no guest agent connection`);
    return this.qgaClient;
  }

  /**
   * The guest agent client, connecting (and waiting for the agent) on first use when the
   * launch did not wait for it.
   */
  async guestAgent(timeoutMs = 30_000): Promise<QgaClient> {
    if (this.qgaClient) return this.qgaClient;
    if (!this.paths.qgaSocket) throw DomainError.precondition('QGA_UNAVAILABLE', `VM ${this.vmId} has no guest agent channel`);
    this.qgaClient = await QgaClient.connect(this.paths.qgaSocket, { connectTimeoutMs: timeoutMs, isAlive: () => this.running });
    return this.qgaClient;
  }

  /** @internal set by launchQemu */
  attachClients(qmp: QmpClient | undefined, qga: QgaClient | undefined): void {
    this.qmpClient = qmp;
    this.qgaClient = qga;
  }

  /** @internal */
  setExitHook(hook: () => void): void {
    this.exitHook = hook;
    process.on('exit', hook);
  }

  /** The last lines this launch wrote to the log (QEMU's stderr and, by default, serial). */
  logTail(lines = 20): string {
    try {
      const fd = fs.openSync(this.paths.logFile, 'r');
      try {
        const size = fs.fstatSync(fd).size;
        const start = Math.max(this.logOffset, size - 64 * 1024);
        const buf = Buffer.alloc(size - start);
        fs.readSync(fd, buf, 0, buf.length, start);
        return buf.toString('utf8').split('\n').filter((l) => l.trim() !== '').slice(-lines).join('\n');
      } finally {
        fs.closeSync(fd);
      }
    } catch {
      return '';
    }
  }

  /** Resolves true if the process exits within `ms`. */
  async waitForExit(ms: number): Promise<boolean> {
    if (!this.running) return true;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<false>((resolve) => {
      timer = setTimeout(() => resolve(false), ms);
    });
    const r = await Promise.race([this.exited.then(() => true as const), timeout]);
    clearTimeout(timer);
    return r;
  }

  /**
   * Graceful, then forceful, each step bounded: ACPI powerdown (optional), QMP `quit`,
   * SIGKILL. Idempotent; always closes the clients and removes the sockets.
   */
  stop(opts: StopOptions = {}): Promise<QemuExit> {
    this.stopping ??= this.doStop(opts);
    return this.stopping;
  }

  private async doStop(opts: StopOptions): Promise<QemuExit> {
    const { powerdownTimeoutMs = 0, quitTimeoutMs = 5_000, killTimeoutMs = 5_000 } = opts;
    try {
      if (this.running && powerdownTimeoutMs > 0 && this.qmpClient) {
        await this.qmpClient.execute('system_powerdown', undefined, { timeoutMs: 2_000 }).catch(() => undefined);
        await this.waitForExit(powerdownTimeoutMs);
      }
      if (this.running && this.qmpClient) {
        // QEMU may close the socket before answering `quit`; the exit is what counts.
        await this.qmpClient.execute('quit', undefined, { timeoutMs: quitTimeoutMs }).catch(() => undefined);
        await this.waitForExit(quitTimeoutMs);
      }
      if (this.running) {
        this.child.kill('SIGKILL');
        if (!(await this.waitForExit(killTimeoutMs))) {
          throw new DomainError('INTERNAL', 'QEMU_STOP_FAILED', `QEMU for VM ${this.vmId} (pid ${this.pid}) survived SIGKILL`, [], {
            vmId: this.vmId,
          });
        }
      }
      return this.exitInfo!;
    } finally {
      await this.qgaClient?.close();
      await this.qmpClient?.close();
      if (this.exitHook) process.off('exit', this.exitHook);
      if (!this.running) this.removeSockets();
    }
  }

  /** @internal also used when a launch fails half-way. */
  removeSockets(): void {
    for (const p of [this.paths.qmpSocket, this.paths.qgaSocket, this.paths.pidFile]) {
      if (p) fs.rmSync(p, { force: true });
    }
  }
}

function launchError(proc: QemuProcess, reason: string, what: string, lines: number): DomainError {
  const tail = proc.logTail(lines);
  const exit = proc.exit;
  const how = exit ? ` (exit code ${exit.code ?? '-'}, signal ${exit.signal ?? '-'})` : '';
  const code = reason === 'QEMU_LAUNCH_TIMEOUT' ? 'DEADLINE_EXCEEDED' : 'FAILED_PRECONDITION';
  return new DomainError(code, reason, `QEMU for VM ${proc.vmId} ${what}${how}${tail ? `:\n${tail}` : ''}`, [], {
    vmId: proc.vmId,
    logFile: proc.paths.logFile,
    logTail: tail,
    ...(exit ? { exitCode: String(exit.code), signal: String(exit.signal) } : {}),
  });
}

async function refuseIfLive(qmpSocket: string, vmId: string): Promise<void> {
  if (!fs.existsSync(qmpSocket)) return;
  try {
    const s = await connectUnix(qmpSocket, 500);
    s.destroy();
  } catch {
    fs.rmSync(qmpSocket, { force: true }); // stale socket of a dead QEMU
    return;
  }
  throw DomainError.exists('QEMU_ALREADY_RUNNING', `a QEMU already listens on ${qmpSocket} (VM ${vmId})`, { vmId });
}

/**
 * Starts `qemu-system-x86_64` from an argv array (no shell: arguments are never re-split
 * or interpreted), then waits for QMP and, if configured, the guest agent. On any failure
 * the process is killed and the error carries the tail of QEMU's log.
 */
export async function launchQemu(
  vmId: string,
  argv: readonly string[],
  paths: QemuPaths,
  opts: LaunchOptions = {},
): Promise<QemuProcess> {
  const {
    binary = 'qemu-system-x86_64',
    addControlArgs = true,
    qmpTimeoutMs = 15_000,
    waitForGuestAgent = paths.qgaSocket !== undefined,
    guestAgentTimeoutMs = 120_000,
    killOnExit = false,
    detached = false,
    logTailLines = 20,
  } = opts;

  for (const p of [paths.qmpSocket, paths.qgaSocket, paths.logFile, paths.serialLog, paths.pidFile]) {
    if (p) fs.mkdirSync(path.dirname(p), { recursive: true });
  }
  await refuseIfLive(paths.qmpSocket, vmId);
  if (paths.qgaSocket) fs.rmSync(paths.qgaSocket, { force: true });

  const fullArgv = [...argv, ...(addControlArgs ? controlArgs(paths) : [])];
  const logFd = fs.openSync(paths.logFile, 'a');
  const logOffset = fs.fstatSync(logFd).size;
  fs.writeSync(logFd, `=== ${new Date().toISOString()} launch ${vmId}: ${JSON.stringify([binary, ...fullArgv])}\n`);

  let child: ChildProcess;
  try {
    child = spawn(binary, fullArgv, { stdio: ['ignore', logFd, logFd], detached });
  } finally {
    fs.closeSync(logFd); // the child holds its own copy
  }
  const spawnError = new Promise<Error>((resolve) => child.once('error', resolve));
  const proc = new QemuProcess(vmId, child, fullArgv, paths, logOffset);
  if (killOnExit) {
    proc.setExitHook(() => {
      if (proc.running) child.kill('SIGKILL');
    });
  }

  const fail = async (err: DomainError): Promise<never> => {
    await proc.stop({ quitTimeoutMs: 1_000 }).catch(() => undefined);
    throw err;
  };

  // QMP: the socket appears once QEMU has parsed its argv and created the machine.
  const qmpDeadline = Date.now() + qmpTimeoutMs;
  let qmp: QmpClient | undefined;
  while (!qmp) {
    const spawnFailed = await Promise.race([spawnError, sleep(50).then(() => undefined)]);
    if (spawnFailed) {
      return fail(
        new DomainError('FAILED_PRECONDITION', 'QEMU_SPAWN_FAILED', `cannot start ${binary}: ${spawnFailed.message}`, [], { vmId }),
      );
    }
    if (!proc.running) return fail(launchError(proc, 'QEMU_EXITED', 'exited during launch', logTailLines));
    if (Date.now() > qmpDeadline) {
      return fail(launchError(proc, 'QEMU_LAUNCH_TIMEOUT', `did not open QMP within ${qmpTimeoutMs} ms`, logTailLines));
    }
    if (!fs.existsSync(paths.qmpSocket)) continue;
    qmp = await QmpClient.connect(paths.qmpSocket, { connectTimeoutMs: 2_000 }).catch(() => undefined);
  }
  proc.attachClients(qmp, undefined);

  if (paths.qgaSocket && waitForGuestAgent) {
    let qga: QgaClient;
    try {
      qga = await QgaClient.connect(paths.qgaSocket, { connectTimeoutMs: guestAgentTimeoutMs, isAlive: () => proc.running });
    } catch {
      const err = proc.running
        ? launchError(proc, 'QEMU_LAUNCH_TIMEOUT', `guest agent did not answer within ${guestAgentTimeoutMs} ms`, logTailLines)
        : launchError(proc, 'QEMU_EXITED', 'exited before the guest agent answered', logTailLines);
      return fail(err);
    }
    proc.attachClients(qmp, qga);
  }
  return proc;
}
