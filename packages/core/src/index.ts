export * from './address.js';
export * from './model.js';
export * from './policy.js';
export * from './config.js';
export * from './blocklist.js';
export * from './config-route-applier.js';
export * from './config-importer-3cx.js';
export * from './config-console.js';
