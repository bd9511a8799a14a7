import { randomInt } from 'node:crypto';
import type * as net from 'node:net';
import { DomainError } from '#domain';
import { deadline, fromQapiError, unavailable, type QapiError } from './errors';
import { connectUnix, LineSplitter, sleep } from './socket-lines';

/** `guest-get-memory-blocks` entry (QAPI GuestMemoryBlock). */
export interface GuestMemoryBlock {
  physIndex: number;
  online: boolean;
  /** Absent when the guest kernel has no `removable` attribute. */
  canOffline?: boolean;
}

export type GuestMemoryBlockResult = 'success' | 'not-found' | 'operation-not-supported' | 'operation-failed';

/** `guest-set-memory-blocks` per-block answer (QAPI GuestMemoryBlockResponse). */
export interface GuestMemoryBlockResponse {
  physIndex: number;
  response: GuestMemoryBlockResult;
  /** errno from the guest's write to `state`, when the response is a failure. */
  errorCode?: number;
  /** Readable reason for a failure (zone-exact onlining and offlining fill it in). */
  message?: string;
  /** The zone the block is in after a zone-exact online ("Movable", "Normal", ...). */
  zone?: string;
}

export interface GuestExecResult {
  exitCode: number | undefined;
  signal: number | undefined;
  stdout: Buffer;
  stderr: Buffer;
  truncated: boolean;
}

export interface GuestExecOptions {
  timeoutMs?: number;
  env?: string[];
  input?: Buffer | string;
}

export interface QgaCommandOptions {
  timeoutMs?: number;
}

/** The part of the agent protocol the driver port depends on. */
export interface QgaChannel {
  execute<T = unknown>(command: string, args?: Record<string, unknown>, opts?: QgaCommandOptions): Promise<T>;
  ping(opts?: QgaCommandOptions): Promise<void>;
  getMemoryBlocks(): Promise<GuestMemoryBlock[]>;
  setMemoryBlocks(blocks: readonly { physIndex: number; online: boolean }[]): Promise<GuestMemoryBlockResponse[]>;
  getMemoryBlockSizeBytes(): Promise<number>;
  exec(path: string, args?: readonly string[], opts?: GuestExecOptions): Promise<GuestExecResult>;
  readFile(path: string, opts?: QgaCommandOptions): Promise<Buffer>;
}

export interface QgaClientOptions {
  connectTimeoutMs?: number;
  commandTimeoutMs?: number;
  /** One `guest-sync-delimited` attempt; `connect` retries it until `connectTimeoutMs`. */
  syncTimeoutMs?: number;
}

type Awaiting =
  | { kind: 'sync'; id: number; resolve: () => void; reject: (e: Error) => void }
  | { kind: 'reply'; command: string; resolve: (v: unknown) => void; reject: (e: Error) => void };

/**
 * The guest agent protocol has no command ids: replies come back in order, one at a time,
 * and a reply that arrives after its caller gave up would be taken as the answer to the next
 * command. So commands are serialized, and after any timeout (or a fresh connection) the
 * stream is resynchronized with `guest-sync-delimited` before the next command: send 0xFF
 * (resets the agent's JSON parser), send a random id, drop everything until the 0xFF
 * sentinel and the reply echoing that id.
 */
export class QgaClient implements QgaChannel {
  private socket: net.Socket | undefined;
  private awaiting: Awaiting | undefined;
  private needsSync = true;
  private queue: Promise<unknown> = Promise.resolve();
  private closed = false;
  private readonly opts: Required<QgaClientOptions>;

  private constructor(
    readonly path: string,
    opts: QgaClientOptions,
  ) {
    this.opts = { connectTimeoutMs: 30_000, commandTimeoutMs: 30_000, syncTimeoutMs: 1_000, ...opts };
  }

  /**
   * Connects and synchronizes, retrying until the agent answers or `connectTimeoutMs`
   * passes: right after launch the guest is still booting and the agent not yet running.
   * `isAlive` lets the launcher stop waiting as soon as QEMU has exited.
   */
  static async connect(path: string, opts: QgaClientOptions & { isAlive?: () => boolean } = {}): Promise<QgaClient> {
    const client = new QgaClient(path, opts);
    await client.syncWithRetry(opts.isAlive);
    return client;
  }

  get connected(): boolean {
    return this.socket !== undefined && !this.socket.destroyed;
  }

  async reconnect(): Promise<void> {
    this.dropSocket(unavailable('QGA', `guest agent connection to ${this.path} reset by reconnect`));
    this.closed = false;
    await this.serialized(() => this.syncWithRetry());
  }

  async close(): Promise<void> {
    this.closed = true;
    this.dropSocket(unavailable('QGA', `guest agent connection to ${this.path} closed`));
  }

  execute<T = unknown>(command: string, args?: Record<string, unknown>, opts: QgaCommandOptions = {}): Promise<T> {
    return this.serialized(async () => {
      if (this.closed) throw unavailable('QGA', `guest agent client for ${this.path} is closed`);
      if (!this.connected || this.needsSync) await this.syncWithRetry();
      return (await this.request(command, args, opts.timeoutMs ?? this.opts.commandTimeoutMs)) as T;
    });
  }

  // --- typed helpers --------------------------------------------------------------------

  async ping(opts: QgaCommandOptions = {}): Promise<void> {
    await this.execute('guest-ping', undefined, opts);
  }

  async getMemoryBlocks(): Promise<GuestMemoryBlock[]> {
    const raw = await this.execute<{ 'phys-index': number; online: boolean; 'can-offline'?: boolean }[]>(
      'guest-get-memory-blocks',
    );
    return raw.map((b) => ({
      physIndex: b['phys-index'],
      online: b.online,
      ...(b['can-offline'] === undefined ? {} : { canOffline: b['can-offline'] }),
    }));
  }

  /** The agent writes plain "online"/"offline", so the zone follows the guest's online policy. */
  async setMemoryBlocks(blocks: readonly { physIndex: number; online: boolean }[]): Promise<GuestMemoryBlockResponse[]> {
    const raw = await this.execute<{ 'phys-index': number; response: GuestMemoryBlockResult; 'error-code'?: number }[]>(
      'guest-set-memory-blocks',
      { 'mem-blks': blocks.map((b) => ({ 'phys-index': b.physIndex, online: b.online })) },
    );
    return raw.map((r) => ({
      physIndex: r['phys-index'],
      response: r.response,
      ...(r['error-code'] === undefined ? {} : { errorCode: r['error-code'] }),
    }));
  }

  async getMemoryBlockSizeBytes(): Promise<number> {
    const info = await this.execute<{ size: number }>('guest-get-memory-block-info');
    return info.size;
  }

  /**
   * Runs a program in the guest and waits for it (`guest-exec` + polling `guest-exec-status`).
   * `path` is looked up in the agent's PATH. Output is capped by the agent (16 MiB).
   */
  async exec(path: string, args: readonly string[] = [], opts: GuestExecOptions = {}): Promise<GuestExecResult> {
    const timeoutMs = opts.timeoutMs ?? this.opts.commandTimeoutMs;
    const started = Date.now();
    const { pid } = await this.execute<{ pid: number }>('guest-exec', {
      path,
      arg: [...args],
      'capture-output': true,
      ...(opts.env ? { env: opts.env } : {}),
      ...(opts.input !== undefined ? { 'input-data': Buffer.from(opts.input).toString('base64') } : {}),
    });
    // Short programs (a sysfs write or read) end within tens of milliseconds: ask often at
    // first, then every 20 ms (each status is one agent round trip, about a millisecond, so
    // a longer pause would mostly add to how late the end is seen).
    for (let delayMs = 4; ; delayMs = Math.min(Math.ceil(delayMs * 1.5), 20)) {
      const st = await this.execute<{
        exited: boolean;
        exitcode?: number;
        signal?: number;
        'out-data'?: string;
        'err-data'?: string;
        'out-truncated'?: boolean;
        'err-truncated'?: boolean;
      }>('guest-exec-status', { pid });
      if (st.exited) {
        return {
          exitCode: st.exitcode,
          signal: st.signal,
          stdout: Buffer.from(st['out-data'] ?? '', 'base64'),
          stderr: Buffer.from(st['err-data'] ?? '', 'base64'),
          truncated: Boolean(st['out-truncated'] || st['err-truncated']),
        };
      }
      if (Date.now() - started > timeoutMs) throw deadline('QGA', `guest-exec ${path}`, timeoutMs);
      await sleep(delayMs);
    }
  }

  /** Reads a whole guest file with guest-file-open/read/close (no process spawned). */
  async readFile(path: string, opts: QgaCommandOptions = {}): Promise<Buffer> {
    const handle = await this.execute<number>('guest-file-open', { path, mode: 'r' }, opts);
    const chunks: Buffer[] = [];
    try {
      for (;;) {
        const r = await this.execute<{ count: number; 'buf-b64': string; eof: boolean }>(
          'guest-file-read',
          { handle, count: 65536 },
          opts,
        );
        chunks.push(Buffer.from(r['buf-b64'], 'base64'));
        if (r.eof || r.count === 0) break;
      }
    } finally {
      await this.execute('guest-file-close', { handle }, opts).catch(() => undefined);
    }
    return Buffer.concat(chunks);
  }

  // --- protocol -------------------------------------------------------------------------

  private serialized<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async syncWithRetry(isAlive?: () => boolean): Promise<void> {
    const deadlineAt = Date.now() + this.opts.connectTimeoutMs;
    let lastError: Error | undefined;
    while (Date.now() < deadlineAt) {
      if (isAlive && !isAlive()) throw unavailable('QGA', `guest agent at ${this.path}: QEMU is not running`);
      try {
        if (!this.connected) await this.openSocket(Math.max(100, Math.min(2_000, deadlineAt - Date.now())));
        await this.sync(Math.min(this.opts.syncTimeoutMs, Math.max(100, deadlineAt - Date.now())));
        return;
      } catch (err) {
        lastError = err as Error;
        if (!(err instanceof DomainError) || err.reason !== 'QGA_TIMEOUT') await sleep(200);
      }
    }
    throw new DomainError(
      'UNAVAILABLE',
      'QGA_UNAVAILABLE',
      `guest agent at ${this.path} did not answer within ${this.opts.connectTimeoutMs} ms` +
        (lastError ? ` (last error: ${lastError.message})` : ''),
      [],
      { path: this.path },
    );
  }

  private async sync(timeoutMs: number): Promise<void> {
    const socket = this.socket;
    if (!socket) throw unavailable('QGA', `guest agent not connected to ${this.path}`);
    const id = randomInt(1, 2 ** 47);
    const done = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        if (this.awaiting?.kind === 'sync' && this.awaiting.id === id) this.awaiting = undefined;
        reject(deadline('QGA', 'guest-sync-delimited', timeoutMs));
      }, timeoutMs);
      this.awaiting = {
        kind: 'sync',
        id,
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
    });
    socket.write(Buffer.concat([Buffer.from([0xff]), Buffer.from(JSON.stringify({ execute: 'guest-sync-delimited', arguments: { id } }) + '\n')]));
    await done;
    this.needsSync = false;
  }

  private request(command: string, args: Record<string, unknown> | undefined, timeoutMs: number): Promise<unknown> {
    const socket = this.socket;
    if (!socket) return Promise.reject(unavailable('QGA', `guest agent not connected to ${this.path}`));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.awaiting = undefined;
        this.needsSync = true; // the late reply must not answer the next command
        reject(deadline('QGA', command, timeoutMs));
      }, timeoutMs);
      this.awaiting = {
        kind: 'reply',
        command,
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      socket.write(JSON.stringify(args === undefined ? { execute: command } : { execute: command, arguments: args }) + '\n');
    });
  }

  private async openSocket(timeoutMs: number): Promise<void> {
    let socket: net.Socket;
    try {
      socket = await connectUnix(this.path, timeoutMs);
    } catch (err) {
      throw unavailable('QGA', `guest agent connect ${this.path}: ${(err as Error).message}`, { path: this.path });
    }
    this.socket = socket;
    this.needsSync = true;
    const splitter = new LineSplitter(
      (line) => this.handleLine(line),
      () => undefined, // the splitter already dropped the stale bytes before the sentinel
    );
    socket.on('data', (chunk) => splitter.push(chunk));
    socket.on('error', () => undefined);
    socket.on('close', () => {
      if (this.socket === socket) this.dropSocket(unavailable('QGA', `guest agent connection to ${this.path} closed`));
    });
  }

  private dropSocket(err: Error): void {
    const socket = this.socket;
    this.socket = undefined;
    this.needsSync = true;
    socket?.destroy();
    const a = this.awaiting;
    this.awaiting = undefined;
    a?.reject(err);
  }

  private handleLine(line: string): void {
    let msg: Record<string, unknown>;
    try {
      msg = JSON.parse(line) as Record<string, unknown>;
    } catch {
      return; // stale or partial data from before a resync
    }
    const a = this.awaiting;
    if (!a) return; // a reply nobody waits for any more
    if (a.kind === 'sync') {
      if (msg['return'] === a.id) {
        this.awaiting = undefined;
        a.resolve();
      }
      return;
    }
    this.awaiting = undefined;
    if ('error' in msg) a.reject(fromQapiError('QGA', a.command, msg['error'] as QapiError));
    else a.resolve(msg['return']);
  }
}
