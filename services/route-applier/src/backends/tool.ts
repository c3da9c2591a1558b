// Running the kernel tools (ip, ipset, nft): one-shot commands, and long-lived processes fed commands
// line by line on stdin, so that a change costs a pipe write instead of a fork.
import { execFile, spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { once } from 'node:events';
import type { Logger } from '@banbus/runtime';
import { BackendError } from './types.js';

/** argv prefix that runs `tool` in the network namespace (or not). `ip` has its own -n option. */
export function inNamespace(netns: string | undefined, tool: string, args: string[]): [string, string[]] {
  if (!netns) return [tool, args];
  if (tool === 'ip') return ['ip', ['-n', netns, ...args]];
  return ['ip', ['netns', 'exec', netns, tool, ...args]];
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a command to its end, feeding `input` on stdin; never rejects for a non-zero exit (see code). */
export function run(command: string, args: string[], input?: string): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      command,
      args,
      { maxBuffer: 512 * 2 ** 20, encoding: 'utf8' },
      (err, stdout, stderr) => {
        const e = err as (NodeJS.ErrnoException & { code?: number | string }) | null;
        if (e && typeof e.code === 'string') {
          reject(new BackendError(`cannot run ${command}: ${e.message}`, { cause: err }));
          return;
        }
        resolve({ code: e ? Number(e.code ?? 1) : 0, stdout, stderr });
      },
    );
    child.stdin?.on('error', () => undefined); // the tool may exit before reading everything
    if (input !== undefined) child.stdin?.end(input);
    else child.stdin?.end();
  });
}

/**
 * Runs a command fed `count` lines made by `lineAt` as the pipe takes them: a bulk load starts at
 * once and never sits whole in one string. Never rejects for a non-zero exit (see code).
 */
export function runLines(
  command: string,
  args: string[],
  count: number,
  lineAt: (index: number) => string,
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.stdin.on('error', () => undefined); // the tool may stop reading at a bad line
    child.once('error', (err) =>
      reject(new BackendError(`cannot run ${command}: ${err.message}`, { cause: err })),
    );
    child.once('close', (code, signal) => resolve({ code: code ?? (signal ? 1 : 0), stdout, stderr }));
    let i = 0;
    const feed = (): void => {
      while (i < count) {
        const end = Math.min(count, i + CHUNK_LINES);
        let text = '';
        for (; i < end; i++) text += lineAt(i) + '\n';
        if (!child.stdin.write(text)) {
          child.stdin.once('drain', feed);
          return;
        }
      }
      child.stdin.end();
    };
    feed();
  });
}

/** Like run, but rejects with the tool's message unless it exited 0. */
export async function runOk(command: string, args: string[], input?: string): Promise<string> {
  const r = await run(command, args, input);
  if (r.code !== 0) {
    throw new BackendError(
      `${command} ${args.join(' ')} failed (${r.code}): ${r.stderr.trim().slice(0, 500)}`,
    );
  }
  return r.stdout;
}

export interface LineToolOptions {
  name: string;
  command: string;
  args: string[];
  logger: Logger;
  /** A harmless command whose answer proves every line written before it was executed. */
  sentinel: string;
  /** Where the sentinel's answer appears and how to spot it. */
  sentinelStream: 'stdout' | 'stderr';
  isSentinel(line: string): boolean;
  /** Every other line of stderr (and of stdout, when the sentinel answers there, those are dropped). */
  onError(line: string, lineNumber: number): void;
}

interface Waiter {
  resolve(): void;
  reject(err: Error): void;
}

/**
 * Lines written to a single write() call at most, so one huge bulk load does not sit in one string.
 * Kept under V8's large-object size (128 kB): such strings live outside the young generation and
 * wait for a full GC, which a snapshot of 100k lines would otherwise pile up by megabytes.
 */
const CHUNK_LINES = 1_024;

/**
 * A long-lived tool process reading commands from stdin (`ip -batch -`, `ipset -`, `nft -i`). `exec`
 * writes the lines plus a sentinel and resolves when the sentinel's answer shows up, i.e. when the kernel
 * has every line before it. The process is started again when it died.
 */
export class LineTool {
  private child: ChildProcessWithoutNullStreams | undefined;
  private waiters: Waiter[] = [];
  /** Lines written to the current process (tools number their errors from its first line). */
  private written = 0;
  private closing = false;

  constructor(private readonly options: LineToolOptions) {}

  /** Lines written to the current process so far (its next line gets number lines + 1). */
  get lines(): number {
    return this.written;
  }

  private start(): ChildProcessWithoutNullStreams {
    const { command, args, logger, name } = this.options;
    const child = spawn(command, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    this.written = 0;
    let failed: Error | undefined;
    child.on('error', (err) => {
      failed = err;
    });
    child.stdin.on('error', () => undefined); // reported through 'exit'
    const onLine = (stream: 'stdout' | 'stderr') => {
      let rest = '';
      return (chunk: Buffer) => {
        const text = rest + chunk.toString('utf8');
        const lines = text.split('\n');
        rest = lines.pop() ?? '';
        for (const line of lines) this.line(stream, line);
      };
    };
    child.stdout.on('data', onLine('stdout'));
    child.stderr.on('data', onLine('stderr'));
    child.on('close', (code, signal) => {
      if (this.child === child) this.child = undefined;
      const waiters = this.waiters.splice(0);
      if (this.closing && waiters.length === 0) return;
      const why = failed ? failed.message : `exited (${signal ?? code})`;
      logger.warn({ tool: name, why }, 'kernel tool process ended');
      for (const w of waiters) w.reject(new BackendError(`${name}: ${why}`, { cause: failed }));
    });
    logger.debug({ tool: name, command, args }, 'started kernel tool process');
    return child;
  }

  private line(stream: 'stdout' | 'stderr', line: string): void {
    if (stream === this.options.sentinelStream && this.options.isSentinel(line)) {
      const waiter = this.waiters.shift();
      // The other stream's data read in this same turn (errors of the lines before) comes first.
      if (waiter) setImmediate(() => waiter.resolve());
      return;
    }
    if (stream === 'stderr') this.options.onError(line, this.written);
  }

  /**
   * Writes `count` lines (each one command, made by `lineAt` as they are written, so a bulk load never
   * holds all of them) and resolves once the tool executed them. `onNumbered` gets the number of the
   * first line in the tool's count, for tools that name failed lines by number.
   */
  async exec(
    count: number,
    lineAt: (index: number) => string,
    onNumbered?: (firstLine: number) => void,
  ): Promise<void> {
    if (this.closing) throw new BackendError(`${this.options.name}: closed`);
    this.child ??= this.start();
    const child = this.child;
    onNumbered?.(this.written + 1);
    const done = new Promise<void>((resolve, reject) => this.waiters.push({ resolve, reject }));
    done.catch(() => undefined);
    try {
      for (let i = 0; i < count; i += CHUNK_LINES) {
        const end = Math.min(count, i + CHUNK_LINES);
        const chunk = new Array<string>(end - i);
        for (let j = i; j < end; j++) chunk[j - i] = lineAt(j);
        this.written += chunk.length;
        if (!child.stdin.write(chunk.join('\n') + '\n')) await drained(child);
      }
      this.written += 1;
      child.stdin.write(this.options.sentinel + '\n');
    } catch (err) {
      throw new BackendError(`${this.options.name}: cannot write: ${(err as Error).message}`, { cause: err });
    }
    await done;
  }

  async close(): Promise<void> {
    this.closing = true;
    const child = this.child;
    if (!child) return;
    const closed = once(child, 'close');
    child.stdin.end();
    const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
    await closed.catch(() => undefined);
    clearTimeout(timer);
  }
}

/** Waits until the child's stdin takes more, or the child is gone (then exec's waiter rejects). */
function drained(child: ChildProcessWithoutNullStreams): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      child.stdin.off('drain', done);
      child.off('close', done);
      resolve();
    };
    child.stdin.once('drain', done);
    child.once('close', done);
  });
}
