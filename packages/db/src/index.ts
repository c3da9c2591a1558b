export * from './pool.js';
export * from './migrate.js';
export * from './errors.js';
export * from './tokens.js';
export * from './channels.js';
export * from './hosts.js';
export * from './allowlist.js';
export * from './listen.js';
// --- persister helper: add `export * from './decision-store.js';` on the line below ---
export * from './decision-store.js';
