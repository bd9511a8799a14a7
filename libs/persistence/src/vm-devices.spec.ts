import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { deviceRows, deviceWrite } from './vm-devices';

const GiB = 1024 ** 3;
const dimm = (id: string | undefined, addressBytes: number, sizeBytes = GiB) => ({ kind: 'dimm', id, addressBytes, sizeBytes, slot: 1, node: 1, memdev: '/objects/m', hotplugged: true, hotpluggable: true });

describe('vm devices: rows and writes', () => {
  it('keys a device by its QEMU id, else by kind and address, and never merges two devices', () => {
    const rows = deviceRows([dimm('a', 4 * GiB), dimm(undefined, 8 * GiB), { kind: 'other', type: 'x', id: undefined, data: { addr: 9 * GiB } }, dimm('a', 10 * GiB), { kind: 'other', type: 'y', id: undefined, data: {} }]);
    assert.deepEqual(
      rows.map((r) => [r.k, r.a]),
      [
        ['a', 4 * GiB],
        [`dimm@${8 * GiB}`, 8 * GiB],
        [`other@${9 * GiB}`, 9 * GiB],
        ['a#2', 10 * GiB],
        ['other@0', 0],
      ],
    );
  });

  it('writes the whole list without knowledge, and only what changed with it', () => {
    const whole = deviceWrite([dimm('a', 4 * GiB), dimm('b', 8 * GiB)]);
    assert.equal(whole.full, true);
    assert.deepEqual(whole.put.map((r) => r.k), ['a', 'b']);
    assert.deepEqual(whole.drop, []);

    // New objects with equal contents are not changes; a resized one and a new one are; a missing one goes.
    const next = deviceWrite([dimm('a', 4 * GiB), dimm('c', 12 * GiB), dimm('b', 8 * GiB, 2 * GiB)], whole.written);
    assert.equal(next.full, false);
    assert.deepEqual(next.put.map((r) => r.k), ['c', 'b']);
    assert.deepEqual(next.drop, []);
    const last = deviceWrite([dimm('c', 12 * GiB)], next.written);
    assert.deepEqual(last.put, []);
    assert.deepEqual(last.drop, ['a', 'b']);
    assert.deepEqual([...last.written.keys()], ['c']);
  });

  it('compares unknown kinds by their data', () => {
    const x = { kind: 'other', type: 'sgx-epc', id: 'e', data: { addr: 1, size: 2 } };
    const w = deviceWrite([x]);
    assert.deepEqual(deviceWrite([{ ...x, data: { addr: 1, size: 2 } }], w.written).put, []);
    assert.deepEqual(deviceWrite([{ ...x, data: { addr: 1, size: 3 } }], w.written).put.map((r) => r.k), ['e']);
  });
});
