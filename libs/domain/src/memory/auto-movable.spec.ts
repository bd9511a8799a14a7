import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { GiB, MiB } from '../units';
import { predictOnlineZones, type AutoMovableSettings, type OnlineGroup } from './auto-movable';

const BLOCK = 128 * MiB;
const blocks = (n: number) => n * BLOCK;
const AUTO_MOVABLE: AutoMovableSettings = { onlinePolicy: 'AUTO_MOVABLE', autoMovableRatioPercent: 301, autoMovableNumaAware: true };

const group = (o: Partial<OnlineGroup> & { id: string }): OnlineGroup => ({
  kind: 'STATIC',
  guestNodeId: 0,
  onlineType: 'AUTO',
  presentBytes: BLOCK,
  memoryGroupUnitBytes: BLOCK,
  ...o,
});

describe('movable : kernel-early ratio (auto_movable_ratio 301 %)', () => {
  // 100 blocks of boot memory: the limit is exactly 301 blocks of movable memory.
  const nodes = [{ nodeId: 0, bootMemoryBytes: blocks(100) }];
  const cases: { name: string; movableBlocks: number; exceeds: boolean; percent: number }[] = [
    { name: 'ratio exactly 301 %', movableBlocks: 301, exceeds: false, percent: 301 },
    { name: 'one block over (302 %)', movableBlocks: 302, exceeds: true, percent: 302 },
    { name: 'one block under (300 %)', movableBlocks: 300, exceeds: false, percent: 300 },
    { name: 'no movable memory', movableBlocks: 0, exceeds: false, percent: 0 },
  ];
  for (const c of cases) {
    it(`${c.name}: explicit ONLINE_MOVABLE is reported, exceeds=${c.exceeds}`, () => {
      const r = predictOnlineZones(AUTO_MOVABLE, nodes, [
        group({ id: 'g', onlineType: 'ONLINE_MOVABLE', presentBytes: blocks(c.movableBlocks) }),
      ]);
      assert.equal(r.global.exceeds, c.exceeds);
      assert.equal(r.global.ratioPercent, c.percent);
      assert.equal(r.global.limitBytes, blocks(301));
      assert.equal(r.groups[0]?.zone, c.movableBlocks > 0 ? 'MOVABLE' : 'NONE');
      assert.equal(r.warnings.some((w) => w.code === 'MOVABLE_RATIO_EXCEEDED'), c.exceeds);
    });
    it(`${c.name}: an AUTO DIMM under auto-movable goes ${c.exceeds ? 'KERNEL' : 'MOVABLE'}`, () => {
      if (c.movableBlocks === 0) return;
      const r = predictOnlineZones(AUTO_MOVABLE, nodes, [group({ id: 'g', presentBytes: blocks(c.movableBlocks) })]);
      assert.equal(r.groups[0]?.zone, c.exceeds ? 'KERNEL' : 'MOVABLE');
      assert.equal(r.global.exceeds, false, 'memory that went to a kernel zone is not movable');
    });
  }

  it('the warning names the numbers', () => {
    const r = predictOnlineZones(AUTO_MOVABLE, nodes, [group({ id: 'g', onlineType: 'ONLINE_MOVABLE', presentBytes: blocks(302) })]);
    const w = r.warnings.find((x) => x.code === 'MOVABLE_RATIO_EXCEEDED' && x.guestNodeId === undefined);
    assert.equal(
      w?.message,
      'the whole VM: movable memory 38656 MiB is 302 % of early kernel memory 12800 MiB, above auto_movable_ratio 301 % (limit 38528 MiB); kernel allocations (memmap, page tables) may run short',
    );
  });

  it('a refused AUTO DIMM names the failed check', () => {
    const r = predictOnlineZones(AUTO_MOVABLE, nodes, [group({ id: 'g', presentBytes: blocks(302) })]);
    assert.deepEqual(r.groups[0]?.refusal, {
      nodeId: null,
      movableBytes: 0,
      neededBytes: blocks(302),
      kernelEarlyBytes: blocks(100),
      limitBytes: blocks(301),
    });
    assert.deepEqual(
      r.warnings.map((w) => w.code),
      ['AUTO_MOVABLE_FALLS_BACK_TO_KERNEL'],
    );
  });
});

describe('numa-aware auto-movable', () => {
  const nodes = [
    { nodeId: 0, bootMemoryBytes: 4 * GiB },
    { nodeId: 1, bootMemoryBytes: 0 },
  ];
  it('a node without boot kernel memory never gets MOVABLE via plain online (numa-aware default)', () => {
    const r = predictOnlineZones(AUTO_MOVABLE, nodes, [group({ id: 'cxl', guestNodeId: 1, presentBytes: GiB })]);
    assert.equal(r.groups[0]?.zone, 'KERNEL');
    assert.equal(r.groups[0]?.refusal?.nodeId, 1);
    assert.equal(r.groups[0]?.refusal?.kernelEarlyBytes, 0);
  });
  it('with numa-awareness off only the global check applies', () => {
    const r = predictOnlineZones({ ...AUTO_MOVABLE, autoMovableNumaAware: false }, nodes, [
      group({ id: 'cxl', guestNodeId: 1, presentBytes: GiB }),
    ]);
    assert.equal(r.groups[0]?.zone, 'MOVABLE');
    assert.equal(r.warnings.length, 0, 'per-node ratios are not warned about when the kernel ignores them');
    assert.equal(r.nodes.find((n) => n.nodeId === 1)?.exceeds, true, 'but still reported');
  });
  it('explicit ONLINE_MOVABLE on a CPU-less node: node ratio reported with no early kernel memory', () => {
    const r = predictOnlineZones(AUTO_MOVABLE, nodes, [group({ id: 'cxl', guestNodeId: 1, onlineType: 'ONLINE_MOVABLE', presentBytes: GiB })]);
    const n1 = r.nodes.find((n) => n.nodeId === 1);
    assert.deepEqual(n1, { nodeId: 1, kernelEarlyBytes: 0, movableBytes: GiB, limitBytes: 0, ratioPercent: null, exceeds: true });
    assert.equal(r.global.exceeds, false);
    assert.deepEqual(
      r.warnings.map((w) => [w.code, w.guestNodeId]),
      [['MOVABLE_RATIO_EXCEEDED', 1]],
    );
  });
});

describe('online types and policies', () => {
  const nodes = [{ nodeId: 0, bootMemoryBytes: 4 * GiB }];
  it('ONLINE_KERNEL is kernel whatever the policy', () => {
    const r = predictOnlineZones(AUTO_MOVABLE, nodes, [group({ id: 'k', onlineType: 'ONLINE_KERNEL' })]);
    assert.equal(r.groups[0]?.zone, 'KERNEL');
    assert.equal(r.groups[0]?.decidedBy, 'EXPLICIT');
    assert.equal(r.warnings.length, 0);
  });
  it('AUTO under contig-zones lands in a kernel zone, with a warning', () => {
    const r = predictOnlineZones({ ...AUTO_MOVABLE, onlinePolicy: 'CONTIG_ZONES' }, nodes, [group({ id: 'a' })]);
    assert.equal(r.groups[0]?.zone, 'KERNEL');
    assert.equal(r.groups[0]?.decidedBy, 'CONTIG_ZONES');
    assert.deepEqual(
      r.warnings.map((w) => w.code),
      ['AUTO_ONLINES_TO_KERNEL_ZONE'],
    );
  });
  it('auto_movable_ratio 0 always picks a kernel zone', () => {
    const r = predictOnlineZones({ ...AUTO_MOVABLE, autoMovableRatioPercent: 0 }, nodes, [group({ id: 'a' })]);
    assert.equal(r.groups[0]?.zone, 'KERNEL');
    assert.match(r.warnings[0]?.message ?? '', /auto_movable_ratio is 0/);
  });
  it('groups are onlined in order: the second DIMM sees the first one', () => {
    // 4 GiB boot = 32 blocks → limit floor(301·32/100) blocks worth of pages = 96.32 blocks.
    const r = predictOnlineZones(AUTO_MOVABLE, nodes, [
      group({ id: 'a', presentBytes: blocks(90) }),
      group({ id: 'b', presentBytes: blocks(6) }),
      group({ id: 'c', presentBytes: blocks(1) }),
    ]);
    assert.deepEqual(r.groups.map((g) => g.zone), ['MOVABLE', 'MOVABLE', 'KERNEL']);
  });
});

describe('dynamic groups (virtio-mem)', () => {
  const nodes = [{ nodeId: 0, bootMemoryBytes: blocks(8) }];
  // limit with no kernel memory in the group: floor(301 · 262144 / 100) = 789053 pages = 24.08 blocks.
  it('each memory block is decided on its own; the group’s own kernel blocks raise its allowance', () => {
    const r = predictOnlineZones(AUTO_MOVABLE, nodes, [
      group({ id: 'v', kind: 'DYNAMIC', presentBytes: blocks(30), memoryGroupUnitBytes: BLOCK }),
    ]);
    const v = r.groups[0];
    // Blocks 1–24 movable; 25 kernel (KE + 1 block → limit 887685 pages = 27.09 blocks);
    // 26–27 movable; 28 kernel (limit 30.1 blocks); 29–30 movable → 28 movable, 2 kernel.
    assert.equal(v?.zone, 'MIXED');
    assert.equal(v?.movableBytes, blocks(28));
    assert.equal(v?.kernelBytes, blocks(2));
    assert.equal(v?.refusal?.movableBytes, blocks(24));
  });

  it('big blocks (BBM) are decided whole', () => {
    const r = predictOnlineZones(AUTO_MOVABLE, nodes, [
      group({ id: 'v', kind: 'DYNAMIC', presentBytes: blocks(32), memoryGroupUnitBytes: blocks(8) }),
    ]);
    // 8-block units: 8, 16, 24 fit (≤ 24.08); the 4th unit goes kernel.
    assert.equal(r.groups[0]?.movableBytes, blocks(24));
    assert.equal(r.groups[0]?.kernelBytes, blocks(8));
  });

  it('another dynamic group counts by the early kernel memory it needs, not by its movable memory', () => {
    // v: 28 movable + 2 kernel blocks. For a later DIMM it is replaced by
    // floor(28 blocks·100/301) − 2 blocks = 304818 − 65536 = 239282 pages of required
    // kernel memory: KE = 262144 − 239282 = 22862 pages → limit 68814 pages = 2.1 blocks.
    // Counted as plain movable memory (28 blocks > 24.08) no DIMM would be movable.
    const v = group({ id: 'v', kind: 'DYNAMIC', presentBytes: blocks(30), memoryGroupUnitBytes: BLOCK });
    const two = predictOnlineZones(AUTO_MOVABLE, nodes, [v, group({ id: 'd', presentBytes: blocks(2) })]);
    assert.equal(two.groups[1]?.zone, 'MOVABLE');
    const three = predictOnlineZones(AUTO_MOVABLE, nodes, [v, group({ id: 'd', presentBytes: blocks(3) })]);
    assert.equal(three.groups[1]?.zone, 'KERNEL');
    assert.deepEqual(three.groups[1]?.refusal, {
      nodeId: null,
      movableBytes: 0,
      neededBytes: blocks(3),
      kernelEarlyBytes: 22862 * 4096,
      limitBytes: 68814 * 4096,
    });
  });

  it('nothing plugged: zone NONE, no warnings', () => {
    const r = predictOnlineZones(AUTO_MOVABLE, nodes, [group({ id: 'v', kind: 'DYNAMIC', presentBytes: 0 })]);
    assert.equal(r.groups[0]?.zone, 'NONE');
    assert.equal(r.warnings.length, 0);
  });
});
