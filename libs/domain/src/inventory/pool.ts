import { DomainError, Violations } from '../errors';
import { formatBytes, isPowerOfTwo, MiB, GiB } from '../units';
import type { HostNode } from './host';
import { checkDescription, checkLabels, checkName } from './names';

export type PoolMemoryType = 'VOLATILE' | 'PERSISTENT';
export type PoolState = 'ACTIVE' | 'DRAINING' | 'DISABLED';
export const POOL_MEMORY_TYPES: readonly PoolMemoryType[] = ['VOLATILE', 'PERSISTENT'];
export const POOL_STATES: readonly PoolState[] = ['ACTIVE', 'DRAINING', 'DISABLED'];

export const DEFAULT_GRANULE_BYTES = 128 * MiB;
/** Below 2 MiB (the x86_64 pageblock and the smallest pc-dimm/virtio-mem step) a granule buys nothing. */
export const MIN_GRANULE_BYTES = 2 * MiB;
export const MAX_GRANULE_BYTES = 64 * GiB;

export interface PoolSpec {
  name: string;
  description: string;
  labels: Record<string, string>;
  /** Name of the host. */
  host: string;
  hostNodeId: number;
  daxDevicePath?: string;
  capacityBytes: number;
  granuleBytes: number;
  memoryType: PoolMemoryType;
  state: PoolState;
  /**
   * false: device memory the CPU cannot address (e.g. CXL type-2 device-private
   * memory), never guest RAM (memory/pool-eligibility.ts). Absent on input = true.
   */
  cpuAddressable?: boolean;
}

export interface Pool extends PoolSpec {
  uid: string;
  allocatedBytes: number;
  freeBytes: number;
  etag: string;
  createTime: Date;
  updateTime: Date;
}

const DAX_PATH = /^\/dev\/dax[0-9]+\.[0-9]+$/;

export function validatePoolSpec(spec: PoolSpec): void {
  const v = new Violations();
  checkName(v, 'name', spec.name);
  checkName(v, 'host', spec.host);
  checkDescription(v, 'description', spec.description);
  checkLabels(v, 'labels', spec.labels);
  if (!Number.isInteger(spec.hostNodeId) || spec.hostNodeId < 0) v.add('hostNodeId', `must be a non-negative integer, got ${spec.hostNodeId}`);
  if (spec.daxDevicePath !== undefined && !DAX_PATH.test(spec.daxDevicePath))
    v.add('daxDevicePath', `"${spec.daxDevicePath}" is not a device-DAX path like /dev/dax0.0`);
  if (!POOL_MEMORY_TYPES.includes(spec.memoryType)) v.add('memoryType', `must be one of ${POOL_MEMORY_TYPES.join(', ')}`);
  if (!POOL_STATES.includes(spec.state)) v.add('state', `must be one of ${POOL_STATES.join(', ')}`);
  checkGranule(v, spec.granuleBytes);
  checkCapacityShape(v, spec.capacityBytes, spec.granuleBytes);
  v.throwIfAny('INVALID_POOL');
}

function checkGranule(v: Violations, granuleBytes: number): void {
  if (!isPowerOfTwo(granuleBytes)) v.add('granuleBytes', `must be a power of two, got ${granuleBytes}`);
  else if (granuleBytes < MIN_GRANULE_BYTES || granuleBytes > MAX_GRANULE_BYTES)
    v.add('granuleBytes', `${formatBytes(granuleBytes)} is out of range (${formatBytes(MIN_GRANULE_BYTES)} to ${formatBytes(MAX_GRANULE_BYTES)})`);
}

export function checkCapacityShape(v: Violations, capacityBytes: number, granuleBytes: number): void {
  if (!Number.isSafeInteger(capacityBytes) || capacityBytes <= 0) {
    v.add('capacityBytes', `must be a positive integer number of bytes, got ${capacityBytes}`);
  } else if (isPowerOfTwo(granuleBytes) && capacityBytes % granuleBytes !== 0) {
    v.add('capacityBytes', `${formatBytes(capacityBytes)} is not a multiple of the allocation granule ${formatBytes(granuleBytes)}`);
  }
}

/**
 * Capacity on one host node is never promised twice: the capacities of all
 * pools on a node add up to at most the node's memory.
 */
export function checkNodeCapacity(node: HostNode, capacityBytes: number, otherPoolsOnNode: readonly { name: string; capacityBytes: number }[]): void {
  const others = otherPoolsOnNode.reduce((s, p) => s + p.capacityBytes, 0);
  if (capacityBytes + others > node.memoryBytes) {
    const detail = otherPoolsOnNode.length
      ? ` (other pools on the node hold ${formatBytes(others)}: ${otherPoolsOnNode.map((p) => p.name).join(', ')})`
      : '';
    throw DomainError.invalid(
      'POOL_EXCEEDS_NODE_MEMORY',
      [
        {
          field: 'capacityBytes',
          description: `${formatBytes(capacityBytes)} does not fit on node ${node.nodeId}, which has ${formatBytes(node.memoryBytes)}${detail}`,
        },
      ],
      { nodeMemoryBytes: String(node.memoryBytes), otherPoolsBytes: String(others) },
    );
  }
}

export function checkCapacityNotBelowAllocated(capacityBytes: number, allocatedBytes: number): void {
  if (capacityBytes < allocatedBytes) {
    throw DomainError.precondition(
      'POOL_CAPACITY_BELOW_ALLOCATED',
      `capacityBytes ${formatBytes(capacityBytes)} is less than the ${formatBytes(allocatedBytes)} already allocated from the pool`,
      { allocatedBytes: String(allocatedBytes) },
    );
  }
}
