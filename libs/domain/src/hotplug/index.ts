export * from './reconcile';
export * from './drift';
