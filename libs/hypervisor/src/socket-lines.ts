import * as net from 'node:net';

/**
 * QMP and the guest agent both frame messages as one compact JSON object per line (QMP ends
 * lines with CRLF, the agent with LF). The agent also emits a 0xFF sentinel byte before the
 * reply to `guest-sync-delimited`; a sentinel means "drop whatever partial data you hold".
 */
export class LineSplitter {
  private pending: Buffer = Buffer.alloc(0);

  constructor(
    private readonly onLine: (line: string) => void,
    private readonly onSentinel?: () => void,
  ) {}

  push(chunk: Buffer): void {
    let data = this.pending.length > 0 ? Buffer.concat([this.pending, chunk]) : chunk;
    if (this.onSentinel) {
      const ff = data.lastIndexOf(0xff);
      if (ff >= 0) {
        data = data.subarray(ff + 1);
        this.onSentinel();
      }
    }
    let start = 0;
    for (;;) {
      const nl = data.indexOf(0x0a, start);
      if (nl < 0) break;
      const line = data.subarray(start, nl).toString('utf8').trim();
      start = nl + 1;
      if (line.length > 0) this.onLine(line);
    }
    this.pending = Buffer.from(data.subarray(start));
  }

  reset(): void {
    this.pending = Buffer.alloc(0);
  }
}

/** Connects to a unix socket, failing after `timeoutMs` instead of hanging. */
export function connectUnix(path: string, timeoutMs: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.createConnection({ path });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`connect ${path}: timed out after ${timeoutMs} ms`));
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.removeAllListeners('error');
      resolve(socket);
    });
    socket.once('error', (err) => {
      clearTimeout(timer);
      socket.destroy();
      reject(err);
    });
  });
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
