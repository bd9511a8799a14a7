import { bootGuest, type BootGuestOptions } from '#testing/guest';

/**
 * Plays a worker that launches a VM and dies mid-operation, for crash-safety tests:
 *
 *   node dist/libs/hypervisor/src/testing/detached-guest.js '<BootGuestOptions as JSON>' [backendId]
 *
 * Boots a guest with a detached QEMU, optionally does the first step of a hotplug
 * (`object-add memory-backend-ram <backendId>`, 256 MiB) without the second, prints one JSON
 * line `{ vmId, pid, paths, dir, bootMs }` on stdout and waits, holding its QMP and guest
 * agent connections, until it is killed.
 */
async function main(): Promise<void> {
  const [specJson, backendId] = process.argv.slice(2);
  if (!specJson) throw new Error('usage: detached-guest.js <BootGuestOptions JSON> [backendId]');
  const spec = JSON.parse(specJson) as BootGuestOptions;
  const g = await bootGuest({ ...spec, detached: true });
  if (backendId) await g.driver.objectAdd(g.vmId, 'memory-backend-ram', backendId, { size: 256 * 1024 * 1024 });
  const status = g.driver.status(g.vmId);
  process.stdout.write(JSON.stringify({ vmId: g.vmId, pid: status.pid, paths: status.paths, dir: g.dir, bootMs: g.bootMs }) + '\n');
  setInterval(() => undefined, 1 << 30);
}

main().catch((err: unknown) => {
  process.stderr.write(`detached-guest: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
