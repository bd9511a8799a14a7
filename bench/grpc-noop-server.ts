/**
 * The ceiling of bench:ledger's load on this machine (not a test, not the service):
 * a bare grpc-js server with the generated MemoryGroupService definition, so requests and
 * responses are encoded and decoded exactly as with the API, whose CreateMemoryGroup and
 * DeleteMemoryGroup answer at once with a group shaped like the API's answer. No
 * authentication, no rules, no database. bench:ledger drives it with the same clients as the
 * API: what it reaches is the most any service behind that interface could reach here, with
 * the clients on the same two cores.
 *
 *   node dist/bench/grpc-noop-server.js      prints "port N" once listening; SIGTERM stops it
 */
import { randomUUID } from 'node:crypto';
import { Server, ServerCredentials, type sendUnaryData, type ServerUnaryCall } from '@grpc/grpc-js';
import {
  GroupDesiredState,
  MemoryGroupState,
  GroupOnlineType,
  GuestUnitMode,
  MemmapPlacement,
  MemoryGroupKind,
  MemoryGroupServiceService,
  type CreateMemoryGroupRequest,
  type DeleteMemoryGroupRequest,
  type MemoryGroup,
} from '#contracts/generated/memplane/v1/memory_group';

const MiB = 1024n * 1024n;

function answer(vm: string, name: string, pool: string, kind: MemoryGroupKind, sizeBytes: bigint, maxSizeBytes: bigint, requestedBytes: bigint, deleted: boolean): MemoryGroup {
  const now = new Date();
  const dynamic = kind === MemoryGroupKind.MEMORY_GROUP_KIND_DYNAMIC;
  const held = deleted ? 0n : dynamic ? requestedBytes : sizeBytes;
  return {
    name,
    uid: randomUUID(),
    vm,
    pool,
    kind,
    sizeBytes,
    maxSizeBytes,
    blockSizeBytes: dynamic ? 2n * MiB : 0n,
    requestedBytes,
    onlineType: GroupOnlineType.GROUP_ONLINE_TYPE_ONLINE_MOVABLE,
    effectiveGuestNodeId: 1,
    desiredState: deleted ? GroupDesiredState.GROUP_DESIRED_STATE_ABSENT : GroupDesiredState.GROUP_DESIRED_STATE_PRESENT,
    heldBytes: held,
    hotplugged: false,
    guestUnit: dynamic
      ? { mode: GuestUnitMode.GUEST_UNIT_MODE_SBM, unitBytes: 2n * MiB, memoryGroupUnitBytes: 128n * MiB }
      : { mode: GuestUnitMode.GUEST_UNIT_MODE_DIMM, unitBytes: held, memoryGroupUnitBytes: 128n * MiB },
    usableBytes: held,
    memmapPlacement: MemmapPlacement.MEMMAP_PLACEMENT_NOT_REQUESTED_BY_DRIVER,
    vmemmapBytes: 0n,
    state: MemoryGroupState.MEMORY_GROUP_STATE_PENDING,
    pluggedBytes: 0n,
    onlineBlocks: 0,
    onlineZones: {},
    operation: '',
    etag: 'W/"1"',
    createTime: now,
    updateTime: now,
  };
}

const server = new Server();
server.addService(MemoryGroupServiceService, {
  createMemoryGroup: (call: ServerUnaryCall<CreateMemoryGroupRequest, MemoryGroup>, done: sendUnaryData<MemoryGroup>) => {
    const g = call.request.memoryGroup;
    done(null, answer(call.request.vm, g?.name ?? '', g?.pool ?? '', g?.kind ?? MemoryGroupKind.MEMORY_GROUP_KIND_STATIC, g?.sizeBytes ?? 0n, g?.maxSizeBytes ?? 0n, g?.requestedBytes ?? 0n, false));
  },
  deleteMemoryGroup: (call: ServerUnaryCall<DeleteMemoryGroupRequest, MemoryGroup>, done: sendUnaryData<MemoryGroup>) => {
    done(null, answer(call.request.vm, call.request.name, 'pool', MemoryGroupKind.MEMORY_GROUP_KIND_STATIC, 256n * MiB, 0n, 0n, true));
  },
  getMemoryGroup: (_call: unknown, done: sendUnaryData<MemoryGroup>) => done({ code: 12, details: 'not served by the ceiling server' }),
  listMemoryGroups: (_call: unknown, done: sendUnaryData<never>) => done({ code: 12, details: 'not served by the ceiling server' }),
  resizeMemoryGroup: (_call: unknown, done: sendUnaryData<MemoryGroup>) => done({ code: 12, details: 'not served by the ceiling server' }),
});
server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (err, port) => {
  if (err) {
    console.error(`grpc-noop-server: ${err.message}`);
    process.exit(1);
  }
  console.log(`port ${port}`);
});
process.once('SIGTERM', () => server.tryShutdown(() => process.exit(0)));
