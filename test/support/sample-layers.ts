/**
 * Test layers for the convertor, built with our tar writer:
 *
 * - `sampleLayers()`: three layers covering every entry kind and OCI rule the apply
 *   implements — regular files (setuid, setgid, sticky, owners, fractional mtime,
 *   `user.*` and `security.capability` xattrs, long names), directories, relative and
 *   absolute symlinks, hard links in one directory and across directories (also to a
 *   file of a lower layer), a FIFO, character and block devices, whiteouts, opaque
 *   directories (with a new file before and after the marker), a directory replaced by
 *   a file and a file by a directory, and layer 3 in GNU long-name format;
 * - `extractWithGnuTar()`: the reference result, GNU tar extraction with the whiteouts
 *   applied first.
 */
import { spawnSync } from 'node:child_process';
import { lstatSync, readdirSync, rmSync, utimesSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { buildTar, type TarWriteEntry } from '../../src/convert/tar-writer.ts';

const enc = new TextEncoder();

/** Deterministic pseudo-random bytes. */
export function pseudoRandom(seed: number, size: number): Uint8Array {
  const out = new Uint8Array(size);
  let x = seed * 2654435761 || 1;
  for (let i = 0; i < size; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = x & 0xff;
  }
  return out;
}

// A v2 file capability (cap_net_raw+ep), as setcap writes it.
const CAP_NET_RAW = new Uint8Array([0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
const T0 = 1_600_000_000;
const LONG_DIR = `opt/${'long-directory-name-'.repeat(6)}`;
const LONG_FILE = `${LONG_DIR}/${'very-long-file-name-'.repeat(6)}.txt`;

export function sampleLayers(): { layers: Uint8Array[]; entries: TarWriteEntry[][] } {
  const d = (path: string, mode = 0o755, extra: Partial<TarWriteEntry> = {}): TarWriteEntry => ({ path: `${path}/`, type: 'directory', mode, mtime: T0 + 1, ...extra });
  const f = (path: string, data: Uint8Array | string, extra: Partial<TarWriteEntry> = {}): TarWriteEntry => ({
    path,
    type: 'file',
    data: typeof data === 'string' ? enc.encode(data) : data,
    mode: 0o644,
    mtime: T0 + 2,
    ...extra,
  });
  const layer1: TarWriteEntry[] = [
    d('bin'),
    d('dev'),
    d('etc'),
    d('home'),
    d('home/user', 0o700, { uid: 1000, gid: 1000 }),
    d('opt'),
    d('opt/docs'),
    d('opt/opq'),
    d('opt/opq2'),
    d('opt/removeme'),
    d('opt/removeme/sub'),
    d('opt/replace-dir'),
    d('tmp', 0o1777),
    d('usr'),
    d('usr/bin'),
    d('usr/lib'),
    d('var'),
    d('var/lib'),
    d('var/shared', 0o2775, { gid: 50 }),
    d(LONG_DIR),
    f('etc/passwd', 'root:x:0:0:root:/root:/bin/sh\n'),
    f('etc/group', 'root:x:0:\n', { mtime: T0 + 0.25 }),
    f('home/user/.profile', 'export PS1=$\n', { uid: 1000, gid: 1000, mode: 0o600 }),
    f('usr/bin/tool', pseudoRandom(1, 70_000), { mode: 0o4755 }),
    f('usr/bin/sgid-tool', pseudoRandom(2, 3000), { mode: 0o2711, gid: 42 }),
    f('usr/bin/capbin', pseudoRandom(3, 5000), { mode: 0o755, xattrs: { 'security.capability': CAP_NET_RAW } }),
    f('usr/lib/libx.so', pseudoRandom(4, 300_000)),
    f('var/lib/data.bin', pseudoRandom(5, 2 << 20), { uid: 33, gid: 33 }),
    f('var/lib/empty', ''),
    f('opt/docs/readme', 'read me\n', { xattrs: { 'user.mime': 'text/plain', 'user.bin': new Uint8Array([0, 255, 10]) } }),
    f('opt/opq/a', 'a'),
    f('opt/opq/b', 'b'),
    f('opt/opq2/old', 'old'),
    f('opt/removeme/sub/x', 'x'),
    f('opt/replace-dir/inner', 'inner'),
    f('opt/replace-file', 'was a file'),
    f(LONG_FILE, 'long name'),
    { path: 'usr/lib/libx.so.1', type: 'symlink', linkpath: 'libx.so', mtime: T0 + 3 },
    { path: 'usr/sbin', type: 'symlink', linkpath: 'bin', mtime: T0 + 3 },
    { path: 'etc/abs-link', type: 'symlink', linkpath: '/usr/lib/libx.so', mtime: T0 + 3 },
    { path: 'opt/long-target', type: 'symlink', linkpath: `/${LONG_FILE}`, mtime: T0 + 3 },
    { path: 'usr/bin/tool-link', type: 'hardlink', linkpath: 'usr/bin/tool' },
    { path: 'opt/tool-hard', type: 'hardlink', linkpath: 'usr/bin/tool' },
    { path: 'var/fifo', type: 'fifo', mode: 0o620, mtime: T0 + 4 },
    { path: 'dev/null', type: 'char', mode: 0o666, devmajor: 1, devminor: 3, mtime: T0 + 4 },
    { path: 'dev/loop7', type: 'block', mode: 0o660, gid: 6, devmajor: 7, devminor: 7, mtime: T0 + 4 },
  ];
  const layer2: TarWriteEntry[] = [
    d('etc', 0o755, { mtime: T0 + 100 }),
    d('opt', 0o755, { mtime: T0 + 100 }),
    d('opt/opq', 0o750, { mtime: T0 + 100 }),
    d('opt/replace-file', 0o700, { mtime: T0 + 100 }),
    d('usr/lib', 0o755, { mtime: T0 + 100 }),
    f('etc/passwd', 'root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n', { mode: 0o640, gid: 42, mtime: T0 + 101 }),
    { path: 'opt/.wh.removeme', type: 'file' },
    { path: 'opt/opq/.wh..wh..opq', type: 'file' },
    f('opt/opq/c', 'c', { mtime: T0 + 101 }),
    f('opt/replace-dir', 'now a file', { mtime: T0 + 101 }),
    f('opt/replace-file/inner', 'inside the new directory', { mtime: T0 + 101 }),
    f('usr/lib/libx.so', pseudoRandom(6, 310_000), { mtime: T0 + 101 }),
    { path: 'opt/lower-link', type: 'hardlink', linkpath: 'var/lib/data.bin' },
  ];
  const layer3: TarWriteEntry[] = [
    d('opt', 0o755, { mtime: T0 + 200 }),
    d('opt/docs', 0o755, { mtime: T0 + 200 }),
    d('opt/opq2', 0o755, { mtime: T0 + 200 }),
    d('usr/bin', 0o755, { mtime: T0 + 200 }),
    d(LONG_DIR, 0o755, { mtime: T0 + 200 }),
    f('opt/opq2/kept', 'extracted before the opaque marker', { mtime: T0 + 201 }),
    { path: 'opt/opq2/.wh..wh..opq', type: 'file' },
    f('opt/opq2/after', 'after the marker', { mtime: T0 + 201 }),
    { path: 'opt/.wh.tool-hard', type: 'file' },
    { path: 'usr/bin/.wh.sgid-tool', type: 'file' },
    f('opt/docs/readme', 'read me, version 2\n', { mtime: T0 + 201, xattrs: { 'user.mime': 'text/markdown' } }),
    f(`${LONG_DIR}/${'another-long-name-'.repeat(8)}`, 'gnu long name', { mtime: T0 + 201 }),
  ];
  return {
    layers: [buildTar(layer1), buildTar(layer2), buildTar(layer3, { longNames: 'gnu' })],
    entries: [layer1, layer2, layer3],
  };
}

/**
 * Applies uncompressed layer tars onto `dir` with GNU tar (the reference): whiteouts
 * first, then whatever an entry replaces (a directory under a non-directory entry, a
 * non-directory under a directory entry), then `tar -x`, then the mtimes of the
 * archive's directories once more in archive order (GNU tar restores a directory's
 * times when extraction leaves it, which is too early for archives that are not in
 * walk order). Names must not contain spaces; directory mtimes whole seconds.
 */
export function extractWithGnuTar(layers: readonly Uint8Array[], dir: string): void {
  for (const tar of layers) {
    const list = spawnSync('tar', ['--full-time', '--utc', '-tvf', '-'], { input: tar, encoding: 'utf8', maxBuffer: 1 << 26 });
    const dirTimes: Array<[string, number]> = [];
    if (list.status !== 0) throw new Error(`tar -t failed: ${list.stderr}`);
    for (const line of list.stdout.split('\n').filter((l) => l !== '')) {
      const fields = line.split(/\s+/);
      const name = (fields[5] as string).replace(/\/$/, '');
      const isDir = line.startsWith('d');
      if (isDir) dirTimes.push([name, Date.parse(`${fields[3]}T${fields[4]}Z`) / 1000]);
      const base = basename(name);
      const parent = join(dir, dirname(name));
      if (base === '.wh..wh..opq') {
        for (const child of readdirSync(parent)) rmSync(join(parent, child), { recursive: true, force: true });
      } else if (base.startsWith('.wh.')) {
        rmSync(join(parent, base.slice(4)), { recursive: true, force: true });
      } else {
        const st = lstatOrUndefined(join(dir, name));
        if (st !== undefined && st.isDirectory() !== isDir) rmSync(join(dir, name), { recursive: true, force: true });
      }
    }
    const x = spawnSync(
      'tar',
      ['-x', '--xattrs', '--xattrs-include=*', '--numeric-owner', '-p', '--same-owner', '--exclude=.wh.*', '-C', dir, '-f', '-'],
      { input: tar, encoding: 'utf8', maxBuffer: 1 << 26 },
    );
    if (x.status !== 0) throw new Error(`tar -x failed: ${x.stderr}`);
    for (const [name, t] of dirTimes) utimesSync(join(dir, name), t, t);
  }
}

function lstatOrUndefined(p: string): ReturnType<typeof lstatSync> | undefined {
  try {
    return lstatSync(p);
  } catch {
    return undefined;
  }
}
