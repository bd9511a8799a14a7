import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ConfigError, loadConfig } from './config';

describe('worker settings in the typed boot configuration', () => {
  it('has the documented defaults', () => {
    assert.deepEqual(loadConfig({}).worker, {
      mode: 'embedded',
      queuePrefix: 'bull',
      concurrency: 16,
      qemuAccel: 'tcg,thread=single',
      qemuCpu: 'max,-cx16',
      hostNodeBinding: 'auto',
      convergeTimeoutMs: 60_000,
      deviceDelTimeoutMs: 20_000,
      shrinkStallMs: 10_000,
      bootTimeoutMs: 120_000,
      driftCheckIntervalMs: 30_000,
    });
  });

  it('reads every variable under its existing name', () => {
    const w = loadConfig({
      MEMPLANE_WORKER: 'off',
      MEMPLANE_QUEUE_PREFIX: 'mp-prod',
      MEMPLANE_WORKER_CONCURRENCY: '16',
      MEMPLANE_QEMU_ACCEL: 'kvm',
      MEMPLANE_HOST_NODE_BINDING: 'bind',
      MEMPLANE_CONVERGE_TIMEOUT_MS: '90000',
      MEMPLANE_DEVICE_DEL_TIMEOUT_MS: '5000',
      MEMPLANE_BOOT_TIMEOUT_MS: '30000',
      MEMPLANE_DRIFT_CHECK_INTERVAL_MS: '0',
    }).worker;
    assert.deepEqual(w, {
      mode: 'off',
      queuePrefix: 'mp-prod',
      concurrency: 16,
      qemuAccel: 'kvm',
      qemuCpu: 'host',
      hostNodeBinding: 'bind',
      convergeTimeoutMs: 90_000,
      deviceDelTimeoutMs: 5_000,
      shrinkStallMs: 10_000,
      bootTimeoutMs: 30_000,
      driftCheckIntervalMs: 0,
    });
  });

  it('takes an explicit CPU model over the one the accelerator implies', () => {
    assert.equal(loadConfig({ MEMPLANE_QEMU_ACCEL: 'kvm', MEMPLANE_QEMU_CPU: 'EPYC-v4,+avx2' }).worker.qemuCpu, 'EPYC-v4,+avx2');
    assert.equal(loadConfig({ MEMPLANE_QEMU_ACCEL: 'tcg' }).worker.qemuCpu, 'max,-cx16');
  });

  const refused: [string, Record<string, string>, RegExp][] = [
    ['an unknown worker mode', { MEMPLANE_WORKER: 'maybe' }, /MEMPLANE_WORKER: .*"embedded"\|"off"/],
    ['a queue prefix with a colon', { MEMPLANE_QUEUE_PREFIX: 'a:b' }, /MEMPLANE_QUEUE_PREFIX: must be 1 to 64 letters/],
    ['no concurrency', { MEMPLANE_WORKER_CONCURRENCY: '0' }, /MEMPLANE_WORKER_CONCURRENCY: .*>=1/],
    ['a fractional concurrency', { MEMPLANE_WORKER_CONCURRENCY: '2.5' }, /MEMPLANE_WORKER_CONCURRENCY: .*expected int/],
    ['an accelerator with shell in it', { MEMPLANE_QEMU_ACCEL: 'kvm; reboot' }, /MEMPLANE_QEMU_ACCEL: must be a QEMU -accel value/],
    ['an empty CPU model', { MEMPLANE_QEMU_CPU: '' }, /MEMPLANE_QEMU_CPU: must be a QEMU -cpu value/],
    ['an unknown node binding', { MEMPLANE_HOST_NODE_BINDING: 'yes' }, /MEMPLANE_HOST_NODE_BINDING: .*"auto"\|"bind"\|"none"/],
    ['a timeout that is not a number', { MEMPLANE_CONVERGE_TIMEOUT_MS: 'soon' }, /MEMPLANE_CONVERGE_TIMEOUT_MS: .*number/],
    ['a device_del timeout below a second', { MEMPLANE_DEVICE_DEL_TIMEOUT_MS: '10' }, /MEMPLANE_DEVICE_DEL_TIMEOUT_MS: .*>=1000/],
    ['a boot timeout above an hour', { MEMPLANE_BOOT_TIMEOUT_MS: '3600001' }, /MEMPLANE_BOOT_TIMEOUT_MS: .*<=3600000/],
    ['a drift interval below a second but not off', { MEMPLANE_DRIFT_CHECK_INTERVAL_MS: '250' }, /MEMPLANE_DRIFT_CHECK_INTERVAL_MS: must be 0 \(no drift checks\) or at least 1000/],
  ];
  for (const [what, env, message] of refused) {
    it(`refuses ${what}, naming the variable and the rule`, () => {
      assert.throws(() => loadConfig(env), (e: unknown) => e instanceof ConfigError && message.test(e.message));
    });
  }
});
