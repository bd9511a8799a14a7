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
  /** QEMU's `-pidfile` (QEMU writes and locks it, and removes it on a clean exit). */
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
  /**
   * SIGKILL QEMU when this Node process exits (tests; a host agent keeps VMs running).
   * Ignored for a detached launch.
   */
  killOnExit?: boolean;
  /**
   * Crash-safe launch: QEMU gets its own session (setsid, so neither a Ctrl-C nor the death
   * of this process reaches it), its stdio goes to the log file only, the child handle is
   * unref'd, and `paths.pidFile` defaults to `defaultPidFile(qmpSocket)`. Another process
   * re-attaches to it with `attachQemu` / `HypervisorDriver.attach` from the pid and paths.
   */
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

/** How QEMU ended; both null when the exit was not observed (a QEMU we are not the parent of). */
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

/** How a QEMU came to be driven by this Node process. */
export type QemuOrigin = 'launched' | 'attached';

/**
 * One QEMU this Node process drives, whether it started it (`QemuProcess`, from
 * `launchQemu`) or re-attached to one another process started (`AttachedQemu`, from
 * `attachQemu`). This is all the driver uses.
 */
export interface QemuInstance {
  readonly vmId: string;
  readonly origin: QemuOrigin;
  readonly pid: number | undefined;
  readonly paths: QemuPaths;
  /** Own session, survives this Node process (always true when attached). */
  readonly detached: boolean;
  readonly running: boolean;
  /** Set once the process is known to be gone; code and signal are null when not observed. */
  readonly exit: QemuExit | undefined;
  readonly qmp: QmpClient;
  readonly qga: QgaClient;
  /** The guest agent client, connecting on first use. */
  guestAgent(timeoutMs?: number): Promise<QgaClient>;
  logTail(lines?: number): string;
  /** Resolves true if the process is gone within `ms`. */
  waitForExit(ms: number): Promise<boolean>;
  /** Powerdown (optional), QMP `quit`, SIGKILL; idempotent; closes clients, removes sockets. */
  stop(opts?: StopOptions): Promise<QemuExit>;
  /**
   * Closes the QMP and guest agent connections and leaves QEMU running, so that another
   * process can attach (each socket serves one client at a time).
   */
  release(): Promise<void>;
}

/** What the pid of a detached or re-attached QEMU turned out to be. */
export type QemuPidState =
  /** alive, and (when checkable) a QEMU whose command line names the QMP socket */
  | 'running'
  /** no such process */
  | 'gone'
  /** exited but not yet reaped by its (new) parent */
  | 'zombie'
  /** the pid was reused by a process that is not this VM's QEMU */
  | 'other-process';

export interface QemuPidProbe {
  pid: number;
  state: QemuPidState;
  /** Human-readable reason, quoted in errors. */
  detail: string;
}

const hasProcfs = ((): boolean => {
  try {
    return fs.existsSync('/proc/self/stat');
  } catch {
    return false;
  }
})();

/**
 * Liveness of a QEMU we may not be the parent of: `kill(pid, 0)`, then (Linux) the state in
 * `/proc/<pid>/stat` (a zombie is gone for our purposes) and `/proc/<pid>/cmdline`, which
 * must be a QEMU binary and, when `qmpSocket` is given, name that socket, so a reused pid is
 * not mistaken for the VM.
 */
export function probeQemuPid(pid: number, qmpSocket?: string): QemuPidProbe {
  try {
    process.kill(pid, 0);
  } catch (err) {
    // EPERM: the process exists but belongs to someone else; /proc still tells us more.
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return { pid, state: 'gone', detail: `pid ${pid} does not exist` };
  }
  if (!hasProcfs) return { pid, state: 'running', detail: `pid ${pid} exists (no /proc to check what it is)` };
  let stat: string;
  let argv: string[];
  try {
    stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    argv = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter((a) => a !== '');
  } catch {
    return { pid, state: 'gone', detail: `pid ${pid} exited while being inspected` };
  }
  // "pid (comm) S ...": comm may contain spaces and parentheses, the state follows the last ')'.
  const procState = stat.slice(stat.lastIndexOf(')') + 1).trim()[0];
  if (procState === 'Z' || procState === 'X') return { pid, state: 'zombie', detail: `pid ${pid} is a zombie (exited, not reaped)` };
  let exe = '';
  try {
    exe = fs.readlinkSync(`/proc/${pid}/exe`);
  } catch {
    // not ours to read; argv[0] decides
  }
  const isQemu = [argv[0] ?? '', exe].some((p) => /qemu/i.test(path.basename(p)));
  if (!isQemu) {
    return { pid, state: 'other-process', detail: `pid ${pid} is not a QEMU (${argv[0] || exe || 'unknown'})` };
  }
  if (qmpSocket && !argv.some((a) => a.includes(optValue(qmpSocket)) || a.includes(qmpSocket))) {
    return { pid, state: 'other-process', detail: `pid ${pid} is a QEMU without QMP socket ${qmpSocket} on its command line` };
  }
  return { pid, state: 'running', detail: `pid ${pid} is QEMU` };
}

/** Where a detached launch puts its pidfile unless `paths.pidFile` says otherwise: `qmp.sock` → `qmp.pid`. */
export function defaultPidFile(qmpSocket: string): string {
  return path.join(path.dirname(qmpSocket), `${path.basename(qmpSocket).replace(/\.sock$/, '')}.pid`);
}

/** Reads a QEMU `-pidfile`; undefined when absent or not a pid. */
export function readPidFile(pidFile: string): number | undefined {
  try {
    const pid = Number(fs.readFileSync(pidFile, 'utf8').trim());
    return Number.isSafeInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

/** What `QemuProcess` and `AttachedQemu` share: clients, logs, the stop sequence. */
abstract class QemuInstanceBase implements QemuInstance {
  abstract readonly origin: QemuOrigin;
  abstract readonly detached: boolean;
  abstract readonly pid: number | undefined;
  abstract readonly running: boolean;
  abstract readonly exit: QemuExit | undefined;
  abstract waitForExit(ms: number): Promise<boolean>;
  /** SIGKILL the process (no-op when already gone). */
  protected abstract kill(): void;

  protected qmpClient: QmpClient | undefined;
  protected qgaClient: QgaClient | undefined;
  private exitHook: (() => void) | undefined;
  private stopping: Promise<QemuExit> | undefined;

  constructor(
    readonly vmId: string,
    readonly paths: QemuPaths,
    /** Byte offset of this launch in the (appended) log file; 0 for an attached QEMU. */
    protected readonly logOffset: number,
  ) {}

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

  /** @internal set by launchQemu / attachQemu */
  attachClients(qmp: QmpClient | undefined, qga: QgaClient | undefined): void {
    this.qmpClient = qmp;
    this.qgaClient = qga;
  }

  async release(): Promise<void> {
    const { qmpClient, qgaClient } = this;
    this.qmpClient = undefined;
    this.qgaClient = undefined;
    await qgaClient?.close();
    await qmpClient?.close();
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
        const start = Math.max(Math.min(this.logOffset, size), size - 64 * 1024);
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
        this.kill();
        if (!(await this.waitForExit(killTimeoutMs))) {
          throw new DomainError('INTERNAL', 'QEMU_STOP_FAILED', `QEMU for VM ${this.vmId} (pid ${this.pid}) survived SIGKILL`, [], {
            vmId: this.vmId,
          });
        }
      }
      return this.exit ?? { code: null, signal: null };
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

/** A QEMU process this Node process spawned; its exit is observed from the child handle. */
export class QemuProcess extends QemuInstanceBase {
  readonly origin = 'launched' as const;
  private exitInfo: QemuExit | undefined;
  /**
   * Resolves when the child exits. A detached child is unref'd, so awaiting this alone does
   * not keep the event loop alive; `waitForExit(ms)` does.
   */
  readonly exited: Promise<QemuExit>;

  constructor(
    vmId: string,
    private readonly child: ChildProcess,
    readonly argv: readonly string[],
    paths: QemuPaths,
    logOffset: number,
    /**
     * Spawned in its own session and unref'd: it outlives this Node process. While this
     * process lives it is still QEMU's parent, so the exit is observed here as usual.
     */
    readonly detached = false,
  ) {
    super(vmId, paths, logOffset);
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

  protected kill(): void {
    this.child.kill('SIGKILL');
  }
}

/**
 * A QEMU started by another process (a worker that crashed, a previous run), driven through
 * its sockets. We are not its parent, so its exit is seen by probing the pid
 * (`probeQemuPid`): gone, a zombie, or a reused pid all count as exited. The exit code is
 * never observed (`code: null`); `signal` is SIGKILL when we sent it.
 */
export class AttachedQemu extends QemuInstanceBase {
  readonly origin = 'attached' as const;
  readonly detached = true;
  private exitInfo: QemuExit | undefined;
  private killed = false;
  private lastProbe: QemuPidProbe;

  constructor(
    vmId: string,
    readonly pid: number,
    paths: QemuPaths,
  ) {
    super(vmId, paths, 0);
    this.lastProbe = { pid, state: 'running', detail: `pid ${pid} attached` };
  }

  /** The last liveness probe (refreshed by `running`). */
  get probe(): QemuPidProbe {
    return this.lastProbe;
  }

  get running(): boolean {
    if (this.exitInfo) return false;
    this.lastProbe = probeQemuPid(this.pid, this.paths.qmpSocket);
    if (this.lastProbe.state === 'running') return true;
    this.exitInfo = { code: null, signal: this.killed ? 'SIGKILL' : null };
    return false;
  }

  get exit(): QemuExit | undefined {
    void this.running;
    return this.exitInfo;
  }

  async waitForExit(ms: number): Promise<boolean> {
    const deadlineAt = Date.now() + ms;
    for (;;) {
      if (!this.running) return true;
      if (Date.now() >= deadlineAt) return false;
      await sleep(Math.min(50, Math.max(1, deadlineAt - Date.now())));
    }
  }

  protected kill(): void {
    // Only a pid that still probes as this VM's QEMU: never signal a reused pid.
    if (!this.running) return;
    try {
      process.kill(this.pid, 'SIGKILL');
      this.killed = true;
    } catch {
      // ESRCH: gone meanwhile
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
  pathsIn: QemuPaths,
  opts: LaunchOptions = {},
): Promise<QemuProcess> {
  const detached = opts.detached ?? false;
  const addControlArgs = opts.addControlArgs ?? true;
  // A detached QEMU is found again from its pid: keep it on disk next to the sockets.
  const paths: QemuPaths =
    detached && addControlArgs && !pathsIn.pidFile ? { ...pathsIn, pidFile: defaultPidFile(pathsIn.qmpSocket) } : pathsIn;
  const {
    binary = 'qemu-system-x86_64',
    qmpTimeoutMs = 15_000,
    waitForGuestAgent = paths.qgaSocket !== undefined,
    guestAgentTimeoutMs = 120_000,
    killOnExit = false,
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
    // detached: setsid() in the child, so it is in no process group or session of ours.
    child = spawn(binary, fullArgv, { stdio: ['ignore', logFd, logFd], detached });
  } finally {
    fs.closeSync(logFd); // the child holds its own copy
  }
  const spawnError = new Promise<Error>((resolve) => child.once('error', resolve));
  const proc = new QemuProcess(vmId, child, fullArgv, paths, logOffset, detached);
  // Do not keep this Node process alive for QEMU's sake ('exit' is still reported while we live).
  if (detached) child.unref();
  if (killOnExit && !detached) {
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

export interface AttachTarget {
  /** The paths the VM was launched with (as persisted from `VmRuntimeStatus.paths`). */
  paths: QemuPaths;
  /** QEMU's pid; read from `paths.pidFile` when omitted. */
  pid?: number;
}

export interface AttachOptions {
  /** Connect + greeting + `qmp_capabilities` (default 5 s). */
  qmpTimeoutMs?: number;
  /** Also connect the guest agent before returning (default: when `paths.qgaSocket` is set). */
  waitForGuestAgent?: boolean;
  /** How long the agent may take to answer (default 30 s; the guest may still be booting). */
  guestAgentTimeoutMs?: number;
}

function notRunning(vmId: string, probe: QemuPidProbe, paths: QemuPaths): DomainError {
  return new DomainError('NOT_FOUND', 'QEMU_NOT_RUNNING', `cannot attach to VM ${vmId}: ${probe.detail}`, [], {
    vmId,
    pid: String(probe.pid),
    pidState: probe.state,
    qmpSocket: paths.qmpSocket,
  });
}

/**
 * Re-attaches to a QEMU started by another process (typically a detached launch by a worker
 * that has since died): checks the pid really is that VM's QEMU, connects and negotiates
 * QMP and (by default) the guest agent. QEMU's socket chardevs serve one client at a time;
 * a dead client's connection is closed by the kernel, so the new one is accepted at once.
 *
 * Errors: pid gone, a zombie or reused → NOT_FOUND `QEMU_NOT_RUNNING`; QEMU alive but the
 * QMP socket refuses or is missing → UNAVAILABLE `QMP_UNAVAILABLE`; no greeting in time
 * (another live client holds the monitor) → DEADLINE_EXCEEDED `QMP_TIMEOUT`; the agent does
 * not answer → UNAVAILABLE `QGA_UNAVAILABLE` (pass `waitForGuestAgent: false` to attach to
 * QMP alone, e.g. to stop a VM whose guest hangs).
 */
export async function attachQemu(vmId: string, target: AttachTarget, opts: AttachOptions = {}): Promise<AttachedQemu> {
  const { paths } = target;
  const { qmpTimeoutMs = 5_000, waitForGuestAgent = paths.qgaSocket !== undefined, guestAgentTimeoutMs = 30_000 } = opts;
  const pid = target.pid ?? (paths.pidFile ? readPidFile(paths.pidFile) : undefined);
  if (pid === undefined || !Number.isSafeInteger(pid) || pid <= 0) {
    throw DomainError.invalid('QEMU_PID_REQUIRED', [
      { field: 'pid', description: `a positive pid (or a readable pidFile) is required, got ${String(target.pid ?? paths.pidFile)}` },
    ]);
  }
  const probe = probeQemuPid(pid, paths.qmpSocket);
  if (probe.state !== 'running') throw notRunning(vmId, probe, paths);

  const meta = { vmId, pid: String(pid), qmpSocket: paths.qmpSocket };
  let qmp: QmpClient;
  try {
    qmp = await QmpClient.connect(paths.qmpSocket, { connectTimeoutMs: qmpTimeoutMs });
  } catch (err) {
    const again = probeQemuPid(pid, paths.qmpSocket);
    if (again.state !== 'running') throw notRunning(vmId, again, paths);
    const cause = (err as Error).message;
    if (err instanceof DomainError && err.code === 'DEADLINE_EXCEEDED') {
      throw new DomainError(
        'DEADLINE_EXCEEDED',
        'QMP_TIMEOUT',
        `cannot attach to VM ${vmId}: QEMU pid ${pid} accepted ${paths.qmpSocket} but sent no QMP greeting (another client holding the monitor?): ${cause}`,
        [],
        meta,
      );
    }
    throw new DomainError('UNAVAILABLE', 'QMP_UNAVAILABLE', `cannot attach to VM ${vmId}: QEMU pid ${pid} is alive but its QMP socket refused: ${cause}`, [], meta);
  }

  const proc = new AttachedQemu(vmId, pid, paths);
  proc.attachClients(qmp, undefined);
  if (paths.qgaSocket && waitForGuestAgent) {
    try {
      await proc.guestAgent(guestAgentTimeoutMs);
    } catch (err) {
      await qmp.close();
      if (!proc.running) throw notRunning(vmId, proc.probe, paths);
      throw new DomainError(
        'UNAVAILABLE',
        'QGA_UNAVAILABLE',
        `cannot attach to VM ${vmId}: the guest agent on ${paths.qgaSocket} did not answer: ${(err as Error).message}`,
        [],
        { ...meta, qgaSocket: paths.qgaSocket },
      );
    }
  }
  return proc;
}
