import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { GiB, MiB } from '../units';
import { compileTopology } from './compile';
import { recommendKernelCmdline } from './kernel-cmdline';
import { dynamicGroup, oneCxlInput, perfOf, staticGroup } from './spec-helpers';
import type { MemoryGroupInput } from './types';

function withGroups(groups: MemoryGroupInput[], memmapOnMemory = false) {
  const input = oneCxlInput(perfOf(100, 100, 51200, 51200), perfOf(250, 250, 20480, 20480));
  input.groups = groups;
  input.vm.memmapOnMemory = memmapOnMemory;
  input.vm.guestNodes = [{ guestNodeId: 0, vcpus: 2, memoryBytes: 1 * GiB }];
  return compileTopology(input);
}

describe('guest kernel command line', () => {
  it('ONLINE_MOVABLE groups: the kernel onlines them into ZONE_MOVABLE itself', () => {
    const r = recommendKernelCmdline(withGroups([staticGroup('a', 'pool-a', 256 * MiB)]));
    assert.deepEqual(r.args, ['memhp_default_state=online_movable']);
    assert.match(r.explained[0]?.why ?? '', /ZONE_MOVABLE/);
    assert.deepEqual(r.warnings, []);
  });

  it('ONLINE_KERNEL groups', () => {
    const r = recommendKernelCmdline(withGroups([staticGroup('a', 'pool-a', 256 * MiB, { onlineType: 'ONLINE_KERNEL' })]));
    assert.deepEqual(r.args, ['memhp_default_state=online_kernel']);
  });

  it('AUTO groups: auto-movable with the ratio stated, numa-awareness off for a CPU-less node without kernel memory', () => {
    const r = recommendKernelCmdline(withGroups([dynamicGroup('v', 'pool-a', 1 * GiB, { onlineType: 'AUTO' })]));
    assert.deepEqual(r.args, [
      'memhp_default_state=online',
      'memory_hotplug.online_policy=auto-movable',
      'memory_hotplug.auto_movable_ratio=301',
      'memory_hotplug.auto_movable_numa_aware=N',
    ]);
    assert.deepEqual(r.warnings, []);
  });

  it('AUTO beyond 301 % of boot memory is reported', () => {
    const r = recommendKernelCmdline(withGroups([dynamicGroup('v', 'pool-a', 4 * GiB, { onlineType: 'AUTO' })]));
    assert.ok(r.warnings.some((w) => /more than 301 %/.test(w)));
  });

  it('mixed online types: the type with the most bytes wins; the others are reported', () => {
    const r = recommendKernelCmdline(
      withGroups([staticGroup('a', 'pool-a', 512 * MiB), staticGroup('b', 'pool-a', 256 * MiB, { onlineType: 'ONLINE_KERNEL' })]),
    );
    assert.deepEqual(r.args, ['memhp_default_state=online_movable']);
    assert.equal(r.warnings.length, 1);
    assert.match(r.warnings[0] ?? '', /group b wants ONLINE_KERNEL/);
  });

  it('memmap_on_memory when the VM asks for it, with the vmemmap size of one block', () => {
    const r = recommendKernelCmdline(withGroups([staticGroup('a', 'pool-a', 256 * MiB)], true));
    assert.ok(r.args.includes('memory_hotplug.memmap_on_memory=Y'));
    assert.match(r.explained.find((e) => e.arg.startsWith('memory_hotplug.memmap'))?.why ?? '', /2 MiB, 1\/64/);
  });
});

describe('memmap_on_memory on linux-6.1', () => {
  it('reports DIMMs larger than one block, which 6.1 will not use it for', () => {
    const input = oneCxlInput(perfOf(100, 100, 51200, 51200), perfOf(250, 250, 20480, 20480), 'linux-6.1');
    input.vm.memmapOnMemory = true;
    input.groups = [staticGroup('one', 'pool-a', 128 * MiB), staticGroup('two', 'pool-a', 256 * MiB)];
    const r = recommendKernelCmdline(compileTopology(input));
    assert.deepEqual(r.warnings.length, 1);
    assert.match(r.warnings[0] ?? '', /exactly one memory block; two will/);
  });
});
