export * from './address.js';
export * from './model.js';
export * from './policy.js';
export * from './config.js';
export * from './blocklist.js';
