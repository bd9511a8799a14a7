import { DomainError } from '../errors';
import { GiB, KiB, MiB } from '../units';
import { isLatencyType } from './encoding';
import type { MemoryBackend, MemoryDevice, Topology } from './types';

export interface QemuLaunchOptions {
  /** e.g. `tcg` or `kvm`; omitted → QEMU's default. */
  accel?: string;
  /** e.g. `max,-cx16`; omitted → QEMU's default. */
  cpuModel?: string;
  qmpSocketPath?: string;
  qgaSocketPath?: string;
  kernel?: string;
  initrd?: string;
  append?: string;
  /** Appended verbatim at the end (display, disks, network…). */
  extraArgs?: string[];
  /**
   * `bind` (default): every RAM backend is bound to its host node (`host-nodes`, `policy=bind`).
   * `none`: no binding, for a machine that does not have the modelled host nodes (a test
   * machine standing in for a CXL host); the guest topology and HMAT are unchanged.
   */
  hostNodeBinding?: 'bind' | 'none';
}

export const QGA_PORT_NAME = 'org.qemu.guest_agent.0';

/** Exact QEMU size literal: the largest binary suffix that divides the value (qemu_strtosz). */
export function qemuSize(bytes: number): string {
  if (bytes === 0) return '0';
  for (const [unit, suffix] of [
    [GiB * 1024, 'T'],
    [GiB, 'G'],
    [MiB, 'M'],
    [KiB, 'K'],
  ] as const)
    if (bytes % unit === 0) return `${bytes / unit}${suffix}`;
  return `${bytes}B`;
}

/** QemuOpts values escape a comma by doubling it (util/qemu-option.c get_opt_value). */
export function escapeOptValue(value: string): string {
  return value.replace(/,/g, ',,');
}

export function renderBackendOption(b: MemoryBackend, hostNodeBinding: 'bind' | 'none' = 'bind'): string {
  const parts = [b.type, `id=${b.id}`, `size=${qemuSize(b.sizeBytes)}`];
  if (b.type === 'memory-backend-file') {
    parts.push(`mem-path=${escapeOptValue(b.memPath ?? '')}`, `share=${b.share ? 'on' : 'off'}`);
    if (b.alignBytes !== undefined) parts.push(`align=${qemuSize(b.alignBytes)}`);
    if (b.pmem) parts.push('pmem=on');
  }
  if (b.bindHostNode && hostNodeBinding === 'bind') parts.push(`host-nodes=${b.hostNodeId}`, 'policy=bind');
  if (b.reserve) parts.push('reserve=off');
  return parts.join(',');
}

export function renderMemoryDeviceOption(d: MemoryDevice): string {
  const parts = [d.model, `id=${d.deviceId}`, `memdev=${d.backend.id}`, `node=${d.guestNodeId}`];
  if (d.model === 'virtio-mem-pci') {
    parts.push(`block-size=${qemuSize(d.blockSizeBytes ?? 0)}`, `requested-size=${qemuSize(d.requestedBytes ?? 0)}`);
    if (d.bus) parts.push(`bus=${d.bus}`);
  }
  return parts.join(',');
}

function cpuRange(ids: number[]): string {
  const first = ids[0] as number;
  const last = ids[ids.length - 1] as number;
  return first === last ? `${first}` : `${first}-${last}`;
}

/**
 * QEMU arguments (without the program name: `spawn('qemu-system-x86_64', args)`; never a
 * shell string). Order matters where QEMU processes options in command-line order
 * (hw/core/numa.c): every `-numa node` (with its `cpus=`) comes before any `-numa dist` and
 * `-numa hmat-lb`, because hmat-lb checks that the initiator already has CPUs and the target
 * exists; backends precede the nodes and devices that use them; root ports precede the
 * devices placed on them. `-smp` gives every vCPU its own socket so no socket spans two
 * guest nodes (the guest would otherwise warn about LLC siblings on different nodes).
 */
export function renderQemuArgv(topology: Topology, options: QemuLaunchOptions = {}): string[] {
  const args: string[] = [];
  const push = (flag: string, value: string) => args.push(flag, value);

  push('-name', `guest=${escapeOptValue(topology.vmName)}`);
  push('-machine', `${topology.machine.type},hmat=on`);
  if (options.accel) push('-accel', options.accel);
  if (options.cpuModel) push('-cpu', options.cpuModel);
  const n = topology.vcpuCount;
  push('-smp', `${n},sockets=${n},cores=1,threads=1`);
  const mem = [`size=${qemuSize(topology.bootMemoryBytes)}`];
  if (topology.maxMemoryBytes > topology.bootMemoryBytes) {
    if (topology.memorySlots > 0) mem.push(`slots=${topology.memorySlots}`);
    mem.push(`maxmem=${qemuSize(topology.maxMemoryBytes)}`);
  }
  push('-m', mem.join(','));

  const binding = options.hostNodeBinding ?? 'bind';
  for (const node of topology.guestNodes) if (node.bootBackend) push('-object', renderBackendOption(node.bootBackend, binding));
  for (const node of topology.guestNodes) {
    const parts = ['node', `nodeid=${node.guestNodeId}`];
    if (node.vcpuIds.length > 0) parts.push(`cpus=${cpuRange(node.vcpuIds)}`);
    if (node.bootBackend) parts.push(`memdev=${node.bootBackend.id}`);
    // CPU nodes get initiator=self from QEMU (machine_set_cpu_numa_node); only CPU-less nodes name one.
    if (node.kind === 'CXL') parts.push(`initiator=${node.initiatorGuestNodeId}`);
    push('-numa', parts.join(','));
  }
  topology.distances.forEach((row, src) =>
    row.forEach((val, dst) => {
      if (src !== dst) push('-numa', `dist,src=${src},dst=${dst},val=${val}`);
    }),
  );
  for (const s of topology.hmat.structures) {
    const latency = isLatencyType(s.dataType);
    for (const c of topology.hmat.cells) {
      const value = {
        'read-latency': c.qemu.readLatencyNs,
        'write-latency': c.qemu.writeLatencyNs,
        'read-bandwidth': c.qemu.readBandwidthBps,
        'write-bandwidth': c.qemu.writeBandwidthBps,
      }[s.dataType];
      push(
        '-numa',
        `hmat-lb,initiator=${c.initiator},target=${c.target},hierarchy=memory,data-type=${s.dataType},` +
          (latency ? `latency=${value}` : `bandwidth=${qemuSize(value)}`),
      );
    }
  }

  for (const p of topology.pciePorts) push('-device', `pcie-root-port,id=${p.id},chassis=${p.chassis}`);
  for (const d of topology.memoryDevices) {
    if (!d.plugged) continue;
    push('-object', renderBackendOption(d.backend, binding));
    push('-device', renderMemoryDeviceOption(d));
  }

  if (options.qmpSocketPath) {
    push('-chardev', `socket,id=qmp0,path=${escapeOptValue(options.qmpSocketPath)},server=on,wait=off`);
    push('-mon', 'chardev=qmp0,mode=control');
  }
  if (options.qgaSocketPath) {
    push('-chardev', `socket,id=qga0,path=${escapeOptValue(options.qgaSocketPath)},server=on,wait=off`);
    push('-device', 'virtio-serial-pci,id=virtio-serial0');
    push('-device', `virtserialport,bus=virtio-serial0.0,chardev=qga0,name=${QGA_PORT_NAME}`);
  }
  if (options.kernel) push('-kernel', options.kernel);
  if (options.initrd) push('-initrd', options.initrd);
  if (options.append !== undefined) push('-append', options.append);
  args.push(...(options.extraArgs ?? []));
  return args;
}

export interface QmpCommand {
  execute: 'object-add' | 'device_add';
  arguments: Record<string, unknown>;
}

/**
 * QMP commands that hotplug a group planned with `plugged: false` (or re-plug one): the same
 * backend and device the launch argv would have used. On q35 a virtio-mem device needs `bus`,
 * one of the free spare root ports (topology.pciePorts with purpose `spare`).
 */
export function memoryDeviceHotplugCommands(
  topology: Topology,
  groupId: string,
  bus?: string,
  hostNodeBinding: 'bind' | 'none' = 'bind',
): [QmpCommand, QmpCommand] {
  const d = topology.memoryDevices.find((x) => x.groupId === groupId);
  if (!d) throw DomainError.notFound('memoryGroup', groupId);
  const b = d.backend;
  const backendArgs: Record<string, unknown> = { 'qom-type': b.type, id: b.id, size: b.sizeBytes };
  if (b.type === 'memory-backend-file') {
    Object.assign(backendArgs, { 'mem-path': b.memPath, share: b.share, pmem: b.pmem });
    if (b.alignBytes !== undefined) backendArgs['align'] = b.alignBytes;
  }
  if (b.bindHostNode && hostNodeBinding === 'bind') Object.assign(backendArgs, { 'host-nodes': [b.hostNodeId], policy: 'bind' });
  if (b.reserve) backendArgs['reserve'] = false;
  const deviceArgs: Record<string, unknown> = { driver: d.model, id: d.deviceId, memdev: b.id, node: d.guestNodeId };
  if (d.model === 'virtio-mem-pci') {
    Object.assign(deviceArgs, { 'block-size': d.blockSizeBytes, 'requested-size': d.requestedBytes ?? 0 });
    const onBus = bus ?? d.bus;
    if (onBus) deviceArgs['bus'] = onBus;
    else if (topology.machine.type === 'q35')
      throw DomainError.precondition(
        'HOTPLUG_PORT_REQUIRED',
        `virtio-mem group ${groupId} on q35 needs a spare pcie-root-port as bus ("Bus 'pcie.0' does not support hotplugging")`,
        { groupId },
      );
  }
  return [
    { execute: 'object-add', arguments: backendArgs },
    { execute: 'device_add', arguments: deviceArgs },
  ];
}
