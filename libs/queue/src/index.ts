export * from './catalogue';
export * from './requests';
