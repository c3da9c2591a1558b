export { runCli, createProgram } from './main.js';
export { runService, SERVICES, type ServiceName, type RunningService } from './commands/run.js';
export type { CliIo } from './io.js';
