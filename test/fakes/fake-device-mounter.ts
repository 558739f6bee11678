/**
 * An in-process {@link DeviceMounter} for snapshotter tests. It records every call and
 * keeps its own table of what is "mounted". With `bindSource`, `mount` really
 * bind-mounts a directory the test prepared (read-only unless `writable`) at the
 * mountpoint, so the overlay mounts the snapshotter returns can be mounted and used for
 * real (needs root); `unmount` undoes it. `failMount` makes the next mount throw after
 * recording the call (fault injection).
 *
 * @example
 * ```ts
 * const mounter = new FakeDeviceMounter({ bindSource: () => imageDir });
 * const sn = await createSnapshotter(root, { deviceMounter: mounter });
 * ```
 */
import { execFile } from 'node:child_process';
import type { DeviceMounter, DeviceMountOptions } from '../../src/snapshotter/device-mounter.ts';

export type MounterCall =
  | { op: 'mount'; configPath: string; mountpoint: string; options: DeviceMountOptions }
  | { op: 'unmount'; mountpoint: string }
  | { op: 'attach'; configPath: string; writable: boolean }
  | { op: 'detach'; configPath: string };

function run(argv: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile(argv[0] as string, argv.slice(1), { timeout: 30_000 }, (err, _o, stderr) => (err ? reject(new Error(`${argv.join(' ')}: ${stderr}`)) : resolve()));
  });
}

export interface FakeDeviceMounterOptions {
  /** Directory to bind-mount for a config (real mount); undefined → only record. */
  bindSource?: (configPath: string) => string | undefined;
  /** Support `attach`/`detach` (dev mode). Default true. */
  canAttach?: boolean;
}

export class FakeDeviceMounter implements DeviceMounter {
  readonly calls: MounterCall[] = [];
  /** Error thrown by the next `mount` call. */
  failMount: Error | undefined;
  readonly #mounted = new Map<string, { configPath: string; real: boolean }>();
  readonly #bindSource: ((configPath: string) => string | undefined) | undefined;
  declare attach?: (configPath: string, options: { writable: boolean }) => Promise<string>;
  declare detach?: (configPath: string) => Promise<void>;

  constructor(options: FakeDeviceMounterOptions = {}) {
    this.#bindSource = options.bindSource;
    if (options.canAttach !== false) {
      let n = 0;
      this.attach = async (configPath, { writable }) => {
        this.calls.push({ op: 'attach', configPath, writable });
        return `/dev/fake${n++}`;
      };
      this.detach = async (configPath) => {
        this.calls.push({ op: 'detach', configPath });
      };
    }
  }

  async mount(configPath: string, mountpoint: string, options: DeviceMountOptions): Promise<void> {
    this.calls.push({ op: 'mount', configPath, mountpoint, options });
    if (this.failMount !== undefined) {
      const e = this.failMount;
      this.failMount = undefined;
      throw e;
    }
    if (this.#mounted.has(mountpoint)) throw new Error(`fake mounter: ${mountpoint} is already mounted`);
    const src = this.#bindSource?.(configPath);
    if (src !== undefined) await run(['mount', '-o', `${options.writable ? 'rw' : 'ro'},bind`, src, mountpoint]);
    this.#mounted.set(mountpoint, { configPath, real: src !== undefined });
  }

  async unmount(mountpoint: string): Promise<void> {
    this.calls.push({ op: 'unmount', mountpoint });
    const m = this.#mounted.get(mountpoint);
    if (m?.real === true) await run(['umount', mountpoint]);
    this.#mounted.delete(mountpoint);
  }

  async isMounted(mountpoint: string): Promise<boolean> {
    return this.#mounted.has(mountpoint);
  }

  /** Mountpoints currently mounted. */
  get mounted(): string[] {
    return [...this.#mounted.keys()];
  }

  /** Calls of one kind. */
  callsOf<K extends MounterCall['op']>(op: K): Extract<MounterCall, { op: K }>[] {
    return this.calls.filter((c): c is Extract<MounterCall, { op: K }> => c.op === op);
  }

  /** Unmounts whatever is still mounted (test teardown). */
  async unmountAll(): Promise<void> {
    for (const mp of this.mounted) await this.unmount(mp).catch(() => undefined);
  }
}
