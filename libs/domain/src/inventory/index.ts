export * from './names';
export * from './host';
export * from './pool';
export * from './update-mask';
