/**
 * How the snapshotter gets an overlaybd image onto the host: given a snapshot's device
 * config (`<sn>/block/config.v1.json`, snapshotter.md §8) it attaches the block device
 * and mounts its filesystem at `<sn>/block/mountpoint`. Upstream does this with TCMU +
 * tcm_loop through configfs (§9); overlaybd-ts implements it in src/attach (FUSE + loop
 * + mount) and injects it here, so the snapshotter core stays free of kernel plumbing
 * and tests can use a fake.
 *
 * Contract:
 * - `mount` is called only when `isMounted(mountpoint)` is false; it must leave either
 *   a mounted filesystem or nothing (no half-attached device) behind.
 * - `unmount` unmounts and detaches everything it attached for `mountpoint`; unmounting
 *   something not mounted is not an error.
 * - The snapshotter serialises its calls (one at a time).
 *
 * @example
 * ```ts
 * await mounter.mount('/R/snapshots/4/block/config.v1.json', '/R/snapshots/4/block/mountpoint', {
 *   writable: false, fstype: 'ext4', mountOptions: ['discard'], mkfs: false, mkfsOptions: [],
 * });
 * ```
 */

/** How to mount a device (snapshotter.md §10; the fs-type label already split and defaulted). */
export interface DeviceMountOptions {
  /** Read-write (own writable layer: `dir` mode) or read-only (image device, overlayfs mode). */
  writable: boolean;
  /**
   * Filesystem type, e.g. `ext4`, `xfs`, `erofs`. Upstream forces `erofs` when the device
   * carries the EROFS superblock magic 0xE0F5E1E2 at byte 1024; a mounter may do the same.
   */
  fstype: string;
  /** Mount options (`-o`), e.g. `['discard']` for ext4. */
  mountOptions: string[];
  /** Run `mkfs -t fstype …mkfsOptions` on the device first (only for a new parentless writable device). */
  mkfs: boolean;
  mkfsOptions: string[];
}

/** Attaches overlaybd devices and mounts their filesystems. */
export interface DeviceMounter {
  /** Attaches the device described by `configPath` and mounts it at `mountpoint`. */
  mount(configPath: string, mountpoint: string, options: DeviceMountOptions): Promise<void>;
  /** Unmounts `mountpoint` and detaches its device. */
  unmount(mountpoint: string): Promise<void>;
  /** Whether a device filesystem is mounted at `mountpoint`. */
  isMounted(mountpoint: string): Promise<boolean>;
  /**
   * `dev` rootfs mode: attaches without mounting and returns the block device path (e.g.
   * `/dev/loop3`) that the caller mounts itself. Optional; without it `dev` mode is
   * UnsupportedError.
   */
  attach?(configPath: string, options: { writable: boolean }): Promise<string>;
  /** Detaches a device attached by `attach`. */
  detach?(configPath: string): Promise<void>;
  /** Releases what the mounter holds besides devices (e.g. a started standby process); devices stay. */
  close?(): Promise<void>;
}
