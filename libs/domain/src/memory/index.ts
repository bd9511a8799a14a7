export * from './guest-arch';
export * from './guest-memory-profile';
export * from './virtio-mem';
export * from './memmap-on-memory';
export * from './memory-group';
export * from './pool-eligibility';
export * from './auto-movable';
export * from './vm-memory';
