export * from './config';
export * from './data-services';
export * from './embedded-postgres';
export * from './embedded-redis';
export * from './migrations';
export * from './net';
