export * from './wait.js';
export * from './db.js';
export * from './amqp.js';
