// Entry point for running the CLI from source (tests, benchmarks): node --import tsx --conditions=banbus-source.
import { runCli } from './main.js';

process.exitCode = await runCli(process.argv.slice(2));
