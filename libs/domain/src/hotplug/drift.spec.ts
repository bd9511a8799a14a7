import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { MiB } from '../units';
import { driftRecord, groupDrift, memoryDrift, sameDrift, type DriftGroup, type DriftObservation, type MemoryDriftCondition } from './drift';
import type { ObservedMemoryDevice } from './reconcile';

const BS = 128 * MiB;
const DIMM_ADDR = 4096 * MiB; // blocks 32, 33
const VMEM_ADDR = 5120 * MiB; // blocks 40.. (1 GiB region)

const dimmA: DriftGroup = { name: 'a', kind: 'STATIC', desiredState: 'PRESENT', state: 'PLUGGED', sizeBytes: 256 * MiB, requestedBytes: 0, onlineType: 'ONLINE_MOVABLE' };
const vmemB: DriftGroup = { name: 'b', kind: 'DYNAMIC', desiredState: 'PRESENT', state: 'PLUGGED', sizeBytes: 0, requestedBytes: 256 * MiB, onlineType: 'ONLINE_MOVABLE' };

const dimm = (over: Partial<ObservedMemoryDevice> = {}): ObservedMemoryDevice => ({
  id: 'dimm-a',
  model: 'pc-dimm',
  backendId: 'memgrp-a',
  addrBytes: DIMM_ADDR,
  sizeBytes: 256 * MiB,
  node: 1,
  ...over,
});
const vmem = (sizeBytes: number, requestedBytes: number): ObservedMemoryDevice => ({
  id: 'vmem-b',
  model: 'virtio-mem-pci',
  backendId: 'memgrp-b',
  addrBytes: VMEM_ADDR,
  sizeBytes,
  requestedBytes,
  maxSizeBytes: 1024 * MiB,
  node: 1,
});
type Block = [index: number, online: boolean, zone?: string];
const observed = (devices: ObservedMemoryDevice[], blocks: Block[], extra: Partial<DriftObservation> = {}): DriftObservation => ({
  devices,
  backendIds: ['ram-node0', ...devices.map((d) => d.backendId)],
  guestBlockSizeBytes: BS,
  blocks: [[0, true, 'Normal'] as Block, ...blocks].map(([index, online, zone]) => ({ index, online, ...(zone ? { zone } : {}) })),
  ...extra,
});
const movable = (...indexes: number[]): Block[] => indexes.map((i) => [i, true, 'Movable']);

/** reason:group:qemuId expected→observed, compact enough to read a table of cases. */
function brief(c: MemoryDriftCondition): string {
  const nums =
    c.expectedBytes !== undefined
      ? ` ${c.expectedBytes / MiB}→${(c.observedBytes ?? 0) / MiB} MiB`
      : c.expectedBlocks !== undefined
        ? ` ${c.expectedBlocks}→${c.observedBlocks} blocks`
        : '';
  const zones = c.expectedZone ? ` ${c.expectedZone}→${c.observedZone}` : '';
  return `${c.reason}:${c.memoryGroup ?? '-'}:${c.qemuId ?? '-'}${nums}${zones}`;
}

describe('memory drift of a running VM', () => {
  const cases: [string, DriftGroup[], DriftObservation, string[]][] = [
    ['in sync: DIMM whole and movable, virtio-mem at its request', [dimmA, vmemB], observed([dimm(), vmem(256 * MiB, 256 * MiB)], movable(32, 33, 40, 41)), []],
    [
      'a DIMM removed behind our back (device_del): missing; its backend left over is not reported twice',
      [dimmA],
      { ...observed([], []), backendIds: ['ram-node0', 'memgrp-a'] },
      ['DEVICE_MISSING:a:dimm-a 256→0 MiB'],
    ],
    ['a block of the DIMM offlined in the guest', [dimmA], observed([dimm()], [[32, true, 'Movable'], [33, false]]), ['BLOCKS_NOT_ONLINE:a:dimm-a 2→1 blocks']],
    ['the guest never added the DIMM\'s blocks', [dimmA], observed([dimm()], []), ['BLOCKS_NOT_ONLINE:a:dimm-a 2→0 blocks']],
    [
      'a block re-onlined as online_kernel',
      [dimmA],
      observed([dimm()], [[32, true, 'Movable'], [33, true, 'Normal']]),
      ['WRONG_ZONE:a:dimm-a 2→1 blocks Movable→Normal'],
    ],
    ['an AUTO group: the guest\'s policy picks the zone, nothing to compare', [{ ...dimmA, onlineType: 'AUTO' }], observed([dimm()], [[32, true, 'Normal'], [33, true, 'Movable']]), []],
    ['zones not read (offline check only): no zone verdict', [dimmA], observed([dimm()], [[32, true], [33, true]]), []],
    [
      'virtio-mem requested-size changed by qom-set and the guest followed it',
      [vmemB],
      observed([vmem(128 * MiB, 128 * MiB)], movable(40)),
      ['REQUESTED_SIZE_MISMATCH:b:vmem-b 256→128 MiB', 'PLUGGED_SIZE_MISMATCH:b:vmem-b 256→128 MiB'],
    ],
    [
      'virtio-mem at the right request but the guest plugged less',
      [vmemB],
      observed([vmem(128 * MiB, 256 * MiB)], movable(40)),
      ['PLUGGED_SIZE_MISMATCH:b:vmem-b 256→128 MiB'],
    ],
    [
      'virtio-mem grown behind our back: the new blocks stay offline (memhp_default_state=offline)',
      [vmemB],
      observed([vmem(512 * MiB, 512 * MiB)], [...movable(40, 41), [42, false], [43, false]]),
      ['REQUESTED_SIZE_MISMATCH:b:vmem-b 256→512 MiB', 'PLUGGED_SIZE_MISMATCH:b:vmem-b 256→512 MiB', 'BLOCKS_NOT_ONLINE:b:vmem-b 4→2 blocks'],
    ],
    ['virtio-mem: an offline block beyond what is plugged is on its way out, not drift', [vmemB], observed([vmem(256 * MiB, 256 * MiB)], [...movable(40, 41), [42, false]]), []],
    ['sub-block plugged size: ⌈plugged / block⌉ blocks must be online', [{ ...vmemB, requestedBytes: 130 * MiB }], observed([vmem(130 * MiB, 130 * MiB)], [...movable(40), [41, false]]), ['BLOCKS_NOT_ONLINE:b:vmem-b 2→1 blocks']],
    [
      'a DIMM nobody asked for (device_add behind our back)',
      [dimmA],
      observed([dimm(), dimm({ id: 'rogue', backendId: 'rogue-mem', addrBytes: DIMM_ADDR + 256 * MiB, sizeBytes: 128 * MiB })], movable(32, 33)),
      ['UNEXPECTED_DEVICE:-:rogue 0→128 MiB'],
    ],
    [
      'the device of a group whose plug failed (capacity released) is still there',
      [{ ...dimmA, state: 'FAILED' }],
      observed([dimm()], movable(32, 33)),
      ['UNEXPECTED_DEVICE:a:dimm-a 0→256 MiB'],
    ],
    ['a group PRESENT but never plugged on the running VM (a start that failed halfway)', [{ ...dimmA, state: 'PENDING' }], observed([], []), ['DEVICE_MISSING:a:dimm-a 256→0 MiB']],
    [
      'leftover group backends: one of a failed group, one of no group; other backends are not ours',
      [{ ...dimmA, state: 'FAILED' }],
      { ...observed([], []), backendIds: ['ram-node0', 'memgrp-a', 'memgrp-old', 'someone-elses'] },
      ['UNEXPECTED_BACKEND:a:memgrp-a', 'UNEXPECTED_BACKEND:-:memgrp-old'],
    ],
    [
      'memory devices the engine never plugs (another type, or no id)',
      [],
      observed([], [], { unmodelledDevices: [{ type: 'nvdimm', id: 'nv0' }, { type: 'dimm' }] }),
      ['UNEXPECTED_DEVICE:-:nv0', 'UNEXPECTED_DEVICE:-:-'],
    ],
    ['a DIMM of the wrong size under the group\'s id', [dimmA], observed([dimm({ sizeBytes: 128 * MiB })], movable(32)), ['PLUGGED_SIZE_MISMATCH:a:dimm-a 256→128 MiB']],
    [
      'a virtio-mem device under a STATIC group\'s id is not that group\'s device',
      [dimmA],
      observed([{ ...vmem(128 * MiB, 128 * MiB), id: 'dimm-a', backendId: 'memgrp-a' }], movable(40)),
      ['DEVICE_MISSING:a:dimm-a 256→0 MiB', 'UNEXPECTED_DEVICE:a:dimm-a 0→128 MiB'],
    ],
    [
      'groups in name order, then devices, then backends',
      [vmemB, dimmA],
      { ...observed([dimm({ id: 'zz', backendId: 'memgrp-zz' })], []), backendIds: ['memgrp-zz', 'memgrp-b', 'memgrp-x'] },
      ['DEVICE_MISSING:a:dimm-a 256→0 MiB', 'DEVICE_MISSING:b:vmem-b 256→0 MiB', 'UNEXPECTED_DEVICE:-:zz 0→256 MiB', 'UNEXPECTED_BACKEND:-:memgrp-x'],
    ],
  ];
  for (const [what, groups, obs, want] of cases) it(what, () => assert.deepEqual(memoryDrift(groups, obs).map(brief), want));

  it('says what differs in words, with the group and device', () => {
    const [c] = memoryDrift([dimmA], observed([dimm()], [[32, true, 'Movable'], [33, false]]));
    assert.equal(c!.message, 'the guest has 1 of the 2 memory blocks of dimm-a online');
    const [w] = memoryDrift([dimmA], observed([dimm()], [[32, true, 'Normal'], [33, true, 'Movable']]));
    assert.match(w!.message, /block\(s\) 32 of dimm-a are online in Normal, but group a asks for ONLINE_MOVABLE \(Movable\)/);
  });
});

describe('drift records', () => {
  const at = new Date('2026-11-22T00:00:00Z');
  const conditions = memoryDrift([dimmA, vmemB], observed([], []));

  it('is IN_SYNC without conditions and DRIFTED with any', () => {
    assert.equal(driftRecord([], at).state, 'IN_SYNC');
    assert.equal(driftRecord(conditions, at).state, 'DRIFTED');
  });

  it('gives each group the conditions that name it, at the VM\'s check time', () => {
    const vm = driftRecord(conditions, at);
    assert.deepEqual(groupDrift(vm, 'a'), { state: 'DRIFTED', conditions: [conditions[0]], checkTime: at });
    assert.deepEqual(groupDrift(vm, 'c'), { state: 'IN_SYNC', conditions: [], checkTime: at });
    assert.equal(groupDrift(undefined, 'a'), undefined, 'never checked: no verdict');
    assert.equal(groupDrift(vm, 'a', new Date(at.getTime() + 1)), undefined, 'created after the check: no verdict yet');
    assert.equal(groupDrift(vm, 'a', at)?.state, 'DRIFTED');
  });

  it('tells a changed finding from the same one seen again', () => {
    assert.ok(sameDrift(conditions, memoryDrift([dimmA, vmemB], observed([], []))));
    assert.ok(!sameDrift(conditions, conditions.slice(1)));
    assert.ok(!sameDrift(conditions, [{ ...conditions[0]!, observedBytes: 1 }, conditions[1]!]));
  });
});
