import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { DomainError } from '#domain';
import { QgaClient } from './qga-client';

/**
 * The agent's stream-resync rules against a scripted fake agent: the cases a real guest
 * produces only by bad luck (stale replies from a previous client, a reply that arrives
 * after its caller gave up, a dropped connection).
 */

interface FakeAgent {
  path: string;
  received: string[];
  /** Delay (ms) before answering the next non-sync command. */
  delayNext: number[];
  connections: number;
  dropAll(): void;
  close(): Promise<void>;
}

async function fakeAgent(opts: { staleOnConnect?: string } = {}): Promise<FakeAgent> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'memplane-fakeqga-'));
  const sockets = new Set<net.Socket>();
  const agent: FakeAgent = {
    path: path.join(dir, 'qga.sock'),
    received: [],
    delayNext: [],
    connections: 0,
    dropAll: () => sockets.forEach((s) => s.destroy()),
    close: () =>
      new Promise((r) =>
        server.close(() => {
          fs.rmSync(dir, { recursive: true, force: true });
          r();
        }),
      ),
  };
  const server = net.createServer((sock) => {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    agent.connections++;
    if (opts.staleOnConnect) sock.write(opts.staleOnConnect);
    let buf = '';
    // Replies go out in order, like the real agent's single-threaded loop.
    let chain = Promise.resolve();
    sock.on('data', (chunk) => {
      buf += chunk.toString('latin1').replace(/\xff/g, '');
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        const msg = JSON.parse(line) as { execute: string; arguments?: Record<string, unknown> };
        agent.received.push(msg.execute);
        const delay = msg.execute === 'guest-sync-delimited' ? 0 : (agent.delayNext.shift() ?? 0);
        chain = chain.then(async () => {
          if (delay) await new Promise((r) => setTimeout(r, delay));
          if (sock.destroyed) return;
          switch (msg.execute) {
            case 'guest-sync-delimited':
              sock.write(Buffer.concat([Buffer.from([0xff]), Buffer.from(JSON.stringify({ return: msg.arguments?.['id'] }) + '\n')]));
              break;
            case 'guest-get-memory-block-info':
              sock.write(JSON.stringify({ return: { size: 134217728 } }) + '\n');
              break;
            case 'guest-ping':
              sock.write(JSON.stringify({ return: {} }) + '\n');
              break;
            default:
              sock.write(JSON.stringify({ error: { class: 'CommandNotFound', desc: `The command ${msg.execute} has not been found` } }) + '\n');
          }
        });
      }
    });
  });
  await new Promise<void>((r) => server.listen(agent.path, r));
  return agent;
}

describe('QgaClient (fake agent)', () => {
  const cleanup: (() => Promise<void>)[] = [];
  after(async () => {
    for (const c of cleanup) await c();
  });

  it('discards stale data from a previous client before the sync sentinel', async () => {
    const agent = await fakeAgent({ staleOnConnect: '{"return": {"size": 1}}\n{"return": 7' });
    const qga = await QgaClient.connect(agent.path, { connectTimeoutMs: 2_000 });
    cleanup.push(() => qga.close(), () => agent.close());
    assert.equal(await qga.getMemoryBlockSizeBytes(), 134217728);
    assert.deepEqual(agent.received, ['guest-sync-delimited', 'guest-get-memory-block-info']);
  });

  it('resyncs after a timeout so the late reply does not answer the next command', async () => {
    const agent = await fakeAgent();
    const qga = await QgaClient.connect(agent.path, { connectTimeoutMs: 2_000 });
    cleanup.push(() => qga.close(), () => agent.close());
    agent.delayNext.push(300);
    await assert.rejects(qga.execute('guest-get-memory-block-info', undefined, { timeoutMs: 50 }), (e: DomainError) => {
      assert.equal(e.code, 'DEADLINE_EXCEEDED');
      assert.equal(e.reason, 'QGA_TIMEOUT');
      return true;
    });
    // The {size} reply lands while we resync; ping must still get its own `{}`.
    assert.deepEqual(await qga.execute('guest-ping'), {});
    assert.deepEqual(agent.received.slice(-2), ['guest-sync-delimited', 'guest-ping']);
  });

  it('maps agent errors to DomainError with the agent message', async () => {
    const agent = await fakeAgent();
    const qga = await QgaClient.connect(agent.path, { connectTimeoutMs: 2_000 });
    cleanup.push(() => qga.close(), () => agent.close());
    await assert.rejects(qga.execute('guest-nope'), (e: DomainError) => {
      assert.equal(e.reason, 'QGA_COMMAND_NOT_FOUND');
      assert.equal(e.metadata['qemuMessage'], 'The command guest-nope has not been found');
      return true;
    });
  });

  it('reconnects by itself after the connection drops', async () => {
    const agent = await fakeAgent();
    const qga = await QgaClient.connect(agent.path, { connectTimeoutMs: 2_000 });
    cleanup.push(() => qga.close(), () => agent.close());
    agent.dropAll();
    await new Promise((r) => setTimeout(r, 50));
    await qga.ping();
    assert.equal(agent.connections, 2);
  });

  it('gives up with QGA_UNAVAILABLE when nothing answers', async () => {
    const missing = path.join(os.tmpdir(), `memplane-no-agent-${process.pid}.sock`);
    await assert.rejects(QgaClient.connect(missing, { connectTimeoutMs: 500 }), (e: DomainError) => {
      assert.equal(e.code, 'UNAVAILABLE');
      assert.equal(e.reason, 'QGA_UNAVAILABLE');
      return true;
    });
  });
});
