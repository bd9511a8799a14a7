import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { DomainError } from '#domain';
import { QmpClient } from './qmp-client';
import { qemuErrorReason } from './errors';

/** Protocol corner cases against a scripted fake QMP server (greeting, ids, events). */

type Handler = (msg: { execute: string; id?: string; arguments?: Record<string, unknown> }, sock: net.Socket) => void;

async function fakeQmp(handler: Handler): Promise<{ path: string; sockets: Set<net.Socket>; close(): Promise<void> }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'memplane-fakeqmp-'));
  const sockPath = path.join(dir, 'qmp.sock');
  const sockets = new Set<net.Socket>();
  const server = net.createServer((sock) => {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    sock.write('{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "fake"}, "capabilities": ["oob"]}}\r\n');
    let buf = '';
    sock.on('data', (chunk) => {
      buf += chunk.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const msg = JSON.parse(buf.slice(0, nl)) as Parameters<Handler>[0];
        buf = buf.slice(nl + 1);
        if (msg.execute === 'qmp_capabilities') sock.write(JSON.stringify({ return: {}, id: msg.id }) + '\r\n');
        else handler(msg, sock);
      }
    });
  });
  await new Promise<void>((r) => server.listen(sockPath, r));
  const close = (): Promise<void> =>
    new Promise((r) =>
      server.close(() => {
        fs.rmSync(dir, { recursive: true, force: true });
        r();
      }),
    );
  return { path: sockPath, sockets, close };
}

const send = (sock: net.Socket, obj: unknown): boolean => sock.write(JSON.stringify(obj) + '\r\n');
const event = (name: string, data: unknown): unknown => ({ event: name, data, timestamp: { seconds: 1, microseconds: 2 } });

describe('QmpClient (fake server)', () => {
  const cleanup: (() => Promise<void>)[] = [];
  after(async () => {
    for (const c of cleanup) await c();
  });

  it('matches replies by id even out of order, and keeps events that came first', async () => {
    const held: Parameters<Handler>[0][] = [];
    const srv = await fakeQmp((msg, sock) => {
      held.push(msg);
      if (held.length < 2) return;
      // Answer the second command first, with an event in between.
      send(sock, { return: 'second', id: held[1]!.id });
      send(sock, event('DEVICE_DELETED', { device: 'dimm1', path: '/machine/peripheral/dimm1' }));
      send(sock, { return: 'first', id: held[0]!.id });
    });
    const qmp = await QmpClient.connect(srv.path);
    cleanup.push(() => qmp.close(), () => srv.close());
    assert.equal(qmp.greeting.version.qemu.major, 7);
    const cursor = qmp.eventCursor();
    const [a, b] = await Promise.all([qmp.execute('one'), qmp.execute('two')]);
    assert.deepEqual([a, b], ['first', 'second']);
    const ev = await qmp.waitForEvent((e) => e.event === 'DEVICE_DELETED' && e.data['device'] === 'dimm1', {
      after: cursor,
      timeoutMs: 100,
    });
    assert.equal(ev.seq, cursor + 1);
  });

  it('times out one command without disturbing the next', async () => {
    let n = 0;
    const srv = await fakeQmp((msg, sock) => {
      const reply = (): boolean => send(sock, { return: msg.execute, id: msg.id });
      if (n++ === 0) setTimeout(reply, 200);
      else reply();
    });
    const qmp = await QmpClient.connect(srv.path);
    cleanup.push(() => qmp.close(), () => srv.close());
    await assert.rejects(qmp.execute('slow', undefined, { timeoutMs: 30 }), (e: DomainError) => e.reason === 'QMP_TIMEOUT');
    assert.equal(await qmp.execute('fast'), 'fast');
    await new Promise((r) => setTimeout(r, 250)); // the late reply arrives and is ignored
    assert.equal(await qmp.execute('again'), 'again');
  });

  it('fails in-flight commands with UNAVAILABLE when QEMU goes away, then reconnects', async () => {
    const srv = await fakeQmp((msg, sock) => {
      if (msg.execute === 'hang') sock.destroy();
      else send(sock, { return: 'ok', id: msg.id });
    });
    const qmp = await QmpClient.connect(srv.path);
    cleanup.push(() => qmp.close(), () => srv.close());
    const waiting = qmp.waitForEvent('DEVICE_DELETED', { timeoutMs: 5_000 });
    await assert.rejects(qmp.execute('hang'), (e: DomainError) => e.code === 'UNAVAILABLE' && e.reason === 'QMP_UNAVAILABLE');
    // A waiter for an event the dead QEMU can no longer send fails at once, not at timeout.
    await assert.rejects(waiting, (e: DomainError) => e.reason === 'QMP_UNAVAILABLE');
    assert.equal(qmp.connected, false);
    assert.equal(await qmp.execute('query-status'), 'ok'); // reconnected on demand
  });

  it('maps QEMU error classes to domain reasons', () => {
    assert.equal(qemuErrorReason('QEMU', 'GenericError'), 'QEMU_GENERIC_ERROR');
    assert.equal(qemuErrorReason('QEMU', 'KVMMissingCap'), 'QEMU_KVM_MISSING_CAP');
    assert.equal(qemuErrorReason('QGA', 'CommandNotFound'), 'QGA_COMMAND_NOT_FOUND');
  });
});
