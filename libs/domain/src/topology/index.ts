export * from './types';
export { compileTopology } from './compile';
export { validateTopologyInput } from './validate';
export { HostModel } from './host';
export {
  encodeLatencies,
  encodeBandwidths,
  encodeHmatList,
  hmatNormalize,
  HMAT_ENTRY_MAX,
  type EncodedHmatList,
  type HmatValueLabel,
} from './encoding';
export {
  mtPerfToAdistance,
  dramPerfMismatch,
  predictTiers,
  tierOf,
  formatNodeList,
  MEMTIER_ADISTANCE_DRAM,
  MEMTIER_CHUNK_BITS,
  type AdistResult,
  type TierNodeInput,
} from './tiers';
export {
  chooseMachine,
  predictGuestMemoryBlockBytes,
  deviceMemoryBase,
  memoryDeviceIds,
  spareRootPortId,
} from './devices';
export {
  renderQemuArgv,
  memoryDeviceHotplugCommands,
  qemuSize,
  QGA_PORT_NAME,
  type QemuLaunchOptions,
  type QmpCommand,
} from './qemu-argv';
export { renderLibvirtDomainXml, type LibvirtDomainOptions } from './libvirt-xml';
export { recommendKernelCmdline, type KernelCmdlineRecommendation, type KernelCmdlineArg } from './kernel-cmdline';
export * from './resources';
