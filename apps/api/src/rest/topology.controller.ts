import { Body, Controller, Get, HttpCode, Inject, Param, Post, Req } from '@nestjs/common';
import type { Request } from 'express';
import { z } from 'zod';
import type { PreviewMemoryGroupInput } from '#application';
import type { VmSpec } from '#domain';
import { RUNTIME, type Runtime } from '../runtime';
import { callContext } from './request-context';
import { CreateMemoryGroupBody, CreateVmBody, parseBody } from './schemas';

/**
 * Body of POST /v1/topology:preview: a VM as for POST /v1/vms (its name optional) and its
 * memory groups as for POST /v1/vms/{vm}/memory-groups.
 */
export const PreviewTopologyBody = CreateVmBody.extend({
  name: z.string().default('preview'),
  memoryGroups: z.array(CreateMemoryGroupBody).default([]),
});

// ---------------------------------------------------------------- response (OpenAPI only)

const intz = z.number().int();
const perf = z.object({ readLatencyNs: intz, writeLatencyNs: intz, readBandwidthMBps: intz, writeBandwidthMBps: intz });

/** What both endpoints answer (TopologyView); documentation only, built by the service. */
export const TopologyResource = z.object({
  vm: z.string().describe('the VM (a preview: the name given, or "preview")'),
  host: z.string(),
  kernelProfile: z.string(),
  machine: z.object({ type: z.string().describe('QEMU machine type: pc, or q35 when PCIe root ports are needed'), reason: z.string() }),
  vcpuCount: intz,
  bootMemoryBytes: intz,
  maxMemoryBytes: intz,
  memorySlots: intz,
  guestMemoryBlockBytes: intz,
  memmapOnMemory: z.boolean(),
  deviceMemory: z.object({ baseAddr: intz, sizeBytes: intz }),
  nodes: z.array(
    z.object({
      guestNodeId: intz,
      kind: z.enum(['CPU', 'CXL']),
      vcpuIds: z.array(intz),
      hostNodeId: intz,
      hostNodePinned: z.boolean(),
      bootMemoryBytes: intz,
      initiatorGuestNodeId: intz,
      srat: z.enum(['BOOT_MEMORY', 'HOTPLUG_REGION']),
      pools: z.array(z.string()),
      anchorPool: z.string().optional(),
    }),
  ),
  distances: z.array(z.array(intz)).describe('SLIT, [from][to] by guest node id'),
  hmat: z.object({
    initiators: z.array(intz),
    targets: z.array(intz),
    cells: z.array(
      z.object({
        initiator: intz,
        target: intz,
        host: perf,
        derivation: z.string().optional().describe('set when the host had no entry for the pair'),
        qemu: z.object({ readLatencyNs: intz, writeLatencyNs: intz, readBandwidthBps: intz, writeBandwidthBps: intz }),
        guest: perf.describe('what the guest kernel decodes and prints in sysfs'),
      }),
    ),
    bandwidthDivisor: intz,
    bandwidthDivisorReason: z.string().optional(),
    latencyGranularityNs: intz,
    bandwidthGranularityMBps: intz,
    structures: z.array(
      z.object({
        dataType: z.enum(['READ_LATENCY', 'WRITE_LATENCY', 'READ_BANDWIDTH', 'WRITE_BANDWIDTH']),
        qemuBase: intz,
        entryBaseUnit: intz,
        entries: z.array(z.array(intz)),
      }),
    ),
  }),
  tiers: z.object({
    kernelProfile: z.string(),
    hmatTiering: z.object({ enabled: z.boolean(), referenceGuestNodeId: intz.optional(), reason: z.string() }),
    nodes: z.array(
      z.object({
        guestNodeId: intz,
        adistance: intz,
        tier: intz.describe('the node is in /sys/devices/virtual/memory_tiering/memory_tier<tier>'),
        source: z.enum(['HMAT', 'DEFAULT']),
        reason: z.string(),
        calculation: z
          .object({ latencySumNs: intz, referenceLatencySumNs: intz, bandwidthSumMBps: intz, referenceBandwidthSumMBps: intz, steps: z.array(intz), wrapped: z.boolean() })
          .optional(),
      }),
    ),
    memoryTiers: z.array(z.object({ tier: intz, adistanceStart: intz, guestNodeIds: z.array(intz), nodelist: z.string() })),
    topTierAdistance: intz,
  }),
  demotionTargets: z.array(z.object({ guestNodeId: intz, preferred: z.array(intz), fallback: z.array(intz) })),
  memoryDevices: z.array(
    z.object({
      memoryGroup: z.string(),
      model: z.enum(['PC_DIMM', 'VIRTIO_MEM_PCI']),
      deviceId: z.string(),
      guestNodeId: intz,
      pool: z.string(),
      onCommandLine: z.boolean().describe('false: hotplugged through QMP after boot'),
      sizeBytes: intz,
      requestedBytes: intz.optional(),
      blockSizeBytes: intz.optional(),
      onlineType: z.string(),
      bus: z.string().optional(),
      predictedAddr: intz,
      backend: z.object({ id: z.string(), type: z.string(), sizeBytes: intz, hostNodeId: intz, bindHostNode: z.boolean(), memPath: z.string().optional() }),
    }),
  ),
  pciePorts: z.array(z.object({ id: z.string(), chassis: intz, purpose: z.enum(['VIRTIO_MEM', 'SPARE']), memoryGroup: z.string().optional() })),
  qemuArgv: z.array(z.string()).describe('without the program name; socket and boot image paths are placeholders (/run/memplane/<vm>/…, /var/lib/memplane/images/<kernel profile>/…)'),
  libvirtXml: z.string(),
  kernelCmdline: z.object({ args: z.array(z.string()), cmdline: z.string(), explained: z.array(z.object({ arg: z.string(), why: z.string() })), warnings: z.array(z.string()) }),
  warnings: z.array(z.string()),
});

type Topology = z.output<typeof TopologyResource>;

@Controller('v1')
export class TopologyController {
  constructor(@Inject(RUNTIME) private readonly rt: Runtime) {}

  // Typed with the documented shape, so the service's answer and the OpenAPI schema cannot drift apart.
  @Get('vms/:vm/topology')
  get(@Req() req: Request, @Param('vm') vm: string): Promise<Topology> {
    return this.rt.topology.get(callContext(req), vm);
  }

  /** AIP-136 custom method on the collection; the colon is escaped so the router takes it literally. */
  @Post('topology\\:preview')
  @HttpCode(200)
  preview(@Req() req: Request, @Body() body: unknown): Promise<Topology> {
    const { memoryGroups, ...vm } = parseBody(PreviewTopologyBody, body);
    return this.rt.topology.preview(callContext(req), { vm: vm as VmSpec, memoryGroups: memoryGroups as PreviewMemoryGroupInput[] });
  }
}
