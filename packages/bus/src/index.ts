export {
  topology,
  declareTopology,
  declareQuorumQueue,
  quorumQueueArguments,
  type Topology,
} from './topology.js';
export {
  Bus,
  BusUnavailableError,
  ATTEMPTS_HEADER,
  REASON_HEADER,
  QUEUE_HEADER,
  redactUrl,
  type BusOptions,
  type PublishOptions,
  type ConsumeOptions,
  type Consumer,
  type Delivery,
} from './bus.js';
