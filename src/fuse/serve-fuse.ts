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
import { join } from 'node:path';
import { debuglog } from 'node:util';
import type { BlockDevice } from '../io/block-device.ts';
import { FailedPreconditionError, InvalidArgumentError } from '../io/errors.ts';
import type { InitOut } from './protocol.ts';
import { openFuse } from './open-fuse.ts';
import type { FuseMountpoint } from './open-fuse.ts';
import { fuseFileConfig, serveFuseFd } from './serve-fuse-fd.ts';
import type { FuseLocalReads, FuseService } from './serve-fuse-fd.ts';
import { COMMAND_TIMEOUT_MS, runWithFd } from './_run-with-fd.ts';

const log = debuglog('obd');

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
  /** Read-only devices: reader threads serve READ from their own copies (see `serveFuseFd`). */
  localReads?: FuseLocalReads;
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

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

function validateName(name: string): void {
  const bytes = Buffer.byteLength(name);
  if (name === '' || name === '.' || name === '..' || name.includes('/') || name.includes('\0') || bytes > 255) {
    throw new InvalidArgumentError(`Cannot serve FUSE: file name ${JSON.stringify(name)} is not a single path component`);
  }
}

class FuseServer implements FuseMount {
  readonly path: string;
  readonly closed: Promise<void>;
  readonly #fuse: FuseMountpoint;
  readonly #service: FuseService;
  readonly #init: InitOut;
  #unmounting: Promise<void> | undefined;
  #isClosed = false;

  constructor(fuse: FuseMountpoint, service: FuseService, options: { name: string; init: InitOut }) {
    this.#fuse = fuse;
    this.#service = service;
    this.#init = options.init;
    this.path = join(fuse.mountpoint, options.name);
    this.closed = service.done.then(() => this.#finish());
  }

  get mountpoint(): string {
    return this.#fuse.mountpoint;
  }

  get connection(): number {
    return this.#fuse.connection;
  }

  get init(): InitOut {
    return this.#init;
  }

  /** After the readers stopped on their own or through unmount(). */
  async #finish(): Promise<void> {
    this.#fuse.close();
    // Readers stopped without unmount() (the connection was aborted): detach the dead mount.
    if (this.#unmounting === undefined && (await this.#fuse.isMounted())) {
      const r = await runLazyUmount(this.#fuse.mountpoint);
      if (!r) log('fuse: cannot detach %s after the connection ended', this.#fuse.mountpoint);
    }
    this.#isClosed = true;
  }

  /** True once every reader has exited, false if that takes longer than `ms`. */
  #readersStopWithin(ms: number): Promise<boolean> {
    return Promise.race([this.#service.done.then(() => true), sleep(ms).then(() => false)]);
  }

  unmount(options: { abortAfterMs?: number } = {}): Promise<void> {
    this.#unmounting ??= this.#unmount(options.abortAfterMs ?? 5000);
    return this.#unmounting;
  }

  async #unmount(abortAfterMs: number): Promise<void> {
    if (this.#isClosed) return;
    await this.#fuse.unmount();
    if (!(await this.#readersStopWithin(abortAfterMs))) {
      log('fuse: %s still has users after %d ms; aborting connection %d', this.mountpoint, abortAfterMs, this.connection);
      this.#service.stop();
      await this.#fuse.abort();
      if (!(await this.#readersStopWithin(COMMAND_TIMEOUT_MS))) {
        throw new FailedPreconditionError(
          `Cannot unmount FUSE at ${this.mountpoint}: reader threads still blocked after aborting connection ${this.connection}`,
        );
      }
    }
    await this.closed;
  }
}

async function runLazyUmount(mountpoint: string): Promise<boolean> {
  return (await runWithFd(['umount', '-l', mountpoint])).code === 0;
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
  const mountTimeoutMs = options.mountTimeoutMs ?? COMMAND_TIMEOUT_MS;
  const fuse = await openFuse(options.mountpoint);
  const config = fuseFileConfig(device, { name, directIo: options.directIo ?? true });
  let service: FuseService | undefined;
  let mounted = false;
  try {
    // Readers first: they poll (EPERM) until the mount attaches, then answer INIT.
    service = await serveFuseFd(device, {
      fd: fuse.fd,
      config,
      workers,
      debug: options.debug ?? false,
      ...(options.alignment !== undefined ? { alignment: options.alignment } : {}),
      ...(options.localReads !== undefined ? { localReads: options.localReads } : {}),
    });
    await fuse.mount({ readOnly: device.readOnly, timeoutMs: mountTimeoutMs });
    mounted = true;
    const running = service;
    const init = await Promise.race([running.initialized, sleep(mountTimeoutMs).then(() => 'timeout' as const)]);
    if (init === 'timeout' || init === undefined) {
      throw new FailedPreconditionError(
        init === 'timeout'
          ? `Cannot serve FUSE at ${fuse.mountpoint}: the kernel's INIT was not answered within ${mountTimeoutMs} ms`
          : `Cannot serve FUSE at ${fuse.mountpoint}: every reader thread exited before INIT`,
      );
    }
    return new FuseServer(fuse, running, { name, init });
  } catch (e) {
    service?.stop();
    if (mounted) {
      await fuse.abort();
      if (!(await runLazyUmount(fuse.mountpoint))) log('fuse: cannot detach %s after a failed start', fuse.mountpoint);
    }
    if (service !== undefined) {
      const stopped = await Promise.race([service.done.then(() => true), sleep(COMMAND_TIMEOUT_MS).then(() => false)]);
      if (!stopped) log('fuse: reader threads still blocked after a failed start at %s', fuse.mountpoint);
    }
    fuse.close();
    throw e;
  }
}
