/** PostgreSQL NOTIFY channels. */
export const CHANNELS = {
  /** New decision_log rows were committed (the outbox relay wakes up). */
  decisionLog: 'banbus_decision_log',
  /** The allowlist changed; payload is JSON {op: 'add'|'remove', network}. */
  allowlist: 'banbus_allowlist',
} as const;
