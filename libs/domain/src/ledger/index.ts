export * from './ledger-state';
export * from './invariants';
export * from './allocator';
