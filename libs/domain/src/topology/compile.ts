import { DomainError } from '../errors';
import { chooseMachine, planMemoryDevices, predictGuestMemoryBlockBytes } from './devices';
import { planHmat } from './hmat';
import { HostModel } from './host';
import { layoutGuestNodes } from './layout';
import { guestDistanceMatrix } from './slit';
import { predictTiers, type TierNodeInput } from './tiers';
import type { HmatCell, Topology, TopologyInput } from './types';
import { validateTopologyInput } from './validate';

/**
 * Compiles a VM's memory topology: guest NUMA nodes, SLIT, HMAT (with QEMU's exact encoding
 * and what the guest decodes), memory devices, and the tiers / demotion targets the guest
 * kernel profile will build. Pure and deterministic; refuses with a DomainError whatever QEMU
 * or the guest kernel would reject or misread.
 */
export function compileTopology(input: TopologyInput): Topology {
  validateTopologyInput(input);
  const { vm } = input;
  const host = new HostModel(input.host);
  const layout = layoutGuestNodes(input, host);
  const distanceWarnings: string[] = [];
  const distances = guestDistanceMatrix(layout.nodes, host, distanceWarnings);
  const hmat = planHmat(layout.nodes, host, input.policy?.hmatRounding ?? 'exact');
  const machine = chooseMachine(vm.sparePciePorts);
  const bootMemoryBytes = layout.nodes.reduce((s, n) => s + n.bootMemoryBytes, 0);
  const guestMemoryBlockBytes = vm.guestMemoryBlockBytes ?? predictGuestMemoryBlockBytes(machine.type, bootMemoryBytes);
  const devicePlan = planMemoryDevices(input, layout, machine.type, bootMemoryBytes, guestMemoryBlockBytes);

  // hmat.cells is initiator-major over targets 0..n-1 (CPU nodes are 0..k-1).
  const cellAt = (i: number, t: number): HmatCell | undefined => hmat.cells[i * layout.nodes.length + t];
  const lastNode = layout.nodes[layout.nodes.length - 1];
  const hasDeviceMemory = vm.maxMemoryBytes > bootMemoryBytes;
  const tierInputs: TierNodeInput[] = layout.nodes.map((n) => {
    // build_srat: an entry per node with boot memory; the device-memory range goes to the last node.
    const hmatTarget = n.bootMemoryBytes > 0 || (n === lastNode && hasDeviceMemory);
    if (n.kind === 'CXL' && !hmatTarget)
      throw new DomainError('INTERNAL', 'TOPOLOGY_INTERNAL', `CXL guest node ${n.guestNodeId} would have no SRAT memory entry`);
    return {
      nodeId: n.guestNodeId,
      hasCpus: n.kind === 'CPU',
      hasBootMemory: n.bootMemoryBytes > 0,
      hmatTarget,
      access1: cellAt(n.initiatorGuestNodeId, n.guestNodeId)?.guest ?? null,
      firstMemoryFromBootDimm:
        n.bootMemoryBytes === 0 && devicePlan.devices.some((d) => d.plugged && d.model === 'pc-dimm' && d.guestNodeId === n.guestNodeId),
    };
  });
  const tiers = predictTiers(vm.kernelProfile, tierInputs, distances);

  const warnings: string[] = [];
  for (const c of hmat.cells) if (c.derivation) warnings.push(`HMAT ${c.initiator}→${c.target}: ${c.derivation}`);
  warnings.push(...distanceWarnings);
  if (hmat.bandwidthDivisorReason) warnings.push(hmat.bandwidthDivisorReason);
  if (hmat.rounding.latencyGranularityNs > 1)
    warnings.push(`HMAT latencies rounded to multiples of ${hmat.rounding.latencyGranularityNs} ns to fit one Entry Base Unit`);
  if (hmat.rounding.bandwidthGranularityMBps > 1)
    warnings.push(`HMAT bandwidths rounded to multiples of ${hmat.rounding.bandwidthGranularityMBps} MiB/s to fit 16 bits`);
  if (vm.kernelProfile !== 'linux-6.1' && !tiers.hmatTiering.enabled) warnings.push(`HMAT-based tiering disabled: ${tiers.hmatTiering.reason}`);
  warnings.push(...devicePlan.warnings);
  for (const t of tiers.nodes) {
    const input = tierInputs.find((x) => x.nodeId === t.guestNodeId);
    if (vm.kernelProfile !== 'linux-6.1' && tiers.hmatTiering.enabled && input?.firstMemoryFromBootDimm)
      warnings.push(
        `guest node ${t.guestNodeId} gets the DRAM tier, not its HMAT tier: its first memory is a DIMM plugged at launch. ` +
          `Plug its groups after boot, or give the node boot memory (policy.cxlSratPlacement 'boot-memory')`,
      );
  }

  return {
    vmName: vm.name,
    kernelProfile: vm.kernelProfile,
    machine,
    vcpuCount: layout.vcpuCount,
    guestNodes: layout.nodes,
    bootMemoryBytes,
    maxMemoryBytes: vm.maxMemoryBytes,
    memorySlots: vm.memorySlots,
    guestMemoryBlockBytes,
    deviceMemory: devicePlan.deviceMemory,
    memmapOnMemory: vm.memmapOnMemory ?? false,
    distances,
    hmat,
    memoryDevices: devicePlan.devices,
    pciePorts: devicePlan.pciePorts,
    tiers,
    warnings,
  };
}
