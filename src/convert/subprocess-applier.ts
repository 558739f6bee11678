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
 *
 * `prepare()` starts the next child ahead (while the device is attached and mkfs runs):
 * starting Node and loading the applier costs 0.4-2 s per layer. The spare waits for its
 * options over IPC, holds no reference on the event loop, and exits when this process
 * goes away; `close()` ends an unused one.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { extname } from 'node:path';
import { once } from 'node:events';
import type { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { errorClassOf, FailedPreconditionError, UnavailableError } from '../io/errors.ts';
import { childExecArgv } from '../attach/node-exec-argv.ts';
import type { ApplyOptions, ApplyStats, LayerApplier } from './layer-applier.ts';


type ChildMessage =
  | { type: 'progress'; tarBytes: number; entries: number }
  | { type: 'warning'; entry: string; message: string }
  | { type: 'result'; stats: ApplyStats }
  | { type: 'error'; code?: string; name: string; message: string };

/** The error a child reported, as the same domain class. */
function rebuild(m: { code?: string; name: string; message: string }): Error {
  const Cls = errorClassOf(m.code);
  return Cls !== undefined ? new Cls(m.message) : new FailedPreconditionError(`Cannot apply layer: ${m.name}: ${m.message}`);
}

export interface SubprocessApplierOptions {
  idleTimeoutMs?: number;
}

/** Starts an apply child that waits for its options over IPC. */
function spawnChild(): ChildProcess {
  const self = fileURLToPath(import.meta.url);
  const script = fileURLToPath(new URL(`./_apply-child${extname(self)}`, import.meta.url));
  return spawn(process.execPath, [...childExecArgv(), script], { stdio: ['pipe', 'ignore', 'pipe', 'ipc'] });
}

/** Whether the child and its pipes keep this process alive. */
function setRef(child: ChildProcess, on: boolean): void {
  const handles: Array<{ ref?: () => void; unref?: () => void } | null | undefined> = [child, child.channel, child.stdin as unknown as { ref?: () => void }, child.stderr as unknown as { ref?: () => void }];
  for (const h of handles) {
    if (on) h?.ref?.();
    else h?.unref?.();
  }
}

export class SubprocessApplier implements LayerApplier {
  readonly #idleMs: number;
  #spare: ChildProcess | undefined;

  constructor(options: SubprocessApplierOptions = {}) {
    this.#idleMs = options.idleTimeoutMs ?? 600_000;
  }

  prepare(): void {
    if (this.#spare !== undefined && this.#spare.exitCode === null && this.#spare.signalCode === null) return;
    const child = spawnChild();
    child.once('error', () => undefined);
    child.stdin?.on('error', () => undefined);
    setRef(child, false);
    this.#spare = child;
  }

  async close(): Promise<void> {
    const child = this.#spare;
    this.#spare = undefined;
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    setRef(child, true); // else nothing keeps this process waiting for the exit
    child.kill('SIGKILL');
    await exited;
  }

  async apply(layer: AsyncIterable<Uint8Array>, rootDir: string, options: ApplyOptions = {}): Promise<ApplyStats> {
    let child = this.#spare;
    this.#spare = undefined;
    if (child === undefined || child.exitCode !== null || child.signalCode !== null || child.connected !== true) {
      if (child !== undefined) child.kill('SIGKILL');
      child = spawnChild();
      child.once('error', () => undefined);
      child.stdin?.on('error', () => undefined);
    }
    setRef(child, true);
    const running = child;
    const stdin = running.stdin as Writable;
    let stderr = '';
    const onStderr = (t: Buffer | string): void => {
      if (stderr.length < 16384) stderr += t.toString();
    };
    running.stderr?.on('data', onStderr);
    let result: ApplyStats | undefined;
    let failure: Error | undefined;
    let settle: () => void = () => undefined;
    // Resolves on the result, an error, or the child's exit.
    const finished = new Promise<void>((resolve) => (settle = resolve));
    let idle: NodeJS.Timeout | undefined;
    const arm = (): void => {
      clearTimeout(idle);
      idle = setTimeout(() => {
        failure ??= new UnavailableError(`Cannot apply layer onto ${rootDir}: no progress for ${Math.round(this.#idleMs / 1000)} s`);
        running.kill('SIGKILL');
      }, this.#idleMs);
    };
    arm();
    const abort = (): void => {
      failure ??= new FailedPreconditionError(`Cannot apply layer onto ${rootDir}: interrupted`);
      running.kill('SIGKILL');
    };
    if (options.signal?.aborted === true) abort();
    options.signal?.addEventListener('abort', abort);
    const onMessage = (m: ChildMessage): void => {
      arm();
      if (m.type === 'progress') options.onProgress?.({ tarBytes: m.tarBytes, entries: m.entries });
      else if (m.type === 'warning') options.onWarning?.({ entry: m.entry, message: m.message });
      else if (m.type === 'result') {
        result = m.stats;
        settle();
      } else if (m.type === 'error') {
        failure ??= rebuild(m);
        settle();
      }
    };
    const onExit = (code: number | null, signal: NodeJS.Signals | null): void => {
      if (result === undefined) {
        failure ??= new FailedPreconditionError(`Cannot apply layer onto ${rootDir}: the apply process exited ${code ?? signal} without a result${stderr ? `: ${stderr.trim()}` : ''}`);
      }
      settle();
    };
    running.on('message', onMessage);
    running.once('exit', onExit);
    let reuse = false;
    try {
      running.send({ rootDir, ...(options.maxFileSize !== undefined ? { maxFileSize: options.maxFileSize } : {}) }, (e: Error | null) => {
        if (e !== null) running.kill('SIGKILL');
      });
      // The layer as frames (u32 little-endian length, bytes), then an empty frame.
      const stopped = finished.then(() => 'stopped' as const);
      const write = async (bytes: Uint8Array): Promise<boolean> => {
        if (stdin.write(bytes)) return true;
        return (await Promise.race([once(stdin, 'drain').then(() => 'drained' as const, () => 'stopped' as const), stopped])) === 'drained';
      };
      const header = (n: number): Uint8Array => {
        const h = new Uint8Array(4);
        new DataView(h.buffer).setUint32(0, n, true);
        return h;
      };
      try {
        let open = true;
        for await (const chunk of layer) {
          if (failure !== undefined || result !== undefined || !open) break;
          if (chunk.length === 0) continue;
          open = (await write(header(chunk.length))) && (await write(chunk));
        }
        if (open && failure === undefined) await write(header(0));
      } catch (e) {
        // The source failed (a download, a decompression upstream of us): the child cannot finish.
        failure ??= e as Error;
        running.kill('SIGKILL');
      }
      await finished;
      if (failure !== undefined) throw failure;
      if (result === undefined) throw new FailedPreconditionError(`Cannot apply layer onto ${rootDir}: the apply process stopped without a result`);
      reuse = true;
      return result;
    } finally {
      clearTimeout(idle);
      options.signal?.removeEventListener('abort', abort);
      running.off('message', onMessage);
      running.off('exit', onExit);
      running.stderr?.off('data', onStderr);
      // A child that finished cleanly (warm, its modules loaded) serves the next layer.
      if (reuse && this.#spare === undefined && running.exitCode === null && running.signalCode === null && running.connected) {
        setRef(running, false);
        this.#spare = running;
      } else if (running.exitCode === null && running.signalCode === null) {
        // Gone before the caller hears of the failure (no process outlives its layer).
        const exited = new Promise<void>((resolve) => running.once('exit', () => resolve()));
        setRef(running, true);
        running.kill('SIGKILL');
        await exited;
      }
    }
  }
}
