/**
 * File-system handling of a device (snapshotter.md §10): the `fstype[;mountopts[;mkfsopts]]`
 * string, upstream's default mkfs and mount options, EROFS detection, mount and umount.
 */
import { open, readFile } from 'node:fs/promises';
import type { BlockDevice } from '../io/block-device.ts';
import { InvalidArgumentError } from '../io/errors.ts';
import { debuglog, getSystemErrorName } from 'node:util';
import { mountWithOptions, remountSyscall } from '../native/mount.ts';
import { runCommand } from './run-command.ts';

const log = debuglog('obd');

export interface FsSpec {
  fstype: string;
  mountOptions: string[];
  mkfsOptions: string[];
}

const DEFAULTS: Record<string, { mkfs: string[]; mount: string[] }> = {
  ext4: { mkfs: ['-O', '^has_journal,sparse_super,flex_bg', '-G', '1', '-E', 'discard', '-F'], mount: ['discard'] },
  xfs: { mkfs: ['-f', '-l', 'size=4m', '-m', 'crc=0'], mount: ['nouuid', 'discard'] },
  f2fs: { mkfs: ['-S', '-w', '4096'], mount: [] },
  ntfs: { mkfs: ['-F', '-f'], mount: [] },
};

/** Parses `fstype[;mountopts[;mkfsopts]]`. */
export function parseFsSpec(text: string): FsSpec {
  const fields = text.split(';');
  const fstype = fields[0] ?? '';
  if (!/^[a-z0-9]+$/.test(fstype)) throw new InvalidArgumentError(`Invalid file-system type '${fstype}'`);
  const d = DEFAULTS[fstype] ?? { mkfs: [], mount: [] };
  const mountOptions = fields.length >= 2 ? (fields[1] as string).split(',').filter((o) => o !== '') : d.mount;
  const mkfsOptions = fields.length >= 3 ? (fields[2] as string).split(' ').filter((o) => o !== '') : d.mkfs;
  return { fstype, mountOptions, mkfsOptions };
}

const EROFS_MAGIC = 0xe0f5e1e2;

/** Whether the device holds an EROFS superblock (magic at byte 1024). */
export async function isErofs(device: BlockDevice): Promise<boolean> {
  if (device.size < 4096) return false;
  const buf = new Uint8Array(4096);
  await device.readAt(buf, 0);
  return new DataView(buf.buffer).getUint32(1024, true) === EROFS_MAGIC;
}

/**
 * Whether the file (a served device: never call this from the thread that serves it)
 * holds an EROFS superblock.
 */
export async function isErofsFile(path: string): Promise<boolean> {
  const fh = await open(path, 'r');
  try {
    const buf = new Uint8Array(4096);
    const { bytesRead } = await fh.read(buf, 0, buf.length, 0);
    return bytesRead === buf.length && new DataView(buf.buffer).getUint32(1024, true) === EROFS_MAGIC;
  } finally {
    await fh.close();
  }
}

export async function mkfs(dev: string, spec: FsSpec): Promise<void> {
  await runCommand([`mkfs.${spec.fstype}`, ...spec.mkfsOptions, dev], { what: `make a ${spec.fstype} file system on ${dev}`, timeoutMs: 120_000 });
}

export async function mountFs(dev: string, dir: string, options: { spec: FsSpec; writable: boolean }): Promise<void> {
  const opts = [options.writable ? 'rw' : 'ro', ...options.spec.mountOptions];
  if (!options.writable && options.spec.fstype === 'ext4') opts.push('noload');
  // mount(2) first; mount(8) when that fails, for its helpers and its message.
  const r = await mountWithOptions({ source: dev, target: dir, fstype: options.spec.fstype, options: opts });
  if (r === 0) return;
  log('mount: mount(2) of %s on %s failed (%s); running mount', dev, dir, getSystemErrorName(r));
  await runCommand(['mount', '-t', options.spec.fstype, '-o', opts.join(','), dev, dir], { what: `mount ${dev} on ${dir}` });
}

/** Switches the file system mounted on `dir` to read-write or read-only (which writes it back and marks it clean). */
export async function remountFs(dir: string, options: { writable: boolean }): Promise<void> {
  const r = await remountSyscall(dir, options.writable);
  if (r === 0) return;
  log('mount: remount of %s by mount(2) failed (%s); running mount', dir, getSystemErrorName(r));
  await runCommand(['mount', '-o', `remount,${options.writable ? 'rw' : 'ro'}`, dir], { what: `remount ${dir} ${options.writable ? 'read-write' : 'read-only'}` });
}

export async function umountFs(dir: string): Promise<void> {
  await runCommand(['umount', dir], { what: `unmount ${dir}` });
}

/** Whether `dir` is a mount point now. */
export async function isMountPoint(dir: string): Promise<boolean> {
  const text = await readFile('/proc/self/mountinfo', 'utf8');
  return text.split('\n').some((line) => line.split(' ')[4] === dir);
}
