import type { Channel } from 'amqplib';

/** Every exchange and queue of one banbus installation; all names start with the namespace. */
export interface Topology {
  namespace: string;
  /** `${ns}.reports` (topic, durable); routing key `report.${action}`. */
  reportsExchange: string;
  /** `${ns}.persister` (quorum), bound to reports with '#'. */
  persisterQueue: string;
  /** `${ns}.decisions` (fanout, durable). */
  decisionsExchange: string;
  /** `${ns}.dead-letter` (topic, durable). */
  deadLetterExchange: string;
  /** `${ns}.dead-letter` (quorum), bound '#'. Messages keep their body; headers add x-banbus-reason,
   *  x-banbus-queue, x-banbus-attempts. */
  deadLetterQueue: string;
  /** `${ns}.aggregator` (declared by the aggregator itself). */
  aggregatorQueue: string;
  /** `${ns}.applier.${host}`: one durable queue per host, so a host that was away catches up. */
  applierQueue(host: string): string;
}

/** Namespaces end up in queue names and routing: keep them to characters every tool quotes safely. */
const NAMESPACE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$/;

export function topology(namespace: string): Topology {
  if (!NAMESPACE.test(namespace)) {
    throw new Error(`invalid namespace "${namespace}": use letters, digits, '.', '_' and '-' (at most 100)`);
  }
  return {
    namespace,
    reportsExchange: `${namespace}.reports`,
    persisterQueue: `${namespace}.persister`,
    decisionsExchange: `${namespace}.decisions`,
    deadLetterExchange: `${namespace}.dead-letter`,
    deadLetterQueue: `${namespace}.dead-letter`,
    aggregatorQueue: `${namespace}.aggregator`,
    applierQueue: (host: string) => `${namespace}.applier.${host}`,
  };
}

/**
 * Arguments of every durable work queue: quorum (replicated, survives broker restarts), dead-lettering to
 * the namespace's dead-letter exchange. The delivery limit is only a safety net above the consumer's own
 * maxRetries (RabbitMQ 4.x would otherwise apply 20, which transient requeues could exhaust).
 */
export function quorumQueueArguments(t: Topology): Record<string, unknown> {
  return {
    'x-queue-type': 'quorum',
    'x-dead-letter-exchange': t.deadLetterExchange,
    'x-delivery-limit': 50,
  };
}

/** Declares a quorum work queue of this topology (idempotent when the arguments match). */
export async function declareQuorumQueue(channel: Channel, t: Topology, queue: string): Promise<void> {
  await channel.assertQueue(queue, { durable: true, arguments: quorumQueueArguments(t) });
}

/**
 * Declares the shared part of the topology: reports → persister, decisions fanout, dead-letter. Idempotent;
 * run on every (re)connect. Consumers declare their own queues (aggregator, appliers) via `declare`.
 */
export async function declareTopology(channel: Channel, t: Topology): Promise<void> {
  await channel.assertExchange(t.reportsExchange, 'topic', { durable: true });
  await channel.assertExchange(t.decisionsExchange, 'fanout', { durable: true });
  await channel.assertExchange(t.deadLetterExchange, 'topic', { durable: true });
  // The dead-letter queue itself has no dead-letter exchange: a message rejected there must not loop.
  await channel.assertQueue(t.deadLetterQueue, { durable: true, arguments: { 'x-queue-type': 'quorum' } });
  await channel.bindQueue(t.deadLetterQueue, t.deadLetterExchange, '#');
  await declareQuorumQueue(channel, t, t.persisterQueue);
  await channel.bindQueue(t.persisterQueue, t.reportsExchange, '#');
}
