export * from './context';
export * from './mutations';
export * from './pagination';
export * from './host.service';
export * from './pool.service';
export * from './api-key.service';
