import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { DomainError } from '#domain';
import { errnoFromMessage, GUEST_SCRIPT_TIMEOUT_S, offlineBlocks, onlineBlocksInZone, parseScriptLines, readBlockZones, zoneSatisfies } from './guest-memory-zones';
import type { GuestExecResult, QgaChannel } from './qga-client';
import { isVanishedBlockError } from './driver';
import { fromQapiError } from './errors';
import { defaultPidFile, probeQemuPid } from './qemu-launcher';

/** A guest agent whose guest-exec prints `stdout`; records what it was asked to run. */
function fakeAgent(stdout: string, exitCode: number | undefined = 0, signal?: number): QgaChannel & { calls: { path: string; args: readonly string[] }[] } {
  const calls: { path: string; args: readonly string[] }[] = [];
  const unused = (): never => {
    throw new Error('not used');
  };
  return {
    calls,
    execute: unused,
    ping: unused,
    getMemoryBlocks: unused,
    setMemoryBlocks: unused,
    getMemoryBlockSizeBytes: unused,
    readFile: unused,
    async exec(path: string, args: readonly string[] = []): Promise<GuestExecResult> {
      calls.push({ path, args });
      return { exitCode, signal, stdout: Buffer.from(stdout), stderr: Buffer.from(exitCode ? 'boom' : ''), truncated: false };
    },
  };
}

describe('guest memory zones (shell protocol)', () => {
  it('parses one line per block, keeping "|" inside the message', () => {
    const lines = parseScriptLines('32|ok|Movable|\n33|failed||sh: write error: a|b\nnoise\n');
    assert.deepEqual([...lines.keys()], [32, 33]);
    assert.deepEqual(lines.get(33), { physIndex: 33, status: 'failed', a: '', b: 'sh: write error: a|b' });
  });

  it('maps shell write errors to errno', () => {
    assert.deepEqual(errnoFromMessage('sh: write error: Device or resource busy'), { errorCode: 16, errno: 'EBUSY' });
    assert.deepEqual(errnoFromMessage('bash: echo: write error: Invalid argument'), { errorCode: 22, errno: 'EINVAL' });
    assert.equal(errnoFromMessage('dash: 1: echo: echo: I/O error'), undefined);
  });

  it('knows which zones satisfy which online type', () => {
    assert.equal(zoneSatisfies('online_movable', 'Movable'), true);
    assert.equal(zoneSatisfies('online_movable', 'Normal'), false);
    assert.equal(zoneSatisfies('online_kernel', 'Normal'), true);
    assert.equal(zoneSatisfies('online_kernel', 'DMA32'), true);
    assert.equal(zoneSatisfies('online_kernel', 'Movable'), false);
    assert.equal(zoneSatisfies('online', 'Movable'), true);
  });

  it('onlines with one sh -c for all blocks and answers per block, in order', async () => {
    const qga = fakeAgent(
      ['40|already|Normal|', '33|failed||sh: write error: Device or resource busy', '32|ok|Movable|', '41|already|Movable|', '99|not-found||'].join('\n'),
    );
    const r = await onlineBlocksInZone(qga, [32, 33, 40, 41, 99], 'online_movable');
    assert.equal(qga.calls.length, 1);
    // Under the guest's own timeout, so nothing is left running in the guest.
    assert.equal(qga.calls[0]!.path, 'timeout');
    assert.deepEqual(qga.calls[0]!.args.slice(0, 5), ['-s', 'KILL', String(GUEST_SCRIPT_TIMEOUT_S), 'sh', '-c']);
    assert.deepEqual(qga.calls[0]!.args.slice(6), ['sh', 'online_movable', '32', '33', '40', '41', '99']);
    assert.deepEqual(r[0], { physIndex: 32, response: 'success', zone: 'Movable' });
    assert.deepEqual(
      [r[1]!.response, r[1]!.errorCode, r[1]!.message],
      ['operation-failed', 16, 'write online_movable to memory33/state: sh: write error: Device or resource busy'],
    );
    assert.deepEqual([r[2]!.response, r[2]!.zone], ['operation-failed', 'Normal']);
    assert.deepEqual(r[3], { physIndex: 41, response: 'success', zone: 'Movable' });
    assert.equal(r[4]!.response, 'not-found');
  });

  it('reads state and zones: the zone of an online block, the candidates of an offline one', async () => {
    const qga = fakeAgent('1|present|online|DMA32\n32|present|offline|Normal Movable\n7|absent||\n');
    assert.deepEqual(await readBlockZones(qga, [1, 32, 7]), [
      { physIndex: 1, present: true, online: true, state: 'online', zone: 'DMA32' },
      { physIndex: 32, present: true, online: false, state: 'offline', validZones: ['Normal', 'Movable'] },
      { physIndex: 7, present: false, online: false },
    ]);
  });

  it('offlines with one script, each write bounded, and answers per block like guest-set-memory-blocks', async () => {
    const qga = fakeAgent(['32|ok||', '33|failed||sh: write error: Device or resource busy', '34|timeout||', '35|already||', '36|not-found||', '37|failed||sh: odd'].join('\n'));
    const r = await offlineBlocks(qga, [32, 33, 34, 35, 36, 37], 20);
    assert.equal(qga.calls.length, 1);
    // The whole script is bounded by the per-block bound times the blocks, plus a margin.
    assert.deepEqual(qga.calls[0]!.args.slice(0, 3), ['-s', 'KILL', String(6 * 20 + 15)]);
    assert.deepEqual(qga.calls[0]!.args.slice(6), ['sh', '20', '32', '33', '34', '35', '36', '37']);
    assert.deepEqual(r, [
      { physIndex: 32, response: 'success' },
      { physIndex: 33, response: 'operation-failed', errorCode: 16, message: 'memory33 offline failed with errno 16 (EBUSY)' },
      {
        physIndex: 34,
        response: 'operation-failed',
        errorCode: 4,
        message: 'memory34 offline did not finish within 20 s (the guest kept trying to migrate its pages) and was stopped (EINTR)',
      },
      { physIndex: 35, response: 'success' },
      { physIndex: 36, response: 'not-found', message: 'memory36 does not exist in the guest' },
      { physIndex: 37, response: 'operation-failed', message: 'memory37 offline failed: sh: odd' },
    ]);
  });

  it('a script the guest had to kill is a DEADLINE_EXCEEDED, not a hang', async () => {
    for (const agent of [fakeAgent('', undefined, 9), fakeAgent('', 137)]) {
      await assert.rejects(readBlockZones(agent, [1, 2, 3]), (e: unknown) => e instanceof DomainError && e.code === 'DEADLINE_EXCEEDED' && e.reason === 'GUEST_EXEC_TIMEOUT');
    }
  });

  it('reads one or two blocks file by file, a missing block as absent, and falls back to guest-exec when files are refused', async () => {
    const files: Record<string, string> = {
      '/sys/devices/system/memory/memory1/state': 'online\n',
      '/sys/devices/system/memory/memory1/valid_zones': 'DMA32\n',
      '/sys/devices/system/memory/memory32/state': 'offline\n',
      '/sys/devices/system/memory/memory32/valid_zones': 'Normal Movable\n',
    };
    const reads: string[] = [];
    const qga = {
      ...fakeAgent('never run'),
      async readFile(path: string): Promise<Buffer> {
        reads.push(path);
        const body = files[path];
        if (body === undefined) throw new DomainError('FAILED_PRECONDITION', 'QGA_GENERIC_ERROR', `guest-file-open: failed to open file '${path}' (mode: 'r'): No such file or directory`);
        return Buffer.from(body);
      },
    };
    assert.deepEqual(await readBlockZones(qga, [1, 7]), [
      { physIndex: 1, present: true, online: true, state: 'online', zone: 'DMA32' },
      { physIndex: 7, present: false, online: false },
    ]);
    assert.deepEqual(await readBlockZones(qga, [32]), [{ physIndex: 32, present: true, online: false, state: 'offline', validZones: ['Normal', 'Movable'] }]);
    assert.equal(qga.calls.length, 0);
    assert.equal(reads.length, 5);

    const refused = {
      ...fakeAgent('1|present|online|Movable\n'),
      async readFile(): Promise<Buffer> {
        throw new DomainError('FAILED_PRECONDITION', 'QGA_GENERIC_ERROR', 'The command guest-file-open has been disabled for this instance');
      },
    };
    assert.deepEqual(await readBlockZones(refused, [1]), [{ physIndex: 1, present: true, online: true, state: 'online', zone: 'Movable' }]);
    assert.equal(refused.calls.length, 1);
  });

  it('fails loudly when the guest script fails or skips a block', async () => {
    await assert.rejects(readBlockZones(fakeAgent('', 127), [1]), (e: unknown) => e instanceof DomainError && e.reason === 'GUEST_EXEC_FAILED');
    await assert.rejects(readBlockZones(fakeAgent('1|absent||\n'), [1, 2]), /printed nothing for memory2; it printed "1\|absent\|\|"/);
    await assert.rejects(onlineBlocksInZone(fakeAgent(''), [42], 'online_movable'), (e: unknown) => {
      assert.ok(e instanceof DomainError && e.reason === 'GUEST_EXEC_FAILED');
      assert.match(e.message, /^online_movable memory blocks: the guest script printed nothing for memory42; it printed "\(nothing\)"$/);
      return true;
    });
    await assert.rejects(readBlockZones(fakeAgent(''), [-1]), (e: unknown) => e instanceof DomainError && e.code === 'INVALID_ARGUMENT');
  });
});

describe('guest-get-memory-blocks racing a block removal', () => {
  it('recognises the agent error for a block that vanished during the listing, and only that', () => {
    const vanished = fromQapiError('QGA', 'guest-get-memory-blocks', { class: 'GenericError', desc: 'open("/sys/devices/system/memory/memory39/"): No such file or directory' });
    assert.equal(isVanishedBlockError(vanished), true);
    const other = fromQapiError('QGA', 'guest-get-memory-blocks', { class: 'GenericError', desc: 'guest reported zero memory blocks!' });
    assert.equal(isVanishedBlockError(other), false);
    assert.equal(isVanishedBlockError(new Error('open("/sys/devices/system/memory/memory39/"): No such file or directory')), false);
  });
});

describe('QEMU pid probe', () => {
  it('tells a gone pid from a live process that is not QEMU', () => {
    const dead = spawnSync('true').pid!;
    assert.equal(probeQemuPid(dead).state, 'gone');
    assert.equal(probeQemuPid(process.pid).state, 'other-process');
  });

  it('puts the default pidfile next to the QMP socket', () => {
    assert.equal(defaultPidFile('/run/vm1/qmp.sock'), '/run/vm1/qmp.pid');
    assert.equal(defaultPidFile('/run/vm1/monitor'), '/run/vm1/monitor.pid');
  });
});
