/**
 * The snapshotter contract, mirroring containerd's `snapshots.Snapshotter`, and the
 * constructor of overlaybd-ts's implementation.
 *
 * ## Lifecycle
 *
 * A *snapshot* is a directory tree that containerd mounts. Snapshots form chains:
 * every snapshot has at most one *parent*, which is always a **committed** snapshot.
 *
 * - `prepare(key, parent)` creates an **active** snapshot: a writable layer on top of
 *   `parent` (or empty), returned as mounts. The caller mounts them, changes the tree
 *   (unpacks a layer, runs a container), unmounts.
 * - `commit(name, key)` turns active `key` into committed `name`; `key` disappears. A
 *   committed snapshot is immutable and can be the parent of new snapshots.
 * - `view(key, parent)` creates a read-only **view** of `parent`; it cannot be committed.
 * - `mounts(key)` returns the mounts of an active snapshot or view again.
 * - `remove(key)` deletes any snapshot that is not a parent (FailedPrecondition otherwise).
 * - `stat`, `update` (labels only), `usage`, `walk` (with containerd filters) inspect.
 * - `cleanup()` deletes directories no longer referenced by the metadata store.
 *
 * Glossary: *key* names an active snapshot or view, *name* a committed one; both live in
 * one namespace, so a key and a name can never be equal. *Labels* are string pairs
 * (key + value ≤ 4096 bytes) that containerd and the overlaybd layer logic use.
 *
 * ## Worked example (an image with two layers and a container)
 *
 * ```ts
 * const sn = await createSnapshotter('/var/lib/obd-snapshotter', {});
 * const m1 = await sn.prepare('extract-1', '');   // [{ type: 'bind', source: '…/snapshots/1/fs', options: ['rw', 'rbind'] }]
 * // mount m1, unpack layer 1, unmount
 * await sn.commit('sha256:layer1-chain', 'extract-1');
 * await sn.prepare('extract-2', 'sha256:layer1-chain'); // overlay: lowerdir=…/1/fs, upperdir=…/2/fs
 * await sn.commit('sha256:layer2-chain', 'extract-2');
 * const rootfs = await sn.prepare('container-a', 'sha256:layer2-chain'); // overlay: lowerdir=…/2/fs:…/1/fs
 * await sn.remove('container-a');
 * ```
 *
 * Errors (src/io/errors.ts): `NotFoundError` (unknown key or parent),
 * `AlreadyExistsError` (key or name taken; also a remote overlaybd layer committed by
 * Prepare), `FailedPreconditionError` (removing a parent, committing a non-active
 * snapshot, mounts of a committed one), `InvalidArgumentError` (bad labels, filters,
 * update paths, a parent that is not committed).
 */
import type { DeviceMounter } from './device-mounter.ts';
import type { MirrorRegistry, RwMode, WritableLayerType } from './config.ts';
import { OverlaybdSnapshotter } from './_overlaybd-snapshotter.ts';

/** Snapshot kinds, as containerd's filters spell them. */
export const Kind = { View: 'view', Active: 'active', Committed: 'committed' } as const;
/** `view`, `active` or `committed`. */
export type Kind = (typeof Kind)[keyof typeof Kind];

/** What `stat` and `walk` report about a snapshot. */
export interface Info {
  /** Key (active, view) or name (committed). */
  name: string;
  /** Name of the committed parent, `''` for none. */
  parent: string;
  kind: Kind;
  created: Date;
  updated: Date;
  labels: Record<string, string>;
}

/** Disk usage of a snapshot's own layer (not its parents). */
export interface Usage {
  /** Bytes allocated (blocks × 512), hard links counted once. */
  size: number;
  /** Number of distinct inodes. */
  inodes: number;
}

/** One mount, as containerd's `mount.Mount`. */
export interface Mount {
  type: string;
  source: string;
  /** Target inside the container; empty for a root filesystem. */
  target?: string;
  options: string[];
}

/** Options of `prepare`, `view` and `commit`. */
export interface SnapshotOptions {
  labels?: Record<string, string>;
}

/** Called by `walk` for every matching snapshot. */
export type WalkFunction = (info: Info) => void | Promise<void>;

/** containerd's snapshotter interface. */
export interface Snapshotter {
  /** Info of the snapshot `key` (any kind). */
  stat(key: string): Promise<Info>;
  /**
   * Updates the mutable fields (labels) of `info.name`. `fieldpaths` are `labels` or
   * `labels.<key>`; empty replaces all labels. Other paths are InvalidArgument.
   */
  update(info: Info, fieldpaths?: string[]): Promise<Info>;
  usage(key: string): Promise<Usage>;
  /** Mounts of an active snapshot or view. */
  mounts(key: string): Promise<Mount[]>;
  prepare(key: string, parent: string, options?: SnapshotOptions): Promise<Mount[]>;
  view(key: string, parent: string, options?: SnapshotOptions): Promise<Mount[]>;
  /** Commits active `key` as `name`; the labels given replace the active snapshot's. */
  commit(name: string, key: string, options?: SnapshotOptions): Promise<void>;
  remove(key: string): Promise<void>;
  /** Calls `fn` for each snapshot matching any of `filters` (all when empty). */
  walk(fn: WalkFunction, filters?: string[]): Promise<void>;
  /** Removes directories of snapshots that no longer exist. */
  cleanup(): Promise<void>;
  /** Releases the metadata store; idempotent. */
  close(): Promise<void>;
}

/** Options of {@link createSnapshotter} (config.json fields mapped by `snapshotterOptionsFromConfig`). */
export interface SnapshotterOptions {
  /** Default rootfs mode for overlaybd images (default `overlayfs`). */
  rwMode?: RwMode;
  /** Writable layers: `append` (default) or `sparse`. */
  writableLayerType?: WritableLayerType;
  /** Unmount an image device when its last container snapshot is removed. */
  autoRemoveDev?: boolean;
  /** Leave deleted snapshots' directories for `cleanup()`. */
  asyncRemove?: boolean;
  /** Hosts listed with `insecure: true` get `http://` in `repoBlobUrl`. */
  mirrorRegistry?: MirrorRegistry[];
  /** fs type when a layer has no `blob-fs-type` label (default `ext4`). */
  defaultFsType?: string;
  /** Preference order of TurboOCI meta files (default `['erofs', 'ext4']`). */
  turboFsType?: string[];
  /** Attaches and mounts overlaybd devices; without it block-backed rootfs requests fail with UnsupportedError. */
  deviceMounter?: DeviceMounter;
  /** Add `index=off` to overlay mounts; default: when `/sys/module/overlay/parameters/index` exists. */
  indexOff?: boolean;
  /**
   * Attach (read-only, mounted) the device of an acceleration layer in the background
   * when it is committed at pull, so its trace replay starts before the first container
   * Prepare, which then finds it mounted (default true; src/snapshotter/README.md).
   */
  attachOnPull?: boolean;
}

/**
 * Opens (creating if needed) a snapshotter rooted at `root`: `<root>/metadata.db`
 * (SQLite) and `<root>/snapshots/<id>/{fs,work,block}`. Plain OCI layers behave like
 * containerd's overlayfs snapshotter; overlaybd layers follow upstream
 * overlaybd-snapshotter (snapshotter.md §5–§8).
 */
export function createSnapshotter(root: string, options: SnapshotterOptions = {}): Promise<Snapshotter> {
  return OverlaybdSnapshotter.open(root, options);
}
