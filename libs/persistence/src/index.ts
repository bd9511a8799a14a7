export * from './database';
export * from './host.repository';
export * from './pool.repository';
export * from './api-key.repository';
export * from './audit.repository';
export * from './idempotency.repository';
