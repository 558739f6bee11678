/**
 * Path safety for applying layers: member names are checked lexically, and parent
 * directories are resolved component by component with `lstat`, so nothing is ever
 * written outside the root directory.
 *
 * - `normalizeEntryPath` refuses absolute names, `..` components and NUL bytes; `.`
 *   components and repeated slashes are dropped (`./usr//bin/` → `usr/bin`; `./` → the
 *   root, `''`).
 * - `ScopedRoot.resolveDir` walks a relative directory path inside the root. A symlink
 *   met on the way is followed *as the container would see it*: an absolute target is
 *   taken relative to the root, a relative one relative to its directory. A target whose
 *   `..` climbs above the root is refused (containerd clamps it at the root instead),
 *   as is a chain of more than 40 links. The last component of an entry is never
 *   followed: callers create, replace or unlink it with `O_NOFOLLOW`/`lstat` semantics.
 *
 * Resolved directories are cached until `invalidate()` (call it whenever a directory or
 * symlink is removed or replaced). File-system calls are synchronous (see
 * `DirectoryApplier`).
 *
 * @example
 * ```ts
 * const root = new ScopedRoot('/mnt/rootfs');
 * const parent = root.resolveDir('usr/lib', { create: true, entry: 'usr/lib/x.so' });
 * // '/mnt/rootfs/usr/lib' (or wherever a symlink inside the root leads)
 * ```
 */
import { lstatSync, mkdirSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { FailedPreconditionError, InvalidArgumentError } from '../io/errors.ts';

/** Most symlinks followed while resolving one path (Linux's MAXSYMLINKS). */
const MAX_LINKS = 40;

/**
 * Normalises a tar member name to a relative path without `.` components (`''` is the
 * root), refusing what could leave the root. `what` names the entry in errors.
 */
export function normalizeEntryPath(name: string, what: string): string {
  if (name.includes('\0')) throw new InvalidArgumentError(`Cannot apply ${what}: the name contains a NUL byte`);
  if (name.startsWith('/')) throw new InvalidArgumentError(`Cannot apply ${what}: absolute names are refused`);
  const parts = name.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.includes('..')) throw new InvalidArgumentError(`Cannot apply ${what}: the name has a '..' component`);
  return parts.join('/');
}

function isErrno(e: unknown, code: string): boolean {
  return (e as NodeJS.ErrnoException | undefined)?.code === code;
}

/** A root directory inside which relative paths are resolved without escaping. */
export class ScopedRoot {
  readonly root: string;
  readonly #cache = new Map<string, string>();

  constructor(root: string) {
    this.root = root;
  }

  /** Forgets resolved directories (after removing or replacing a directory or symlink). */
  invalidate(): void {
    this.#cache.clear();
  }

  /**
   * The host path of directory `rel` (a normalised relative path; `''` is the root).
   * Missing components are created (mode 0755) when `create`, else the result is
   * undefined. `entry` names the tar entry in errors.
   */
  resolveDir(rel: string, options: { create: boolean; entry: string }): string | undefined {
    if (rel === '') return this.root;
    const hit = this.#cache.get(rel);
    if (hit !== undefined) return hit;
    const queue = rel.split('/');
    const real: string[] = [];
    let links = 0;
    while (queue.length > 0) {
      const c = queue.shift() as string;
      if (c === '' || c === '.') continue;
      if (c === '..') {
        if (real.length === 0) {
          throw new InvalidArgumentError(`Cannot apply ${options.entry}: a symlink in its parent path '${rel}' leads out of the root`);
        }
        real.pop();
        continue;
      }
      const p = join(this.root, ...real, c);
      const st = lstatSync(p, { throwIfNoEntry: false });
      if (st === undefined) {
        if (!options.create) return undefined;
        try {
          mkdirSync(p, { mode: 0o755 });
        } catch (err) {
          if (!isErrno(err, 'EEXIST')) throw err;
        }
        real.push(c);
        continue;
      }
      if (st.isDirectory()) {
        real.push(c);
      } else if (st.isSymbolicLink()) {
        if (++links > MAX_LINKS) throw new InvalidArgumentError(`Cannot apply ${options.entry}: more than ${MAX_LINKS} symlinks in its parent path '${rel}'`);
        const target = readlinkSync(p);
        if (target.startsWith('/')) real.length = 0;
        queue.unshift(...target.split('/'));
      } else {
        throw new FailedPreconditionError(`Cannot apply ${options.entry}: its parent '${[...real, c].join('/')}' exists and is not a directory`);
      }
    }
    const out = join(this.root, ...real);
    this.#cache.set(rel, out);
    return out;
  }
}
