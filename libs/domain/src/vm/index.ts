export * from './vm';
export * from './memory-group-resource';
export * from './report';
