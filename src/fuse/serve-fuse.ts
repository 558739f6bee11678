/**
 * Serves a BlockDevice as one regular file in a FUSE mount, in pure Node.
 *
 * Threads: K reader workers block in `read(2)` on `/dev/fuse` and answer metadata
 * requests themselves; READ/WRITE/FSYNC/FALLOCATE go to this (the serving) thread,
 * which owns the device, runs the async device call on the worker's shared buffer in
 * place and wakes the worker, which writes the reply. Nothing touches the libuv pool.
 *
 * Lifecycle: `serveFuse` opens /dev/fuse, starts the readers, runs
 * `mount -i -t fuse.obd -o fd=3,… obd MNT` with the fd as the child's fd 3, and
 * resolves once the kernel's INIT has been answered. `unmount()` runs `umount MNT`,
 * falls back to a lazy unmount when busy, and aborts the connection if the server is
 * still attached after `abortAfterMs`. `closed` resolves when every reader has exited
 * and the fd is closed — after `unmount()`, an external umount, or an abort.
 *
 * Never access the served file synchronously from the serving thread (e.g. `readFileSync`
 * on it, or `execFileSync('mkfs.ext4', …)` on a loop device over it): the data path
 * needs this thread, so that deadlocks.
 *
 * @example
 * ```ts
 * const mount = await serveFuse(device, { mountpoint: '/run/obd/1' });
 * // losetup -f --show --direct-io=on /run/obd/1/block …
 * await mount.unmount();
 * ```
 */
import { closeSync, openSync } from 'node:fs';
import { realpath, stat } from 'node:fs/promises';
import { spawn } from 'node:child_process';
import { constants } from 'node:os';
import { join } from 'node:path';
import { debuglog } from 'node:util';
import diagnostics from 'node:diagnostics_channel';
import type { BlockDevice } from '../io/block-device.ts';
import { FailedPreconditionError, InvalidArgumentError, NotFoundError, ObdError } from '../io/errors.ts';
import { AlignedAccess } from './_aligned-access.ts';
import { startWorker } from './_start-worker.ts';
import { CTL_BYTES, CTL_F64_AT, Ctl, CtlF64, SHARED_BYTES, Shared, SlotState } from './_channel.ts';
import type { WorkerMessage } from './_channel.ts';
import { DEFAULT_MAX_IO, DeviceOpCode, FUSE_PAGE_SIZE } from './request-handler.ts';
import type { FuseFileConfig } from './request-handler.ts';
import type { InitOut } from './protocol.ts';
import { abortFuseConnection, findMount } from './fuse-connection.ts';
import type { MountInfo } from './fuse-connection.ts';

const log = debuglog('obd');
const E = constants.errno;
/** `obd:fuse:request` — one message per device request: `{ op, offset, length, result, ms }`. */
const requestChannel = diagnostics.channel('obd:fuse:request');
const FSTYPE = 'fuse.obd';
const COMMAND_TIMEOUT_MS = 10_000;
const OP_NAMES: Record<number, string> = { 1: 'READ', 2: 'WRITE', 3: 'FSYNC', 4: 'DISCARD' };

export interface ServeFuseOptions {
  /** An existing empty directory to mount on. */
  mountpoint: string;
  /** Name of the file in the mount. Default `block`. */
  name?: string;
  /** Reader threads (= device requests in flight). Default 4. */
  workers?: number;
  /** Log every request with `NODE_DEBUG=obd`. Device errors are always logged there. */
  debug?: boolean;
  /**
   * Answer OPEN with FOPEN_DIRECT_IO, so the FUSE file keeps no page cache of its own.
   * Default true (see README.md for the measurements).
   */
  directIo?: boolean;
  /** Alignment the device requires; unaligned requests are widened. Default 512. */
  alignment?: number;
  /** Limit for `mount` and for the kernel's INIT. Default 10 s. */
  mountTimeoutMs?: number;
}

/** A served device. */
export interface FuseMount {
  /** Path of the file inside the mount (give this to losetup). */
  readonly path: string;
  /** The resolved mountpoint. */
  readonly mountpoint: string;
  /** Kernel connection id (`/sys/fs/fuse/connections/<id>`). */
  readonly connection: number;
  /** What the kernel and server agreed in INIT. */
  readonly init: InitOut;
  /**
   * Unmounts (lazily when busy), waits for the readers to stop, aborts the connection
   * if that takes longer than `abortAfterMs` (default 5000), and closes the fd.
   */
  unmount(options?: { abortAfterMs?: number }): Promise<void>;
  /** Resolves when the server has stopped for any reason. Never rejects. */
  readonly closed: Promise<void>;
}

interface Channel {
  bytes: Uint8Array;
  ctl: Int32Array;
  f64: Float64Array;
}

interface CommandResult {
  code: number | null;
  output: string;
}

/** Runs a command with `fd` as its fd 3 (when given), bounded by a timeout. */
function command(argv: string[], options: { fd?: number; timeoutMs?: number } = {}): Promise<CommandResult> {
  return new Promise((resolve) => {
    const stdio: Array<'ignore' | 'pipe' | number> = ['ignore', 'pipe', 'pipe'];
    if (options.fd !== undefined) stdio.push(options.fd);
    const child = spawn(argv[0] as string, argv.slice(1), { stdio });
    let output = '';
    child.stdout?.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr?.on('data', (d: Buffer) => (output += d.toString()));
    const timer = setTimeout(() => {
      output += `(killed after ${options.timeoutMs ?? COMMAND_TIMEOUT_MS} ms)`;
      child.kill('SIGKILL');
    }, options.timeoutMs ?? COMMAND_TIMEOUT_MS);
    child.on('error', (e) => {
      clearTimeout(timer);
      resolve({ code: null, output: e.message });
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, output: output.trim() });
    });
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

function validateName(name: string): void {
  const bytes = Buffer.byteLength(name);
  if (name === '' || name === '.' || name === '..' || name.includes('/') || name.includes('\0') || bytes > 255) {
    throw new InvalidArgumentError(`Cannot serve FUSE: file name ${JSON.stringify(name)} is not a single path component`);
  }
}

/** errno for a failed device call: the one place device errors meet FUSE. */
function errnoFor(e: unknown, code: number): number {
  if (e instanceof ObdError) {
    switch (e.code) {
      case 'ERR_INVALID_ARGUMENT':
        return E.EINVAL;
      case 'ERR_FAILED_PRECONDITION':
        return code === DeviceOpCode.READ ? E.EIO : E.EROFS;
      case 'ERR_UNSUPPORTED':
        return E.EOPNOTSUPP;
      default:
        return E.EIO;
    }
  }
  return E.EIO;
}

interface ServerOptions {
  mountpoint: string;
  workers: number;
  alignment: number;
  debug: boolean;
  mountTimeoutMs: number;
}

class FuseServer implements FuseMount {
  readonly path: string;
  readonly mountpoint: string;
  readonly closed: Promise<void>;

  readonly #device: BlockDevice;
  readonly #fd: number;
  readonly #config: FuseFileConfig;
  readonly #options: ServerOptions;
  readonly #access: AlignedAccess;
  readonly #shared = new Int32Array(new SharedArrayBuffer(SHARED_BYTES));
  readonly #channels: Channel[] = [];
  readonly #workersDone: Promise<void>;
  #resolveWorkersDone: () => void = () => {};
  #resolveClosed: () => void = () => {};
  #resolveInit: ((init: InitOut) => void) | undefined;
  #running = 0;
  #connection = -1;
  #init: InitOut | undefined;
  #unmounting: Promise<void> | undefined;
  #isClosed = false;

  constructor(device: BlockDevice, fd: number, options: ServerOptions & { config: FuseFileConfig }) {
    this.#device = device;
    this.#fd = fd;
    this.#config = options.config;
    this.#options = options;
    this.mountpoint = options.mountpoint;
    this.path = join(options.mountpoint, options.config.name);
    this.#access = new AlignedAccess(device, options.alignment);
    this.closed = new Promise((resolve) => (this.#resolveClosed = resolve));
    this.#workersDone = new Promise((resolve) => (this.#resolveWorkersDone = resolve));
  }

  get connection(): number {
    return this.#connection;
  }

  get init(): InitOut {
    return this.#init as InitOut;
  }

  /** Starts the readers, mounts, and waits for INIT; on failure leaves nothing behind. */
  async start(): Promise<void> {
    const initialized = new Promise<InitOut>((resolve) => (this.#resolveInit = resolve));
    let mounted = false;
    try {
      await this.#startWorkers();
      const opts = ['fd=3', 'rootmode=40000', `user_id=${this.#config.uid}`, `group_id=${this.#config.gid}`, 'allow_other', 'default_permissions'];
      if (this.#device.readOnly) opts.push('ro');
      const r = await command(['mount', '-i', '-t', FSTYPE, '-o', opts.join(','), 'obd', this.mountpoint], {
        fd: this.#fd,
        timeoutMs: this.#options.mountTimeoutMs,
      });
      // A mount killed by the timeout may still have attached.
      mounted = r.code === 0 || (r.code === null && (await this.#findOwnMount()) !== undefined);
      if (!mounted) throw new FailedPreconditionError(`Cannot mount FUSE at ${this.mountpoint}: mount exited ${r.code}: ${r.output}`);
      const info = await this.#findOwnMount();
      if (info !== undefined) this.#connection = info.minor;
      const timeout = sleep(this.#options.mountTimeoutMs).then(() => 'timeout' as const);
      const init = await Promise.race([initialized, timeout, this.#workersDone.then(() => 'exited' as const)]);
      if (init === 'timeout' || init === 'exited') {
        throw new FailedPreconditionError(
          init === 'timeout'
            ? `Cannot serve FUSE at ${this.mountpoint}: the kernel's INIT was not answered within ${this.#options.mountTimeoutMs} ms`
            : `Cannot serve FUSE at ${this.mountpoint}: every reader thread exited before INIT`,
        );
      }
      this.#init = init;
    } catch (e) {
      await this.#teardownAfterFailedStart(mounted);
      throw e;
    }
    void this.#workersDone.then(() => this.#finish());
  }

  async #startWorkers(): Promise<void> {
    const slotBytes = (this.#config.maxIo ?? DEFAULT_MAX_IO) + FUSE_PAGE_SIZE;
    const shared = this.#shared.buffer as SharedArrayBuffer;
    const count = this.#options.workers;
    this.#running = count; // Counted up front: an early exit must not look like the last one.
    const exited = (): void => {
      if (--this.#running === 0) this.#resolveWorkersDone();
    };
    for (let index = 0; index < count; index++) {
      const slot = new SharedArrayBuffer(slotBytes);
      const ctl = new SharedArrayBuffer(CTL_BYTES);
      this.#channels.push({ bytes: new Uint8Array(slot), ctl: new Int32Array(ctl, 0, 4), f64: new Float64Array(ctl, CTL_F64_AT, 2) });
      let worker;
      try {
        worker = await startWorker({ fd: this.#fd, index, slot, ctl, shared, config: this.#config, trace: this.#options.debug });
      } catch (e) {
        for (let i = index; i < count; i++) exited();
        throw e;
      }
      worker.on('message', (m: WorkerMessage) => this.#onMessage(m));
      worker.on('error', (e) => log('fuse: reader %d failed: %s', index, e.message));
      worker.on('exit', exited);
    }
  }

  async #teardownAfterFailedStart(mounted: boolean): Promise<void> {
    this.#stop();
    if (mounted) {
      if (this.#connection >= 0) await abortFuseConnection(this.#connection).catch((e: Error) => log('fuse: %s', e.message));
      const r = await command(['umount', '-l', this.mountpoint]);
      if (r.code !== 0) log('fuse: cannot detach %s after a failed start: %s', this.mountpoint, r.output);
    }
    if (this.#running > 0 && !(await this.#readersStopWithin(COMMAND_TIMEOUT_MS))) {
      log('fuse: reader threads still blocked after a failed start at %s', this.mountpoint);
    }
    this.#closeFd();
    this.#isClosed = true;
    this.#resolveClosed();
  }

  /** True once every reader has exited, false if that takes longer than `ms`. */
  #readersStopWithin(ms: number): Promise<boolean> {
    return Promise.race([this.#workersDone.then(() => true), sleep(ms).then(() => false)]);
  }

  #closeFd(): void {
    try {
      closeSync(this.#fd);
    } catch (e) {
      log('fuse: cannot close /dev/fuse: %s', (e as Error).message);
    }
  }

  /** After the readers stopped on their own or through unmount(). */
  async #finish(): Promise<void> {
    this.#closeFd();
    // Readers stopped without unmount() (the connection was aborted): detach the dead mount.
    if (this.#unmounting === undefined && (await this.#findOwnMount()) !== undefined) {
      const r = await command(['umount', '-l', this.mountpoint]);
      if (r.code !== 0) log('fuse: cannot detach %s after the connection ended: %s', this.mountpoint, r.output);
    }
    this.#isClosed = true;
    this.#resolveClosed();
  }

  /** Our mount at the mountpoint (fuse.obd; the same connection once known). */
  async #findOwnMount(): Promise<MountInfo | undefined> {
    const m = await findMount(this.mountpoint);
    if (m === undefined || m.fstype !== FSTYPE) return undefined;
    return this.#connection < 0 || m.minor === this.#connection ? m : undefined;
  }

  /** Makes every reader stop at its next chance (EPERM poll, device wait). */
  #stop(): void {
    Atomics.store(this.#shared, Shared.STOP, 1);
  }

  #onMessage(m: WorkerMessage): void {
    if (typeof m === 'number') {
      void this.#run(m);
    } else if (m.t === 'init') {
      this.#resolveInit?.(m.init);
    } else if (m.t === 'log') {
      log('%s', m.text);
    } else if (m.t === 'exit' && m.reason.startsWith('failed')) {
      log('fuse: reader %s', m.reason);
    }
  }

  async #run(index: number): Promise<void> {
    const ch = this.#channels[index] as Channel;
    const code = ch.ctl[Ctl.CODE] as number;
    const dataAt = ch.ctl[Ctl.DATA_AT] as number;
    const offset = ch.f64[CtlF64.OFFSET] as number;
    const length = ch.f64[CtlF64.LENGTH] as number;
    const started = requestChannel.hasSubscribers ? performance.now() : 0;
    let result: number;
    try {
      switch (code) {
        case DeviceOpCode.READ:
          result = await this.#access.read(ch.bytes.subarray(dataAt, dataAt + length), offset);
          break;
        case DeviceOpCode.WRITE:
          result = await this.#access.write(ch.bytes.subarray(dataAt, dataAt + length), offset);
          break;
        case DeviceOpCode.FLUSH:
          await this.#access.flush();
          result = 0;
          break;
        case DeviceOpCode.TRIM:
          await this.#access.discard(offset, length);
          result = 0;
          break;
        default:
          result = -E.EINVAL;
      }
    } catch (e) {
      result = -errnoFor(e, code);
      log('fuse: %s of %d bytes at %d failed with errno %d: %s', OP_NAMES[code] ?? code, length, offset, -result, (e as Error).message);
    }
    if (requestChannel.hasSubscribers) {
      requestChannel.publish({ op: OP_NAMES[code], offset, length, result, ms: performance.now() - started });
    }
    ch.ctl[Ctl.RESULT] = result;
    Atomics.store(ch.ctl, Ctl.STATE, SlotState.DONE);
    Atomics.notify(ch.ctl, Ctl.STATE);
  }

  unmount(options: { abortAfterMs?: number } = {}): Promise<void> {
    this.#unmounting ??= this.#unmount(options.abortAfterMs ?? 5000);
    return this.#unmounting;
  }

  async #unmount(abortAfterMs: number): Promise<void> {
    if (this.#isClosed) return;
    if ((await this.#findOwnMount()) !== undefined) {
      const r = await command(['umount', this.mountpoint]);
      if (r.code !== 0 && (await this.#findOwnMount()) !== undefined) {
        log('fuse: umount %s failed (%s); detaching lazily', this.mountpoint, r.output);
        const lazy = await command(['umount', '-l', this.mountpoint]);
        if (lazy.code !== 0) log('fuse: umount -l %s failed: %s', this.mountpoint, lazy.output);
      }
    }
    if (!(await this.#readersStopWithin(abortAfterMs))) {
      log('fuse: %s still has users after %d ms; aborting connection %d', this.mountpoint, abortAfterMs, this.#connection);
      this.#stop();
      if (this.#connection >= 0) await abortFuseConnection(this.#connection).catch((e: Error) => log('fuse: %s', e.message));
      if (!(await this.#readersStopWithin(COMMAND_TIMEOUT_MS))) {
        throw new FailedPreconditionError(
          `Cannot unmount FUSE at ${this.mountpoint}: reader threads still blocked after aborting connection ${this.#connection}`,
        );
      }
    }
    await this.closed;
  }
}

/**
 * Mounts a FUSE filesystem at `options.mountpoint` holding one file (`options.name`,
 * default `block`) whose bytes are the device's, and serves it until unmounted.
 *
 * Rejects with `NotFoundError` when the mountpoint is missing, `InvalidArgumentError`
 * for bad options, `FailedPreconditionError` when /dev/fuse cannot be opened or the
 * mount fails (needs root); nothing is left running or open then.
 */
export async function serveFuse(device: BlockDevice, options: ServeFuseOptions): Promise<FuseMount> {
  const name = options.name ?? 'block';
  validateName(name);
  const workers = options.workers ?? 4;
  if (!Number.isSafeInteger(workers) || workers < 1 || workers > 64) {
    throw new InvalidArgumentError(`Cannot serve FUSE: workers ${workers} is not between 1 and 64`);
  }
  const alignment = options.alignment ?? 512;
  if (!Number.isSafeInteger(alignment) || alignment < 1) {
    throw new InvalidArgumentError(`Cannot serve FUSE: alignment ${alignment} is not a positive integer`);
  }
  let mountpoint: string;
  try {
    mountpoint = await realpath(options.mountpoint);
  } catch (e) {
    throw new NotFoundError(`Cannot serve FUSE at ${options.mountpoint}: mountpoint does not exist`, { cause: e });
  }
  if (!(await stat(mountpoint)).isDirectory()) {
    throw new InvalidArgumentError(`Cannot serve FUSE at ${mountpoint}: mountpoint is not a directory`);
  }
  let fd: number;
  try {
    fd = openSync('/dev/fuse', 'r+');
  } catch (e) {
    throw new FailedPreconditionError(`Cannot open /dev/fuse: ${(e as Error).message}`, { cause: e });
  }
  const config: FuseFileConfig = {
    name,
    size: device.size,
    readOnly: device.readOnly,
    directIo: options.directIo ?? true,
    uid: process.getuid?.() ?? 0,
    gid: process.getgid?.() ?? 0,
    time: Math.floor(Date.now() / 1000),
    maxIo: DEFAULT_MAX_IO,
  };
  const server = new FuseServer(device, fd, {
    config,
    mountpoint,
    workers,
    alignment,
    debug: options.debug ?? false,
    mountTimeoutMs: options.mountTimeoutMs ?? COMMAND_TIMEOUT_MS,
  });
  await server.start();
  return server;
}
