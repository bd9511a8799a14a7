import type * as net from 'node:net';
import { deadline, fromQapiError, protocolError, unavailable, type QapiError } from './errors';
import { connectUnix, LineSplitter } from './socket-lines';

/** An asynchronous QMP event, numbered in arrival order so waiters can ask for "after N". */
export interface QmpEvent<D = Record<string, unknown>> {
  event: string;
  data: D;
  timestamp: { seconds: number; microseconds: number };
  /** Client-local sequence number (1, 2, ...), continuous across reconnects. */
  seq: number;
}

export interface QmpGreeting {
  version: { qemu: { major: number; minor: number; micro: number }; package: string };
  capabilities: string[];
}

export interface QmpCommandOptions {
  timeoutMs?: number;
}

export interface WaitForEventOptions {
  timeoutMs?: number;
  /**
   * Also match events already received with a sequence number greater than this cursor
   * (from `eventCursor()` taken before issuing the command). Closes the race where the
   * event arrives before the caller starts waiting, e.g. MEMORY_DEVICE_SIZE_CHANGE right
   * after `qom-set`.
   */
  after?: number;
}

export type EventPredicate = (event: QmpEvent) => boolean;

/** The part of QMP the driver port depends on, so a remote implementation can stand in. */
export interface QmpChannel {
  execute<T = unknown>(command: string, args?: Record<string, unknown>, opts?: QmpCommandOptions): Promise<T>;
  eventCursor(): number;
  waitForEvent(match: string | EventPredicate, opts?: WaitForEventOptions): Promise<QmpEvent>;
  onEvent(listener: (event: QmpEvent) => void): () => void;
}

export interface QmpClientOptions {
  connectTimeoutMs?: number;
  /** Default per-command timeout. */
  commandTimeoutMs?: number;
  /** How many recent events are kept for `waitForEvent({ after })`. */
  eventBacklog?: number;
}

interface Pending {
  command: string;
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

interface Waiter {
  predicate: EventPredicate;
  resolve: (e: QmpEvent) => void;
  reject: (err: Error) => void;
}

/**
 * QMP over a unix socket. One connection, several commands in flight, matched by `id`.
 * Events are fanned out to listeners and kept in a bounded backlog.
 */
export class QmpClient implements QmpChannel {
  private socket: net.Socket | undefined;
  private greetingValue: QmpGreeting | undefined;
  private nextId = 1;
  private lastSeq = 0;
  private readonly pending = new Map<string, Pending>();
  private readonly backlog: QmpEvent[] = [];
  private readonly listeners = new Set<(e: QmpEvent) => void>();
  private readonly waiters = new Set<Waiter>();
  private closed = false;
  private readonly opts: Required<QmpClientOptions>;

  private constructor(
    readonly path: string,
    opts: QmpClientOptions,
  ) {
    this.opts = { connectTimeoutMs: 5_000, commandTimeoutMs: 30_000, eventBacklog: 256, ...opts };
  }

  /** Connects, reads the greeting and leaves capabilities-negotiation mode. */
  static async connect(path: string, opts: QmpClientOptions = {}): Promise<QmpClient> {
    const client = new QmpClient(path, opts);
    await client.ensureOpen();
    return client;
  }

  get greeting(): QmpGreeting {
    if (!this.greetingValue) throw protocolError('QEMU', 'QMP greeting not received');
    return this.greetingValue;
  }

  get connected(): boolean {
    return this.socket !== undefined && !this.socket.destroyed;
  }

  /** Drops the current connection (failing its in-flight commands) and negotiates a new one. */
  async reconnect(): Promise<void> {
    this.dropSocket(unavailable('QEMU', `QMP connection to ${this.path} reset by reconnect`));
    this.closed = false;
    await this.ensureOpen();
  }

  async close(): Promise<void> {
    this.closed = true;
    const err = unavailable('QEMU', `QMP connection to ${this.path} closed`);
    this.dropSocket(err);
    this.failWaiters(err);
  }

  /** Event waiters survive a deliberate reconnect, not QEMU going away or close(). */
  private failWaiters(err: Error): void {
    for (const w of [...this.waiters]) w.reject(err);
  }

  async execute<T = unknown>(command: string, args?: Record<string, unknown>, opts: QmpCommandOptions = {}): Promise<T> {
    if (this.closed) throw unavailable('QEMU', `QMP client for ${this.path} is closed`);
    if (!this.connected) await this.ensureOpen();
    return (await this.send(command, args, opts.timeoutMs ?? this.opts.commandTimeoutMs)) as T;
  }

  eventCursor(): number {
    return this.lastSeq;
  }

  onEvent(listener: (event: QmpEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Resolves with the first event (by name or predicate) or fails with DEADLINE_EXCEEDED. */
  waitForEvent(match: string | EventPredicate, opts: WaitForEventOptions = {}): Promise<QmpEvent> {
    const predicate: EventPredicate = typeof match === 'string' ? (e) => e.event === match : match;
    if (opts.after !== undefined) {
      const old = this.backlog.find((e) => e.seq > opts.after! && predicate(e));
      if (old) return Promise.resolve(old);
    }
    const timeoutMs = opts.timeoutMs ?? this.opts.commandTimeoutMs;
    const label = typeof match === 'string' ? match : 'matching event';
    return new Promise((resolve, reject) => {
      const waiter: Waiter = {
        predicate,
        resolve: (e) => {
          clearTimeout(timer);
          this.waiters.delete(waiter);
          resolve(e);
        },
        reject: (err) => {
          clearTimeout(timer);
          this.waiters.delete(waiter);
          reject(err);
        },
      };
      const timer = setTimeout(() => {
        this.waiters.delete(waiter);
        reject(deadline('QEMU', `waiting for QMP event ${label}`, timeoutMs));
      }, timeoutMs);
      this.waiters.add(waiter);
    });
  }

  // --- connection ---------------------------------------------------------------------

  private opening: Promise<void> | undefined;

  /** Concurrent callers share one reconnect instead of racing several sockets. */
  private ensureOpen(): Promise<void> {
    this.opening ??= this.open().finally(() => {
      this.opening = undefined;
    });
    return this.opening;
  }

  private async open(): Promise<void> {
    let socket: net.Socket;
    try {
      socket = await connectUnix(this.path, this.opts.connectTimeoutMs);
    } catch (err) {
      throw unavailable('QEMU', `QMP connect ${this.path}: ${(err as Error).message}`, { path: this.path });
    }
    this.socket = socket;
    const greeting = new Promise<QmpGreeting>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(deadline('QEMU', `QMP greeting on ${this.path}`, this.opts.connectTimeoutMs)),
        this.opts.connectTimeoutMs,
      );
      this.onGreeting = (g) => {
        clearTimeout(timer);
        resolve(g);
      };
      this.onEarlyClose = (err) => {
        clearTimeout(timer);
        reject(err);
      };
    });
    const splitter = new LineSplitter((line) => this.handleLine(line));
    socket.on('data', (chunk) => splitter.push(chunk));
    socket.on('error', () => undefined); // 'close' follows and carries the consequence
    socket.on('close', () => {
      if (this.socket !== socket) return;
      const err = unavailable('QEMU', `QMP connection to ${this.path} closed by QEMU`);
      this.dropSocket(err);
      this.failWaiters(err);
    });
    try {
      this.greetingValue = await greeting;
      await this.send('qmp_capabilities', undefined, this.opts.commandTimeoutMs);
    } catch (err) {
      this.dropSocket(err as Error);
      throw err;
    }
  }

  private onGreeting: ((g: QmpGreeting) => void) | undefined;
  private onEarlyClose: ((err: Error) => void) | undefined;

  private dropSocket(err: Error): void {
    const socket = this.socket;
    this.socket = undefined;
    socket?.destroy();
    this.onEarlyClose?.(err);
    this.onEarlyClose = undefined;
    this.onGreeting = undefined;
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      this.pending.delete(id);
      p.reject(err);
    }
  }

  private send(command: string, args: Record<string, unknown> | undefined, timeoutMs: number): Promise<unknown> {
    const socket = this.socket;
    if (!socket) return Promise.reject(unavailable('QEMU', `QMP not connected to ${this.path}`));
    const id = `mp-${this.nextId++}`;
    const message = args === undefined ? { execute: command, id } : { execute: command, arguments: args, id };
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        // A late reply carries an id nobody waits for and is dropped; no resync needed.
        this.pending.delete(id);
        reject(deadline('QEMU', `QMP ${command}`, timeoutMs));
      }, timeoutMs);
      this.pending.set(id, { command, resolve, reject, timer });
      socket.write(JSON.stringify(message) + '\n');
    });
  }

  private handleLine(line: string): void {
    let msg: Record<string, unknown>;
    try {
      msg = JSON.parse(line) as Record<string, unknown>;
    } catch {
      return; // QEMU never sends partial JSON on a line; ignore noise rather than crash
    }
    if ('QMP' in msg) {
      this.onGreeting?.(msg['QMP'] as QmpGreeting);
      this.onGreeting = undefined;
      this.onEarlyClose = undefined;
      return;
    }
    if ('event' in msg) {
      this.dispatchEvent(msg);
      return;
    }
    const id = typeof msg['id'] === 'string' ? msg['id'] : undefined;
    const p = id === undefined ? undefined : this.pending.get(id);
    if (!p || id === undefined) return;
    this.pending.delete(id);
    clearTimeout(p.timer);
    if ('error' in msg) p.reject(fromQapiError('QEMU', p.command, msg['error'] as QapiError));
    else p.resolve(msg['return']);
  }

  private dispatchEvent(msg: Record<string, unknown>): void {
    const event: QmpEvent = {
      event: String(msg['event']),
      data: (msg['data'] as Record<string, unknown> | undefined) ?? {},
      timestamp: msg['timestamp'] as QmpEvent['timestamp'],
      seq: ++this.lastSeq,
    };
    this.backlog.push(event);
    if (this.backlog.length > this.opts.eventBacklog) this.backlog.shift();
    for (const w of [...this.waiters]) {
      let hit = false;
      try {
        hit = w.predicate(event);
      } catch {
        // a throwing predicate simply does not match
      }
      if (hit) w.resolve(event);
    }
    for (const l of this.listeners) {
      try {
        l(event);
      } catch {
        // a listener's bug must not break the protocol loop
      }
    }
  }
}
