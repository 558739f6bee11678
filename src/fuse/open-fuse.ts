/**
 * The mount side of a FUSE connection, apart from any server: opens `/dev/fuse`, mounts
 * it (`mount -i -t fuse.obd -o fd=3,…`), unmounts, aborts, closes. A supervisor holds
 * this and hands the fd to serving processes, so the connection outlives any one of them
 * (see README.md, "Surviving a restart of the serving process"); `serveFuse` uses it
 * in-process.
 *
 * @example
 * ```ts
 * const fuse = await openFuse('/run/obd/1');
 * // start a server on fuse.fd (serveFuseFd, in this process or a child given the fd)
 * await fuse.mount({ readOnly: true });
 * // … later
 * await fuse.unmount();
 * fuse.close();
 * ```
 */
import { closeSync, openSync } from 'node:fs';
import { realpath, stat } from 'node:fs/promises';
import { debuglog } from 'node:util';
import { FailedPreconditionError, InvalidArgumentError, NotFoundError } from '../io/errors.ts';
import { abortFuseConnection, findMount } from './fuse-connection.ts';
import { runWithFd } from './_run-with-fd.ts';
import { mountWithOptions } from '../native/mount.ts';
import type { MountInfo } from './fuse-connection.ts';

const log = debuglog('obd');
/** The file-system type of our mounts (`/proc/self/mountinfo`). */
export const FUSE_FSTYPE = 'fuse.obd';

/** An open `/dev/fuse` and the mountpoint it is (or will be) mounted on. */
export interface FuseMountpoint {
  /** The `/dev/fuse` fd (give it to the server; it is closed by {@link close}). */
  readonly fd: number;
  /** The resolved mountpoint. */
  readonly mountpoint: string;
  /** Kernel connection id (`/sys/fs/fuse/connections/<id>`), -1 until mounted. */
  readonly connection: number;
  /**
   * Mounts the connection. A server may read the fd before (its reads fail with EPERM
   * until the mount attaches) or after; the kernel's INIT waits for it. On failure
   * nothing stays mounted.
   */
  mount(options: { readOnly: boolean; uid?: number; gid?: number; timeoutMs?: number }): Promise<void>;
  /** Whether our mount is still at the mountpoint. */
  isMounted(): Promise<boolean>;
  /** `umount`; when busy, detaches lazily. Resolves once detached; the server may still be running. */
  unmount(): Promise<void>;
  /** Aborts the connection through fusectl: pending and future requests fail, readers get ENODEV. */
  abort(): Promise<void>;
  /** Closes the fd (idempotent). The connection ends when the last copy of the fd closes. */
  close(): void;
}

class OpenFuse implements FuseMountpoint {
  readonly fd: number;
  readonly mountpoint: string;
  #connection = -1;
  #closed = false;

  constructor(fd: number, mountpoint: string) {
    this.fd = fd;
    this.mountpoint = mountpoint;
  }

  get connection(): number {
    return this.#connection;
  }

  async mount(options: { readOnly: boolean; uid?: number; gid?: number; timeoutMs?: number }): Promise<void> {
    const uid = options.uid ?? process.getuid?.() ?? 0;
    const gid = options.gid ?? process.getgid?.() ?? 0;
    const opts = ['fd=3', 'rootmode=40000', `user_id=${uid}`, `group_id=${gid}`, 'allow_other', 'default_permissions'];
    if (options.readOnly) opts.push('ro');
    // mount(2) with this process's own descriptor; mount(8) (given it as fd 3) when that fails.
    const own = opts.map((o) => (o === 'fd=3' ? `fd=${this.fd}` : o));
    if ((await mountWithOptions({ source: 'obd', target: this.mountpoint, fstype: FUSE_FSTYPE, options: own })) === 0) {
      const mounted = await this.#findOwnMount();
      if (mounted === undefined) throw new FailedPreconditionError(`Cannot mount FUSE at ${this.mountpoint}: mounted, but not in /proc/self/mountinfo`);
      this.#connection = mounted.minor;
      return;
    }
    const r = await runWithFd(['mount', '-i', '-t', FUSE_FSTYPE, '-o', opts.join(','), 'obd', this.mountpoint], {
      fd: this.fd,
      ...(options.timeoutMs !== undefined ? { timeoutMs: options.timeoutMs } : {}),
    });
    // A mount killed by the timeout may still have attached.
    const info = r.code === 0 || r.code === null ? await this.#findOwnMount() : undefined;
    if (info !== undefined) this.#connection = info.minor;
    if (r.code === 0 || info !== undefined) return;
    throw new FailedPreconditionError(`Cannot mount FUSE at ${this.mountpoint}: mount exited ${r.code}: ${r.output}`);
  }

  async isMounted(): Promise<boolean> {
    return (await this.#findOwnMount()) !== undefined;
  }

  async unmount(): Promise<void> {
    if ((await this.#findOwnMount()) === undefined) return;
    const r = await runWithFd(['umount', this.mountpoint]);
    if (r.code !== 0 && (await this.#findOwnMount()) !== undefined) {
      log('fuse: umount %s failed (%s); detaching lazily', this.mountpoint, r.output);
      const lazy = await runWithFd(['umount', '-l', this.mountpoint]);
      if (lazy.code !== 0) log('fuse: umount -l %s failed: %s', this.mountpoint, lazy.output);
    }
  }

  async abort(): Promise<void> {
    if (this.#connection < 0) return;
    await abortFuseConnection(this.#connection).catch((e: Error) => log('fuse: %s', e.message));
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      closeSync(this.fd);
    } catch (e) {
      log('fuse: cannot close /dev/fuse: %s', (e as Error).message);
    }
  }

  /** Our mount at the mountpoint (fuse.obd; the same connection once known). */
  async #findOwnMount(): Promise<MountInfo | undefined> {
    const m = await findMount(this.mountpoint);
    if (m === undefined || m.fstype !== FUSE_FSTYPE) return undefined;
    return this.#connection < 0 || m.minor === this.#connection ? m : undefined;
  }
}

/**
 * Resolves `mountpoint` and opens `/dev/fuse` for it (not mounted yet), or takes
 * `options.fd`, a `/dev/fuse` fd opened earlier ({@link openFuseDevice}; closed by
 * `close()` from then on). Rejects with
 * `NotFoundError` when the mountpoint is missing, `InvalidArgumentError` when it is not
 * a directory, `FailedPreconditionError` when /dev/fuse cannot be opened (needs root).
 */
export async function openFuse(mountpoint: string, options: { fd?: number } = {}): Promise<FuseMountpoint> {
  let resolved: string;
  try {
    resolved = await realpath(mountpoint);
  } catch (e) {
    throw new NotFoundError(`Cannot serve FUSE at ${mountpoint}: mountpoint does not exist`, { cause: e });
  }
  if (!(await stat(resolved)).isDirectory()) {
    throw new InvalidArgumentError(`Cannot serve FUSE at ${resolved}: mountpoint is not a directory`);
  }
  return new OpenFuse(options.fd ?? openFuseDevice(), resolved);
}

/** Opens `/dev/fuse` (a connection not mounted anywhere yet); `FailedPreconditionError` when it cannot (needs root). */
export function openFuseDevice(): number {
  try {
    return openSync('/dev/fuse', 'r+');
  } catch (e) {
    throw new FailedPreconditionError(`Cannot open /dev/fuse: ${(e as Error).message}`, { cause: e });
  }
}
