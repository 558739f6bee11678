/**
 * mount(2) and loop-device attach without a `mount` or `losetup` process: on a busy
 * 2-core machine each of those processes took 35-70 ms of a container's start
 * (bench/cold-start: FUSE mount 52-57 ms, losetup 35-72 ms). The calls run on a pool
 * thread (the device may be served by this process). Callers fall back to the tools
 * when a call fails, so the tools' own messages and helpers remain for the unusual
 * cases; `OBD_MOUNT_SYSCALLS=off` always runs the tools.
 *
 * @example
 * ```ts
 * if ((await mountWithOptions({ source: '/dev/loop3', target: '/mnt', fstype: 'ext4', options: ['ro', 'noload'] })) !== 0) { … }
 * ```
 */
import { native } from './index.ts';

const MS_RDONLY = 1;
const MS_REMOUNT = 32;

/** Options mount(8) turns into flags (set, or cleared by the second form); the rest is file-system data. */
const FLAG_OPTIONS: Record<string, [number, boolean]> = {
  ro: [MS_RDONLY, true],
  rw: [MS_RDONLY, false],
  nosuid: [2, true],
  suid: [2, false],
  nodev: [4, true],
  dev: [4, false],
  noexec: [8, true],
  exec: [8, false],
  sync: [16, true],
  async: [16, false],
  remount: [MS_REMOUNT, true],
  dirsync: [128, true],
  noatime: [1024, true],
  atime: [1024, false],
  nodiratime: [2048, true],
  diratime: [2048, false],
  relatime: [1 << 21, true],
  norelatime: [1 << 21, false],
  strictatime: [1 << 24, true],
  lazytime: [1 << 25, true],
  nolazytime: [1 << 25, false],
  defaults: [0, true],
};

/** Splits mount(8)-style options into mount(2) flags and the data string. */
export function mountFlags(options: readonly string[]): { flags: number; data: string } {
  let flags = 0;
  const data: string[] = [];
  for (const o of options) {
    const f = FLAG_OPTIONS[o];
    if (f === undefined) data.push(o);
    else if (f[1]) flags |= f[0];
    else flags &= ~f[0];
  }
  return { flags, data: data.join(',') };
}

/** -ENOSYS when `OBD_MOUNT_SYSCALLS=off`: the caller runs the tool. */
const OFF = -38;

function off(): boolean {
  return process.env['OBD_MOUNT_SYSCALLS'] === 'off';
}

/** mount(2) with mount(8)-style options; 0, or -errno. */
export async function mountWithOptions(m: { source: string; target: string; fstype: string; options: readonly string[] }): Promise<number> {
  if (off()) return OFF;
  const { flags, data } = mountFlags(m.options);
  return native.mount(m.source, m.target, m.fstype, flags, data);
}

/** Remounts `target` read-only or read-write, keeping its other settings; 0, or -errno. */
export async function remountSyscall(target: string, writable: boolean): Promise<number> {
  if (off()) return OFF;
  return native.mount('', target, '', MS_REMOUNT | (writable ? 0 : MS_RDONLY), '');
}

/** `losetup -f --show [--direct-io=on] [-r] FILE` as a call: the device path, or -errno. */
export async function attachLoopSyscall(file: string, options: { readOnly: boolean; directIo: boolean }): Promise<string | number> {
  if (off()) return OFF;
  const n = await native.loopAttach(file, options.readOnly, options.directIo);
  return n >= 0 ? `/dev/loop${n}` : n;
}
