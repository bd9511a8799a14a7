import { KiB } from '../units';
import { QGA_PORT_NAME } from './qemu-argv';
import type { HmatCell, MemoryDevice, Topology } from './types';

export interface LibvirtDomainOptions {
  /** `qemu` (TCG) or `kvm`; default `qemu`. */
  domainType?: 'qemu' | 'kvm';
  emulator?: string;
  kernel?: string;
  initrd?: string;
  append?: string;
  qgaSocketPath?: string;
}

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/'/g, '&apos;').replace(/"/g, '&quot;');
}

function kib(bytes: number): number {
  return bytes / KiB;
}

function range(ids: number[]): string {
  const first = ids[0] as number;
  const last = ids[ids.length - 1] as number;
  return first === last ? `${first}` : `${first}-${last}`;
}

/**
 * libvirt domain XML for the same guest (validates with `virt-xml-validate <file> domain`).
 *
 * - Cells carry the boot memory; `<numatune><memnode mode='strict'>` is the `policy=bind`.
 * - `<interconnects>` holds the same (possibly rescaled) HMAT values as the argv; bandwidth is
 *   written in KiB/s (`unit='KiB'`), the MiB/s value ·1024, exact.
 * - libvirt picks `initiator=` for a CPU-less cell itself from the interconnects (believed to be
 *   the first <latency> naming the cell as target, src/conf/numa_conf.c — not verified against a
 *   running libvirtd here), so the chosen initiator's latencies are listed first per target.
 * - Memory devices use user aliases (`ua-<qemu id>`), so libvirt's QEMU ids match ours.
 * - Known gaps: a DAX-backed CXL cell cannot be expressed per cell (memoryBacking is global), and
 *   whether libvirt accepts `<source><path>` for dimm/virtio-mem models at define time is unverified.
 */
export function renderLibvirtDomainXml(topology: Topology, options: LibvirtDomainOptions = {}): string {
  const L: string[] = [];
  const plugged = topology.memoryDevices.filter((d) => d.plugged);
  const totalKiB = kib(topology.bootMemoryBytes + plugged.reduce((s, d) => s + d.sizeBytes, 0));
  const n = topology.vcpuCount;

  L.push(`<domain type='${options.domainType ?? 'qemu'}'>`);
  L.push(`  <name>${esc(topology.vmName)}</name>`);
  if (topology.maxMemoryBytes > topology.bootMemoryBytes)
    L.push(`  <maxMemory slots='${topology.memorySlots}' unit='KiB'>${kib(topology.maxMemoryBytes)}</maxMemory>`);
  L.push(`  <memory unit='KiB'>${totalKiB}</memory>`);
  L.push(`  <vcpu placement='static'>${n}</vcpu>`);
  const bound = topology.guestNodes.filter((g) => g.bootMemoryBytes > 0);
  if (bound.length > 0) {
    L.push('  <numatune>');
    for (const g of bound) L.push(`    <memnode cellid='${g.guestNodeId}' mode='strict' nodeset='${g.hostNodeId}'/>`);
    L.push('  </numatune>');
  }
  L.push('  <os>');
  L.push(`    <type arch='x86_64' machine='${topology.machine.type}'>hvm</type>`);
  if (options.kernel) L.push(`    <kernel>${esc(options.kernel)}</kernel>`);
  if (options.initrd) L.push(`    <initrd>${esc(options.initrd)}</initrd>`);
  if (options.append !== undefined) L.push(`    <cmdline>${esc(options.append)}</cmdline>`);
  L.push('  </os>');
  L.push('  <features>');
  L.push('    <acpi/>');
  L.push('    <apic/>');
  L.push('  </features>');
  L.push('  <cpu>');
  L.push(`    <topology sockets='${n}' dies='1' cores='1' threads='1'/>`);
  L.push('    <numa>');
  for (const g of topology.guestNodes) {
    const cpus = g.vcpuIds.length > 0 ? ` cpus='${range(g.vcpuIds)}'` : '';
    L.push(`      <cell id='${g.guestNodeId}'${cpus} memory='${kib(g.bootMemoryBytes)}' unit='KiB'>`);
    L.push('        <distances>');
    (topology.distances[g.guestNodeId] ?? []).forEach((value, id) => L.push(`          <sibling id='${id}' value='${value}'/>`));
    L.push('        </distances>');
    L.push('      </cell>');
  }
  L.push('      <interconnects>');
  const initiatorOf = new Map(topology.guestNodes.map((g) => [g.guestNodeId, g.initiatorGuestNodeId]));
  const cells = [...topology.hmat.cells].sort(
    (a, b) =>
      a.target - b.target ||
      Number(b.initiator === initiatorOf.get(b.target)) - Number(a.initiator === initiatorOf.get(a.target)) ||
      a.initiator - b.initiator,
  );
  const lat = (c: HmatCell, type: 'read' | 'write', v: number) =>
    `        <latency initiator='${c.initiator}' target='${c.target}' type='${type}' value='${v}'/>`;
  const bw = (c: HmatCell, type: 'read' | 'write', bps: number) =>
    `        <bandwidth initiator='${c.initiator}' target='${c.target}' type='${type}' value='${kib(bps)}' unit='KiB'/>`;
  for (const c of cells) L.push(lat(c, 'read', c.qemu.readLatencyNs), lat(c, 'write', c.qemu.writeLatencyNs));
  for (const c of cells) L.push(bw(c, 'read', c.qemu.readBandwidthBps), bw(c, 'write', c.qemu.writeBandwidthBps));
  L.push('      </interconnects>');
  L.push('    </numa>');
  L.push('  </cpu>');
  L.push('  <devices>');
  L.push(`    <emulator>${esc(options.emulator ?? '/usr/bin/qemu-system-x86_64')}</emulator>`);
  topology.pciePorts.forEach((p, i) => {
    L.push(`    <controller type='pci' index='${i + 1}' model='pcie-root-port'>`);
    L.push(`      <target chassis='${p.chassis}'/>`);
    L.push(`      <alias name='ua-${p.id}'/>`);
    L.push('    </controller>');
  });
  const busIndex = new Map(topology.pciePorts.map((p, i) => [p.id, i + 1]));
  for (const d of plugged) L.push(...memoryDeviceXml(d, d.bus === undefined ? undefined : busIndex.get(d.bus)));
  if (options.qgaSocketPath) {
    L.push("    <channel type='unix'>");
    L.push(`      <source mode='bind' path='${esc(options.qgaSocketPath)}'/>`);
    L.push(`      <target type='virtio' name='${QGA_PORT_NAME}'/>`);
    L.push('    </channel>');
  }
  L.push('  </devices>');
  L.push('</domain>');
  return L.join('\n') + '\n';
}

function memoryDeviceXml(d: MemoryDevice, busIndex: number | undefined): string[] {
  const model = d.model === 'pc-dimm' ? 'dimm' : 'virtio-mem';
  const b = d.backend;
  const L: string[] = [];
  L.push(`    <memory model='${model}'${b.share ? " access='shared'" : ''}>`);
  L.push('      <source>');
  if (b.type === 'memory-backend-file') {
    L.push(`        <path>${esc(b.memPath ?? '')}</path>`);
    if (b.alignBytes !== undefined) L.push(`        <alignsize unit='KiB'>${kib(b.alignBytes)}</alignsize>`);
    if (b.pmem) L.push('        <pmem/>');
  } else L.push(`        <nodemask>${b.hostNodeId}</nodemask>`);
  L.push('      </source>');
  L.push('      <target>');
  L.push(`        <size unit='KiB'>${kib(d.sizeBytes)}</size>`);
  L.push(`        <node>${d.guestNodeId}</node>`);
  if (d.model === 'virtio-mem-pci') {
    L.push(`        <block unit='KiB'>${kib(d.blockSizeBytes ?? 0)}</block>`);
    L.push(`        <requested unit='KiB'>${kib(d.requestedBytes ?? 0)}</requested>`);
  }
  L.push('      </target>');
  L.push(`      <alias name='ua-${d.deviceId}'/>`);
  if (busIndex !== undefined)
    L.push(`      <address type='pci' domain='0x0000' bus='0x${busIndex.toString(16).padStart(2, '0')}' slot='0x00' function='0x0'/>`);
  L.push('    </memory>');
  return L;
}
