import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Database, OPERATION_CHANNEL, PgNotifications } from '#persistence';
import { freshDatabase } from '#testing/services';
import { SYSTEM_PRINCIPAL, type CallContext } from './context';
import { HostService } from './host.service';
import { Mutations } from './mutations';
import { OperationService } from './operation.service';
import { VmService } from './vm.service';
import { WatchService } from './watch.service';

const GiB = 1024 ** 3;
const ctx: CallContext = { principal: SYSTEM_PRINCIPAL, transport: 'system', correlationId: 'watch-int-spec' };

/**
 * A watcher hears of an operation's state change from Postgres (LISTEN/NOTIFY on
 * memplane_operation, sent after the change commits) instead of at its next read: here the read interval is a minute, so
 * only the notification can deliver the change while the test waits.
 */
describe('watching an operation with Postgres notifications', () => {
  let db: Database;
  let drop: () => Promise<void>;
  let notifications: PgNotifications;
  let vms: VmService;
  let operations: OperationService;
  let watch: WatchService;

  before(async () => {
    const fresh = await freshDatabase();
    drop = fresh.drop;
    db = new Database({ url: fresh.url, poolSize: 4 });
    notifications = new PgNotifications(fresh.url);
    const mutations = new Mutations(db);
    vms = new VmService(mutations);
    operations = new OperationService(mutations);
    watch = new WatchService(operations, vms, {
      intervalMs: 60_000,
      operationChanges: (listener, onListening) => notifications.subscribe(OPERATION_CHANNEL, listener, onListening),
    });
    await new HostService(mutations).create(ctx, {
      name: 'hv-w',
      description: '',
      labels: {},
      state: 'READY',
      nodes: [{ nodeId: 0, cpus: [0, 1], memoryBytes: 8 * GiB, kind: 'DRAM' }],
      performance: [{ cpuNodeId: 0, memoryNodeId: 0, readLatencyNs: 100, writeLatencyNs: 100, readBandwidthMBps: 51200, writeBandwidthMBps: 51200 }],
      distances: [],
    });
    await vms.create(ctx, {
      name: 'vm-w',
      description: '',
      labels: {},
      host: 'hv-w',
      kernelProfile: 'linux-6.12',
      guestMemory: {},
      guestNodes: [{ guestNodeId: 0, vcpus: 1, bootMemoryBytes: 1 * GiB }],
      memorySlots: 2,
      maxMemoryBytes: 4 * GiB,
      sparePciePorts: 0,
    });
  });
  after(async () => {
    await notifications?.close();
    await db?.close();
    await drop?.();
  });

  it('delivers PENDING at once and CANCELLED as soon as it commits, not at the next read a minute later', async () => {
    const op = await vms.start(ctx, 'vm-w');
    const abort = new AbortController();
    const seen: string[] = [];
    const watching = (async () => {
      for await (const o of watch.watchOperation(ctx, op.name, abort.signal)) seen.push(o.state);
    })();
    const deadline = Date.now() + 10_000;
    while (seen.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    assert.deepEqual(seen, ['PENDING']);

    await operations.cancel(ctx, op.name);
    const ended = await Promise.race([watching.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 10_000).unref())]);
    abort.abort();
    assert.equal(ended, true, `the watch did not end after the cancel; it saw ${seen.join(', ')}`);
    assert.deepEqual(seen, ['PENDING', 'CANCELLED']);
  });
});
