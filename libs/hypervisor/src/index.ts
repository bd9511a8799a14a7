export * from './driver';
export * from './errors';
export * from './guest-memory-zones';
export * from './memory-devices';
export * from './qemu-launcher';
export * from './qga-client';
export * from './qmp-client';
