/**
 * Applies an OCI layer onto a directory through ordinary file-system calls
 * (erofs-and-fs.md §2.3), in archive order:
 *
 * 1. the name is checked (`normalizeEntryPath`) and its parent resolved inside the root
 *    (`ScopedRoot`), missing parents created with mode 0755;
 * 2. whiteouts: `.wh..wh..opq` empties its directory, `.wh.NAME` removes NAME, both
 *    sparing whatever this layer already extracted; other `.wh..wh.*` (AUFS metadata)
 *    are skipped;
 * 3. an existing object in the way is unlinked, or removed recursively when it is a
 *    directory and the entry is not (an existing directory stays for a directory entry);
 * 4. the object is created without following a symlink at the name (`O_EXCL|O_NOFOLLOW`,
 *    `symlink`, `link`, `mknod`);
 * 5. attributes: owner (`lchown`), extended attributes (`SCHILY.xattr.*`, set in
 *    batches by `setfattr`), times (`lutimes`, atime = mtime), permissions with
 *    setuid/setgid/sticky (`chmod` after `chown`, which would clear them; not on
 *    symlinks). Hard links get no attributes of their own: they share the target's
 *    inode, and re-owning it would clear its setuid bits and file capabilities;
 * 6. after the archive, directory mtimes are set again in archive order.
 *
 * Sockets cannot be stored in a layer meaningfully: they are skipped with a warning.
 *
 * @example
 * ```ts
 * const stats = await new DirectoryApplier().apply(createReadStream('layer.tar.gz'), '/mnt/rootfs');
 * stats.diffId; // 'sha256:…' of the uncompressed tar
 * ```
 */
import { createHash } from 'node:crypto';
import { constants } from 'node:fs';
import { chmod, lchown, link, lstat, lutimes, mkdir, open, readdir, rm, rmdir, symlink, unlink, utimes, type FileHandle } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { FailedPreconditionError, InvalidArgumentError, NotFoundError, ObdError } from '../io/errors.ts';
import { runCommand } from '../attach/run-command.ts';
import { decompress, type Compression } from './decompress.ts';
import { emptyStats, type ApplyOptions, type ApplyStats, type LayerApplier } from './layer-applier.ts';
import { normalizeEntryPath, ScopedRoot } from './scoped-root.ts';
import { TarReader, type TarEntry } from './tar-reader.ts';
import { setXattrs, type XattrJob } from './_set-xattrs.ts';

const OPAQUE = '.wh..wh..opq';
const WHITEOUT = '.wh.';
const AUFS_META = '.wh..wh.';
const CREATE_FLAGS = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
/** Files whose extended attributes are queued before a `setfattr` batch runs. */
const XATTR_BATCH = 2000;
/** Progress is reported after this many uncompressed bytes. */
const PROGRESS_STEP = 4 << 20;
/** Regular files up to this size are read into memory and written in the background. */
const SMALL_FILE = 1 << 20;
/** Background file writes in flight (and their buffered bytes). */
const MAX_PENDING = 64;
const MAX_PENDING_BYTES = 32 << 20;

function errnoOf(e: unknown): string | undefined {
  return (e as NodeJS.ErrnoException | undefined)?.code;
}

async function writeAll(fh: FileHandle, chunk: Uint8Array): Promise<void> {
  let done = 0;
  while (done < chunk.length) {
    const { bytesWritten } = await fh.write(chunk, done, chunk.length - done);
    done += bytesWritten;
  }
}

/** Hashes and counts a stream as it passes, calling `onStep` every {@link PROGRESS_STEP} bytes. */
async function* tap(source: AsyncIterable<Uint8Array>, sink: { hash: ReturnType<typeof createHash>; bytes: number; onStep: () => void }): AsyncGenerator<Uint8Array> {
  let next = PROGRESS_STEP;
  for await (const chunk of source) {
    sink.hash.update(chunk);
    sink.bytes += chunk.length;
    if (sink.bytes >= next) {
      next = sink.bytes + PROGRESS_STEP;
      sink.onStep();
    }
    yield chunk;
  }
}

/** The state of one apply. */
class Extraction {
  readonly #root: ScopedRoot;
  readonly #options: ApplyOptions;
  readonly stats: ApplyStats = emptyStats();
  /** Paths (relative to the root, symlinks resolved) this layer created. */
  readonly #extracted = new Set<string>();
  /** Those paths and all their ancestors. */
  readonly #touched = new Set<string>();
  readonly #dirTimes: Array<{ path: string; mtime: number }> = [];
  readonly #xattrs = new Map<string, XattrJob>();
  /** Background file writes by path. */
  readonly #pending = new Map<string, Promise<void>>();
  #pendingBytes = 0;
  #failure: unknown;

  constructor(root: string, options: ApplyOptions) {
    this.#root = new ScopedRoot(root);
    this.#options = options;
  }

  #rel(abs: string): string {
    return relative(this.#root.root, abs);
  }

  #mark(abs: string): void {
    const rel = this.#rel(abs);
    this.#extracted.add(rel);
    for (let p = rel; p !== ''; p = p.includes('/') ? p.slice(0, p.lastIndexOf('/')) : '') {
      if (this.#touched.has(p)) break;
      this.#touched.add(p);
    }
  }

  #warn(entry: string, message: string): void {
    this.#options.onWarning?.({ entry, message });
  }

  /** Forgets queued extended attributes of `abs` and everything below it. */
  #dropXattrs(abs: string): void {
    if (this.#xattrs.size === 0) return;
    this.#xattrs.delete(abs);
    const prefix = `${abs}/`;
    for (const k of this.#xattrs.keys()) if (k.startsWith(prefix)) this.#xattrs.delete(k);
  }

  /** Removes `abs` recursively, sparing what this layer extracted. */
  async #remove(abs: string): Promise<void> {
    const rel = this.#rel(abs);
    this.#root.invalidate();
    this.#dropXattrs(abs);
    if (!this.#touched.has(rel)) {
      await rm(abs, { recursive: true, force: true });
      return;
    }
    const st = await lstat(abs).catch(() => undefined);
    if (st === undefined) return;
    if (!st.isDirectory()) {
      if (!this.#extracted.has(rel)) await unlink(abs);
      return;
    }
    for (const name of await readdir(abs)) await this.#remove(join(abs, name));
    if (!this.#extracted.has(rel)) {
      await rmdir(abs).catch((e: unknown) => {
        if (errnoOf(e) !== 'ENOTEMPTY' && errnoOf(e) !== 'EEXIST') throw e;
      });
    }
  }

  /** Clears the way for a new object at `abs`; resolves true when an existing directory stays (directory entries). */
  async #clear(abs: string, keepDir: boolean): Promise<boolean> {
    const st = await lstat(abs).catch(() => undefined);
    if (st === undefined) return false;
    if (st.isDirectory()) {
      if (keepDir) return true;
      await this.#remove(abs);
      return false;
    }
    if (st.isSymbolicLink()) this.#root.invalidate();
    this.#dropXattrs(abs);
    await unlink(abs);
    return false;
  }

  /** Runs `create`; on EEXIST clears the way once and retries. */
  async #create<T>(abs: string, create: () => Promise<T>): Promise<T> {
    try {
      return await create();
    } catch (e) {
      if (errnoOf(e) !== 'EEXIST') throw e;
    }
    await this.#clear(abs, false);
    return create();
  }

  async #attrs(abs: string, e: TarEntry, what: string): Promise<void> {
    await lchown(abs, e.uid, e.gid);
    this.#queueXattrs(abs, e, what);
    await lutimes(abs, e.mtime, e.mtime);
    if (e.type !== 'symlink') await chmod(abs, e.mode);
  }

  #queueXattrs(abs: string, e: TarEntry, what: string): void {
    if (e.xattrs.size === 0) return;
    this.#xattrs.set(abs, { path: abs, what, regularOrDir: e.type === 'file' || e.type === 'directory', xattrs: e.xattrs });
  }

  async flushXattrs(): Promise<void> {
    if (this.#xattrs.size === 0) return;
    const jobs = [...this.#xattrs.values()];
    this.#xattrs.clear();
    const warnings = await setXattrs(jobs);
    for (const w of warnings) this.#warn(w.what, w.message);
    this.stats.xattrs += jobs.reduce((n, j) => n + j.xattrs.size, 0) - warnings.length;
  }

  /** Creates a regular file from `data` (chunks), then owner, times and mode. */
  async #file(abs: string, e: TarEntry, at: { data: AsyncIterable<Uint8Array> | Uint8Array[]; what: string }): Promise<void> {
    const fh = await this.#create(abs, () => open(abs, CREATE_FLAGS, 0o600));
    try {
      for await (const chunk of at.data) await writeAll(fh, chunk);
      await fh.chown(e.uid, e.gid);
      this.#queueXattrs(abs, e, at.what);
      await fh.utimes(e.mtime, e.mtime);
      await fh.chmod(e.mode);
    } finally {
      await fh.close();
    }
    this.stats.files++;
    this.stats.fileBytes += e.size;
  }

  /**
   * A regular file: small ones are buffered and written in the background (several at
   * once: each costs a handful of thread-pool round trips), large ones streamed in line.
   */
  async #regular(abs: string, e: TarEntry, at: { tar: TarReader; what: string }): Promise<void> {
    const max = this.#options.maxFileSize ?? Number.MAX_SAFE_INTEGER;
    if (e.size > max) throw new InvalidArgumentError(`Cannot apply ${at.what}: it declares ${e.size} bytes, more than the ${max}-byte limit (the device size)`);
    await this.#waitFor(abs);
    if (e.size > SMALL_FILE) {
      await this.#file(abs, e, { data: at.tar.body(), what: at.what });
      return;
    }
    const chunks: Uint8Array[] = [];
    for await (const chunk of at.tar.body()) chunks.push(chunk.slice());
    while (this.#pending.size >= MAX_PENDING || this.#pendingBytes >= MAX_PENDING_BYTES) await Promise.race(this.#pending.values());
    this.#pendingBytes += e.size;
    const task = this.#file(abs, e, { data: chunks, what: at.what })
      .catch((err: unknown) => {
        this.#failure ??= entryError(err, at.what);
      })
      .finally(() => {
        this.#pending.delete(abs);
        this.#pendingBytes -= e.size;
      });
    this.#pending.set(abs, task);
  }

  /** Waits for background writes at `abs`, below it or above it. */
  async #waitFor(abs: string): Promise<void> {
    for (const [p, task] of this.#pending) {
      if (p === abs || p.startsWith(`${abs}/`) || abs.startsWith(`${p}/`)) await task;
    }
    this.#rethrow();
  }

  /** Waits for every background write. */
  async settle(): Promise<void> {
    while (this.#pending.size > 0) await Promise.all(this.#pending.values());
    this.#rethrow();
  }

  #rethrow(): void {
    if (this.#failure !== undefined) throw this.#failure;
  }

  async #directory(abs: string, e: TarEntry, what: string): Promise<void> {
    try {
      await mkdir(abs, { mode: 0o700 });
    } catch (err) {
      if (errnoOf(err) !== 'EEXIST') throw err;
      if (!(await this.#clear(abs, true))) await mkdir(abs, { mode: 0o700 });
    }
    await this.#attrs(abs, e, what);
    this.#dirTimes.push({ path: abs, mtime: e.mtime });
    this.stats.directories++;
  }

  async #hardlink(abs: string, e: TarEntry, what: string): Promise<void> {
    const target = normalizeEntryPath(e.linkpath, `${what}: hard-link target ${e.linkpath}`);
    if (target === '') throw new InvalidArgumentError(`Cannot apply ${what}: a hard link to the root directory`);
    const slash = target.lastIndexOf('/');
    const parent = await this.#root.resolveDir(slash < 0 ? '' : target.slice(0, slash), { create: false, entry: what });
    const from = parent === undefined ? undefined : join(parent, target.slice(slash + 1));
    const st = from === undefined ? undefined : await lstat(from).catch(() => undefined);
    if (from === undefined || st === undefined) throw new NotFoundError(`Cannot apply ${what}: its hard-link target ${e.linkpath} does not exist`);
    if (st.isDirectory()) throw new InvalidArgumentError(`Cannot apply ${what}: its hard-link target ${e.linkpath} is a directory`);
    if (from === abs) return;
    const here = await lstat(abs).catch(() => undefined);
    if (here !== undefined && here.ino === st.ino && here.dev === st.dev) return;
    await this.#create(abs, () => link(from, abs));
    this.stats.hardlinks++;
  }

  async #node(abs: string, e: TarEntry, what: string): Promise<void> {
    await this.#clear(abs, false);
    const kind = e.type === 'char' ? ['c', String(e.devmajor), String(e.devminor)] : e.type === 'block' ? ['b', String(e.devmajor), String(e.devminor)] : ['p'];
    await runCommand(['mknod', '-m', (e.mode & 0o777).toString(8), abs, ...kind], { what: `apply ${what}` });
    await this.#attrs(abs, e, what);
    if (e.type === 'fifo') this.stats.fifos++;
    else this.stats.devices++;
  }

  async entry(e: TarEntry, tar: TarReader): Promise<void> {
    const what = `tar entry ${e.path} (at byte ${e.offset})`;
    this.stats.entries++;
    this.#rethrow();
    if (e.type === 'socket') {
      this.#warn(e.path, 'sockets cannot be stored in a layer: skipped');
      this.stats.skipped++;
      return;
    }
    const rel = normalizeEntryPath(e.path, what);
    if (rel === '') {
      if (e.type !== 'directory') throw new InvalidArgumentError(`Cannot apply ${what}: the root can only be a directory`);
      await this.settle();
      await this.#attrs(this.#root.root, e, what);
      this.#dirTimes.push({ path: this.#root.root, mtime: e.mtime });
      return;
    }
    const slash = rel.lastIndexOf('/');
    const base = rel.slice(slash + 1);
    await this.#waitFor(join(this.#root.root, rel));
    if (base.startsWith(WHITEOUT)) await this.settle();
    const parent = (await this.#root.resolveDir(slash < 0 ? '' : rel.slice(0, slash), { create: true, entry: what })) as string;
    if (base === OPAQUE) {
      for (const name of await readdir(parent)) await this.#remove(join(parent, name));
      this.stats.opaques++;
      return;
    }
    if (base.startsWith(AUFS_META)) {
      this.#warn(e.path, 'AUFS metadata entry skipped');
      this.stats.skipped++;
      return;
    }
    if (base.startsWith(WHITEOUT)) {
      const name = base.slice(WHITEOUT.length);
      if (name === '' || name === '.' || name === '..') throw new InvalidArgumentError(`Cannot apply ${what}: whiteout of '${name}'`);
      await this.#remove(join(parent, name));
      this.stats.whiteouts++;
      return;
    }
    const abs = join(parent, base);
    switch (e.type) {
      case 'file':
        await this.#regular(abs, e, { tar, what });
        break;
      case 'directory':
        await this.#waitFor(abs);
        await this.#directory(abs, e, what);
        break;
      case 'symlink':
        await this.#waitFor(abs);
        await this.#create(abs, () => symlink(e.linkpath, abs));
        await this.#attrs(abs, e, what);
        this.stats.symlinks++;
        break;
      case 'hardlink':
        await this.settle();
        await this.#hardlink(abs, e, what);
        break;
      default:
        await this.#waitFor(abs);
        await this.#node(abs, e, what);
    }
    this.#mark(abs);
    if (this.#xattrs.size >= XATTR_BATCH) {
      await this.settle();
      await this.flushXattrs();
    }
  }

  /** Sets directory mtimes again (creating entries inside them changed them). */
  async finish(): Promise<void> {
    await this.settle();
    await this.flushXattrs();
    for (const d of this.#dirTimes) {
      const st = await lstat(d.path).catch(() => undefined);
      if (st?.isDirectory() === true) await utimes(d.path, d.mtime, d.mtime);
    }
  }
}

/** Wraps a system error with the entry it happened on. */
function entryError(e: unknown, what: string): unknown {
  if (e instanceof ObdError || !(e instanceof Error)) return e;
  return new FailedPreconditionError(`Cannot apply ${what}: ${e.message}`, { cause: e });
}

/** Applies layers onto a directory in this process (see the module comment). */
export class DirectoryApplier implements LayerApplier {
  async apply(layer: AsyncIterable<Uint8Array>, rootDir: string, options: ApplyOptions = {}): Promise<ApplyStats> {
    let compression: Compression = 'none';
    const x = new Extraction(rootDir, options);
    const tapped = {
      hash: createHash('sha256'),
      bytes: 0,
      onStep: () => options.onProgress?.({ tarBytes: tapped.bytes, entries: x.stats.entries }),
    };
    const tar = new TarReader(tap(decompress(layer, (c) => (compression = c)), tapped));
    try {
      for (let e = await tar.next(); e !== undefined; e = await tar.next()) {
        try {
          await x.entry(e, tar);
        } catch (err) {
          throw entryError(err, `tar entry ${e.path} (at byte ${e.offset})`);
        }
      }
    } catch (err) {
      await x.settle().catch(() => {}); // no write may outlive the apply
      throw err;
    }
    await tar.drain();
    try {
      await x.finish();
    } catch (err) {
      throw entryError(err, 'the layer (final attributes)');
    }
    options.onProgress?.({ tarBytes: tapped.bytes, entries: x.stats.entries });
    return { ...x.stats, tarBytes: tapped.bytes, diffId: `sha256:${tapped.hash.digest('hex')}`, compression };
  }
}
