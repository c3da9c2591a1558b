export * from './logger.js';
export * from './metrics.js';
export * from './errors.js';
export * from './http.js';
export * from './probe.js';
export * from './lifecycle.js';
export * from './coalesced.js';
