import { DomainError, Violations } from '../errors';
import { formatBytes, PiB } from '../units';
import { checkDescription, checkLabels, checkName } from './names';

export type NodeKind = 'DRAM' | 'CXL';
export type HostState = 'READY' | 'MAINTENANCE' | 'DOWN';
export const HOST_STATES: readonly HostState[] = ['READY', 'MAINTENANCE', 'DOWN'];
export const NODE_KINDS: readonly NodeKind[] = ['DRAM', 'CXL'];

export interface HostNode {
  nodeId: number;
  cpus: number[];
  memoryBytes: number;
  kind: NodeKind;
}

/** Performance from a CPU node to a memory node, as the host's HMAT/CDAT report it. */
export interface NodePerformance {
  cpuNodeId: number;
  memoryNodeId: number;
  readLatencyNs: number;
  writeLatencyNs: number;
  readBandwidthMBps: number;
  writeBandwidthMBps: number;
}

export interface NodeDistance {
  fromNodeId: number;
  toNodeId: number;
  distance: number;
}

export interface HostSpec {
  name: string;
  description: string;
  labels: Record<string, string>;
  nodes: HostNode[];
  performance: NodePerformance[];
  distances: NodeDistance[];
  state: HostState;
}

export interface Host extends HostSpec {
  uid: string;
  etag: string;
  createTime: Date;
  updateTime: Date;
}

/** Linux's MAX_NUMNODES on x86_64 is 1024 (NODES_SHIFT 10). */
export const MAX_NODE_ID = 1023;
export const MAX_CPU_ID = 8191;
/** Bounds that keep figures meaningful and inside Postgres int4: a 10 ms memory access or 100 TB/s is not a memory node. */
export const MAX_LATENCY_NS = 10_000_000;
export const MAX_BANDWIDTH_MBPS = 100_000_000;
/** A node of more than 4 PiB is a typo, not a machine (and 4 PiB keeps every sum of a few nodes a safe integer). */
export const MAX_NODE_MEMORY_BYTES = 4 * PiB;
/** SLIT entries are one byte; 255 means unreachable, which a usable node never is. */
export const MAX_DISTANCE = 254;

function positiveInt(v: Violations, field: string, value: number, max: number, unit: string): void {
  if (!Number.isSafeInteger(value) || value <= 0) v.add(field, `must be a positive integer (${unit}), got ${value}`);
  else if (value > max) v.add(field, `${value} ${unit} is out of range (at most ${max})`);
}

export function hostNodeById(nodes: readonly HostNode[], nodeId: number): HostNode | undefined {
  return nodes.find((n) => n.nodeId === nodeId);
}

/**
 * Checks a host's whole description at once and throws one INVALID_ARGUMENT
 * naming every offending field.
 */
export function validateHostSpec(spec: HostSpec): void {
  const v = new Violations();
  checkName(v, 'name', spec.name);
  checkDescription(v, 'description', spec.description);
  checkLabels(v, 'labels', spec.labels);
  if (!HOST_STATES.includes(spec.state)) v.add('state', `must be one of ${HOST_STATES.join(', ')}`);
  checkTopology(v, spec.nodes, spec.performance, spec.distances);
  v.throwIfAny('INVALID_HOST');
}

export function checkTopology(v: Violations, nodes: HostNode[], performance: NodePerformance[], distances: NodeDistance[]): void {
  if (nodes.length === 0) v.add('nodes', 'a host has at least one NUMA node');
  if (nodes.length > MAX_NODE_ID + 1) v.add('nodes', `has ${nodes.length} nodes; at most ${MAX_NODE_ID + 1}`);
  const seenNodes = new Set<number>();
  const cpuOwner = new Map<number, number>();
  nodes.forEach((n, i) => {
    const f = `nodes[${i}]`;
    if (!Number.isInteger(n.nodeId) || n.nodeId < 0 || n.nodeId > MAX_NODE_ID) v.add(`${f}.nodeId`, `must be an integer from 0 to ${MAX_NODE_ID}, got ${n.nodeId}`);
    else if (seenNodes.has(n.nodeId)) v.add(`${f}.nodeId`, `node ${n.nodeId} is listed twice`);
    seenNodes.add(n.nodeId);
    if (!NODE_KINDS.includes(n.kind)) v.add(`${f}.kind`, `must be one of ${NODE_KINDS.join(', ')}`);
    if (!Number.isSafeInteger(n.memoryBytes) || n.memoryBytes <= 0) v.add(`${f}.memoryBytes`, `must be a positive integer number of bytes, got ${n.memoryBytes}`);
    else if (n.memoryBytes > MAX_NODE_MEMORY_BYTES) v.add(`${f}.memoryBytes`, `${formatBytes(n.memoryBytes)} is more than the ${formatBytes(MAX_NODE_MEMORY_BYTES)} a node can have`);
    if (n.kind === 'CXL' && n.cpus.length > 0) v.add(`${f}.cpus`, `a CXL node has no CPUs, but node ${n.nodeId} lists ${n.cpus.length}`);
    n.cpus.forEach((cpu, j) => {
      if (!Number.isInteger(cpu) || cpu < 0 || cpu > MAX_CPU_ID) v.add(`${f}.cpus[${j}]`, `must be an integer from 0 to ${MAX_CPU_ID}, got ${cpu}`);
      else if (cpuOwner.has(cpu)) v.add(`${f}.cpus[${j}]`, `CPU ${cpu} already belongs to node ${cpuOwner.get(cpu)}`);
      else cpuOwner.set(cpu, n.nodeId);
    });
  });
  const byId = new Map(nodes.map((n) => [n.nodeId, n]));
  const seenPairs = new Set<string>();
  performance.forEach((p, i) => {
    const f = `performance[${i}]`;
    const cpuNode = byId.get(p.cpuNodeId);
    if (!cpuNode) v.add(`${f}.cpuNodeId`, `node ${p.cpuNodeId} is not a node of this host`);
    else if (cpuNode.cpus.length === 0) v.add(`${f}.cpuNodeId`, `node ${p.cpuNodeId} has no CPUs, so it cannot be an initiator`);
    if (!byId.has(p.memoryNodeId)) v.add(`${f}.memoryNodeId`, `node ${p.memoryNodeId} is not a node of this host`);
    const key = `${p.cpuNodeId}->${p.memoryNodeId}`;
    if (seenPairs.has(key)) v.add(f, `the pair cpuNodeId ${p.cpuNodeId} -> memoryNodeId ${p.memoryNodeId} is listed twice`);
    seenPairs.add(key);
    positiveInt(v, `${f}.readLatencyNs`, p.readLatencyNs, MAX_LATENCY_NS, 'ns');
    positiveInt(v, `${f}.writeLatencyNs`, p.writeLatencyNs, MAX_LATENCY_NS, 'ns');
    positiveInt(v, `${f}.readBandwidthMBps`, p.readBandwidthMBps, MAX_BANDWIDTH_MBPS, 'MB/s');
    positiveInt(v, `${f}.writeBandwidthMBps`, p.writeBandwidthMBps, MAX_BANDWIDTH_MBPS, 'MB/s');
  });
  const seenDist = new Set<string>();
  distances.forEach((d, i) => {
    const f = `distances[${i}]`;
    if (!byId.has(d.fromNodeId)) v.add(`${f}.fromNodeId`, `node ${d.fromNodeId} is not a node of this host`);
    if (!byId.has(d.toNodeId)) v.add(`${f}.toNodeId`, `node ${d.toNodeId} is not a node of this host`);
    const key = `${d.fromNodeId}->${d.toNodeId}`;
    if (seenDist.has(key)) v.add(f, `the distance ${d.fromNodeId} -> ${d.toNodeId} is listed twice`);
    seenDist.add(key);
    if (!Number.isInteger(d.distance)) v.add(`${f}.distance`, `must be an integer, got ${d.distance}`);
    else if (d.fromNodeId === d.toNodeId && d.distance !== 10) v.add(`${f}.distance`, `a node's distance to itself is 10 (SLIT), got ${d.distance}`);
    else if (d.fromNodeId !== d.toNodeId && (d.distance <= 10 || d.distance > MAX_DISTANCE))
      v.add(`${f}.distance`, `the distance between two different nodes must be from 11 to ${MAX_DISTANCE} (SLIT), got ${d.distance}`);
  });
}

/** A pool may only sit on a CPU-less node of its host. */
export function requirePoolNode(host: Pick<HostSpec, 'name' | 'nodes'>, hostNodeId: number): HostNode {
  const node = hostNodeById(host.nodes, hostNodeId);
  if (!node) {
    throw DomainError.invalid('POOL_NODE_NOT_FOUND', [
      { field: 'hostNodeId', description: `host ${host.name} has no NUMA node ${hostNodeId} (it has ${host.nodes.map((n) => n.nodeId).join(', ')})` },
    ]);
  }
  if (node.cpus.length > 0) {
    throw DomainError.invalid('POOL_NODE_HAS_CPUS', [
      { field: 'hostNodeId', description: `node ${hostNodeId} of host ${host.name} has CPUs (${node.cpus.length}); a pool must be backed by a CPU-less node` },
    ]);
  }
  return node;
}
