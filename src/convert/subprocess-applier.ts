/**
 * `LayerApplier` in a child process: the layer bytes go to the child's standard input,
 * the child runs `DirectoryApplier` and reports progress, warnings and the result over
 * IPC.
 *
 * Why a process: the convertor serves the FUSE device that backs the mounted file system
 * from its own event loop, and that server needs the libuv thread pool for the layer
 * files. File-system calls on the mount from the same process can occupy every pool
 * thread while the kernel throttles dirty pages, waiting for write-back that only the
 * starved server can complete: a deadlock. A worker thread would share the pool; a
 * process does not. It also moves decompression and hashing off the serving thread.
 *
 * A child that reports no progress for `idleTimeoutMs` (default 10 min) is killed and
 * the apply fails as unavailable.
 */
import { spawn } from 'node:child_process';
import { extname } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import {
  AlreadyExistsError,
  DataCorruptionError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  PermissionDeniedError,
  UnavailableError,
  UnsupportedError,
  type ObdError,
} from '../io/errors.ts';
import type { ApplyOptions, ApplyStats, LayerApplier } from './layer-applier.ts';

const ERRORS: Record<string, new (message: string) => ObdError> = {
  ERR_NOT_FOUND: NotFoundError,
  ERR_ALREADY_EXISTS: AlreadyExistsError,
  ERR_INVALID_ARGUMENT: InvalidArgumentError,
  ERR_FAILED_PRECONDITION: FailedPreconditionError,
  ERR_PERMISSION_DENIED: PermissionDeniedError,
  ERR_UNAVAILABLE: UnavailableError,
  ERR_DATA_CORRUPTION: DataCorruptionError,
  ERR_UNSUPPORTED: UnsupportedError,
};

type ChildMessage =
  | { type: 'progress'; tarBytes: number; entries: number }
  | { type: 'warning'; entry: string; message: string }
  | { type: 'result'; stats: ApplyStats }
  | { type: 'error'; code?: string; name: string; message: string };

/** The error a child reported, as the same domain class. */
function rebuild(m: { code?: string; name: string; message: string }): Error {
  const Cls = m.code !== undefined ? ERRORS[m.code] : undefined;
  return Cls !== undefined ? new Cls(m.message) : new FailedPreconditionError(`Cannot apply layer: ${m.name}: ${m.message}`);
}

export interface SubprocessApplierOptions {
  idleTimeoutMs?: number;
}

export class SubprocessApplier implements LayerApplier {
  readonly #idleMs: number;

  constructor(options: SubprocessApplierOptions = {}) {
    this.#idleMs = options.idleTimeoutMs ?? 600_000;
  }

  async apply(layer: AsyncIterable<Uint8Array>, rootDir: string, options: ApplyOptions = {}): Promise<ApplyStats> {
    const self = fileURLToPath(import.meta.url);
    const script = fileURLToPath(new URL(`./_apply-child${extname(self)}`, import.meta.url));
    const execArgv = process.execArgv.filter((a) => !a.startsWith('--test'));
    const args = JSON.stringify({ rootDir, ...(options.maxFileSize !== undefined ? { maxFileSize: options.maxFileSize } : {}) });
    const child = spawn(process.execPath, [...execArgv, script, args], { stdio: ['pipe', 'ignore', 'pipe', 'ipc'] });
    let stderr = '';
    child.stderr?.setEncoding('utf8').on('data', (t: string) => {
      if (stderr.length < 16384) stderr += t;
    });
    let result: ApplyStats | undefined;
    let failure: Error | undefined;
    let idle: NodeJS.Timeout | undefined;
    const arm = (): void => {
      clearTimeout(idle);
      idle = setTimeout(() => {
        failure ??= new UnavailableError(`Cannot apply layer onto ${rootDir}: no progress for ${Math.round(this.#idleMs / 1000)} s`);
        child.kill('SIGKILL');
      }, this.#idleMs);
    };
    arm();
    const abort = (): void => {
      failure ??= new FailedPreconditionError(`Cannot apply layer onto ${rootDir}: interrupted`);
      child.kill('SIGKILL');
    };
    if (options.signal?.aborted === true) abort();
    options.signal?.addEventListener('abort', abort);
    child.on('message', (m: ChildMessage) => {
      arm();
      if (m.type === 'progress') options.onProgress?.({ tarBytes: m.tarBytes, entries: m.entries });
      else if (m.type === 'warning') options.onWarning?.({ entry: m.entry, message: m.message });
      else if (m.type === 'result') result = m.stats;
      else if (m.type === 'error') failure ??= rebuild(m);
    });
    const closed = new Promise<number | null>((resolve, reject) => {
      child.once('error', reject);
      child.once('close', (code) => resolve(code));
    });
    closed.catch(() => {});
    try {
      await pipeline(Readable.from(layer), child.stdin as NodeJS.WritableStream).catch((e: unknown) => {
        // The child stops reading when it fails: its own error explains that better.
        if ((e as NodeJS.ErrnoException).code === 'EPIPE' || (e as NodeJS.ErrnoException).code === 'ERR_STREAM_DESTROYED') return;
        failure ??= e as Error;
        child.kill('SIGKILL');
      });
      const code = await closed;
      if (failure !== undefined) throw failure;
      if (result === undefined) {
        throw new FailedPreconditionError(`Cannot apply layer onto ${rootDir}: the apply process exited ${code} without a result${stderr ? `: ${stderr.trim()}` : ''}`);
      }
      return result;
    } finally {
      clearTimeout(idle);
      options.signal?.removeEventListener('abort', abort);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
  }
}
