/**
 * Compares two directory trees the way an image's file system must match: for every
 * path the type, permission bits (setuid/setgid/sticky included), owner, size and
 * content hash of regular files, symlink target, device numbers, mtime (to the
 * millisecond), extended attributes (all namespaces, read with `getfattr`), and which
 * paths are hard links of one another. Reports the first difference as text.
 *
 * @example
 * ```ts
 * const diff = await diffTrees(expectedDir, mountedDir, { ignore: ['lost+found'] });
 * assert.equal(diff, undefined);
 * ```
 */
import { createHash } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { lstat, readdir, readFile, readlink } from 'node:fs/promises';
import { join } from 'node:path';

export interface TreeEntry {
  path: string;
  type: 'file' | 'directory' | 'symlink' | 'char' | 'block' | 'fifo' | 'socket' | 'other';
  mode: number;
  uid: number;
  gid: number;
  /** Regular files only. */
  size?: number;
  sha256?: string;
  link?: string;
  rdev?: number;
  mtimeMs: number;
  /** Sorted `name=base64` pairs. */
  xattrs: string[];
  /** Sorted paths sharing this inode (regular files with more than one link). */
  hardlinks?: string[];
}

export interface TreeOptions {
  /** Relative paths (and everything below them) left out. */
  ignore?: string[];
  /** Compare directory mtimes (default true). */
  dirTimes?: boolean;
  /**
   * Compare a directory's mtime only when the expected one is earlier than this (ms
   * since the epoch): containerd's overlay apply creates the parents of a layer's
   * entries in the layer's upper directory with the time of the unpack, which no
   * convertor can reproduce.
   */
  dirTimesBefore?: number;
}

function typeOf(st: Awaited<ReturnType<typeof lstat>>): TreeEntry['type'] {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'directory';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isCharacterDevice()) return 'char';
  if (st.isBlockDevice()) return 'block';
  if (st.isFIFO()) return 'fifo';
  if (st.isSocket()) return 'socket';
  return 'other';
}

/** Extended attributes of every path under `root` (one getfattr run). */
function xattrsOf(root: string): Map<string, string[]> {
  const r = spawnSync('getfattr', ['-R', '-P', '-h', '-d', '-m', '-', '-e', 'base64', '--absolute-names', root], { encoding: 'utf8', maxBuffer: 1 << 28 });
  if (r.error !== undefined) throw r.error;
  const out = new Map<string, string[]>();
  let current = '';
  for (const line of r.stdout.split('\n')) {
    if (line.startsWith('# file: ')) {
      current = line.slice(8).replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
      out.set(current, []);
    } else if (line !== '' && current !== '') {
      out.get(current)?.push(line);
    }
  }
  return out;
}

/** Every entry under `root`, keyed by relative path (the root itself is left out). */
export async function snapshotTree(root: string, options: TreeOptions = {}): Promise<Map<string, TreeEntry>> {
  const ignore = new Set(options.ignore ?? []);
  const xattrs = xattrsOf(root);
  const entries = new Map<string, TreeEntry>();
  const inodes = new Map<number, string[]>();
  const walk = async (rel: string): Promise<void> => {
    for (const name of (await readdir(join(root, rel))).sort()) {
      const p = rel === '' ? name : `${rel}/${name}`;
      if (ignore.has(p)) continue;
      const abs = join(root, p);
      const st = await lstat(abs);
      const type = typeOf(st);
      const e: TreeEntry = {
        path: p,
        type,
        mode: st.mode & 0o7777,
        uid: st.uid,
        gid: st.gid,
        mtimeMs: Math.round(st.mtimeMs),
        xattrs: (xattrs.get(abs) ?? []).sort(),
      };
      if (type === 'file') {
        e.size = st.size;
        e.sha256 = createHash('sha256').update(await readFile(abs)).digest('hex');
        if (st.nlink > 1) inodes.set(st.ino, [...(inodes.get(st.ino) ?? []), p]);
      }
      if (type === 'symlink') e.link = await readlink(abs);
      if (type === 'char' || type === 'block') e.rdev = st.rdev;
      entries.set(p, e);
      if (type === 'directory') await walk(p);
    }
  };
  await walk('');
  for (const paths of inodes.values()) {
    const sorted = paths.sort();
    for (const p of sorted) (entries.get(p) as TreeEntry).hardlinks = sorted;
  }
  return entries;
}

/** The first difference between the trees under `expected` and `actual`, or undefined. */
export async function diffTrees(expected: string, actual: string, options: TreeOptions = {}): Promise<string | undefined> {
  const a = await snapshotTree(expected, options);
  const b = await snapshotTree(actual, options);
  const paths = [...new Set([...a.keys(), ...b.keys()])].sort();
  for (const p of paths) {
    const x = a.get(p);
    const y = b.get(p);
    if (x === undefined) return `${p}: unexpected ${y?.type}`;
    if (y === undefined) return `${p}: missing ${x.type}`;
    const fields: Array<keyof TreeEntry> = ['type', 'mode', 'uid', 'gid', 'size', 'sha256', 'link', 'rdev', 'xattrs', 'hardlinks'];
    if (x.type !== 'directory' || (options.dirTimes !== false && x.mtimeMs < (options.dirTimesBefore ?? Infinity))) fields.push('mtimeMs');
    for (const f of fields) {
      const vx = JSON.stringify(x[f]);
      const vy = JSON.stringify(y[f]);
      if (vx !== vy) {
        const show = (v: string | undefined): string => (f === 'mode' && v !== undefined ? `0${Number(v).toString(8)}` : String(v));
        return `${p}: ${f} differs: expected ${show(vx)}, got ${show(vy)}`;
      }
    }
  }
  return undefined;
}
