/**
 * The persistent on-disk blob cache (runtime.md §6.1, upstream's `file` cache): one
 * sparse cache file per blob, `<dir>/<digest>` (e.g. `<dir>/sha256:<hex>`), plus a
 * presence journal `<dir>/<digest>.units` (FORMAT.md) recording which refill units
 * the file holds. See README.md for why presence is journaled rather than read back
 * with SEEK_DATA/fiemap as upstream does.
 *
 * Space: used bytes are the sum of present bytes of all blobs (units × unit size, the
 * last unit short), rebuilt by replaying every journal at open. When storing a fill
 * would exceed `capacityBytes`, whole blobs are evicted in least-recently-used order
 * until used + the fill fits under `lowWaterBytes`; blobs open by a reader are never
 * evicted. When the cap still cannot be met (everything left is open), the fill is
 * served but not stored (`bypassedBytes`), so used space never exceeds the cap. Last
 * access is updated on every read in memory and stamped on the cache file's mtime when
 * its last reader closes; start-up takes it from that mtime.
 *
 * One `BlockCache` owns a directory (`_dir-lock.ts`): a second one, in this or any other
 * process, fails to open with `FailedPreconditionError` until the first is closed or its
 * process exits.
 *
 * @example
 * ```ts
 * const cache = await BlockCache.open({ dir: '/var/cache/obd', capacityBytes: 4 * 2 ** 30 });
 * const reader = await CachedBlobReader.open(cache, remote, { digest });
 * await readBytes(reader, 0, 4096); // fetched once, then served from the cache file
 * await reader.close();
 * await cache.close();
 * ```
 */
import { mkdir, readdir, rm, stat, utimes } from 'node:fs/promises';
import { join } from 'node:path';
import { channel } from 'node:diagnostics_channel';
import { debuglog } from 'node:util';
import { FailedPreconditionError, InvalidArgumentError, UnavailableError } from '../io/errors.ts';
import { acquireDirLock, type DirLock } from './_dir-lock.ts';
import { CachedBlob, journalPresentBytes, type BlobOwner } from './cached-blob.ts';
import { MAX_UNIT_SIZE, MIN_UNIT_SIZE, validateJournalHeader } from './unit-journal.ts';

const debug = debuglog('obd');
const evictBlobChannel = channel('obd:cache:evict-blob');

const GIB = 2 ** 30;
const JOURNAL_SUFFIX = '.units';
const TMP_SUFFIX = '.tmp';
/** `<algorithm>:<hex>`; also what makes a name in the directory a cache file. */
const DIGEST = /^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[0-9a-f]{32,128}$/;

/** Options of {@link BlockCache.open}; names follow upstream `cacheConfig`. */
export interface BlockCacheOptions {
  /** Cache directory; created (recursively) when missing. */
  dir: string;
  /** Cap on present bytes. Default 4 GiB (`cacheSizeGB` 4). */
  capacityBytes?: number;
  /** Eviction target. Default max(90 % of the cap, cap − 50 GiB), as upstream. */
  lowWaterBytes?: number;
  /** Refill unit: a power of two, 4 KiB .. 1 GiB. Default 256 KiB (`refillSize`). */
  refillSize?: number;
  /** Largest single source read of a fill. Default max(4 MiB, refillSize). */
  maxFetchBytes?: number;
  /** fdatasync before journaling (crash/power-loss safety, see cached-blob.ts). Default true. */
  sync?: boolean;
  /** Journal records before a compaction is considered. Default 4096. */
  compactAfterRecords?: number;
  /** Milliseconds clock for LRU; default `Date.now`. */
  now?: () => number;
}

/** A snapshot of the cache's accounting. */
export interface BlockCacheStats {
  usedBytes: number;
  capacityBytes: number;
  lowWaterBytes: number;
  /** Blobs with a cache file (open or not). */
  blobs: number;
  /** Blobs currently open by readers. */
  openBlobs: number;
  evictedBlobs: number;
  evictedBytes: number;
}

interface Entry {
  digest: string;
  size: number;
  present: number;
  lastAccess: number;
  /** Readers holding the blob. */
  refs: number;
  /** Open (or opening) blob while refs > 0 or while closing. */
  blob: Promise<CachedBlob> | undefined;
  /** Files being deleted or the blob being closed: wait before reusing the entry. */
  busy: Promise<void> | undefined;
}

function checkPositive(name: string, v: number): void {
  if (!Number.isSafeInteger(v) || v <= 0) throw new InvalidArgumentError(`Cannot open block cache: ${name} ${v} is not a positive integer`);
}

/** See the file comment. */
export class BlockCache {
  readonly dir: string;
  readonly capacityBytes: number;
  readonly lowWaterBytes: number;
  readonly refillSize: number;
  #options: Required<Omit<BlockCacheOptions, 'dir' | 'capacityBytes' | 'lowWaterBytes' | 'refillSize'>>;
  #lock: DirLock | undefined;
  #entries = new Map<string, Entry>();
  #used = 0;
  #evicting: Promise<void> = Promise.resolve();
  #evictedBlobs = 0;
  #evictedBytes = 0;
  #closed = false;

  private constructor(options: BlockCacheOptions, lock: DirLock) {
    this.dir = options.dir;
    this.capacityBytes = options.capacityBytes ?? 4 * GIB;
    this.lowWaterBytes = options.lowWaterBytes ?? Math.max(Math.floor(this.capacityBytes * 0.9), this.capacityBytes - 50 * GIB);
    this.refillSize = options.refillSize ?? 256 * 1024;
    this.#options = {
      maxFetchBytes: options.maxFetchBytes ?? Math.max(4 << 20, this.refillSize),
      sync: options.sync ?? true,
      compactAfterRecords: options.compactAfterRecords ?? 4096,
      now: options.now ?? Date.now,
    };
    this.#lock = lock;
  }

  /**
   * Opens (creating) a cache directory: takes its lock, removes leftovers of interrupted
   * operations (journals without cache file and vice versa, temporary files), replays
   * every journal to rebuild the accounting and evicts down to the water mark when the
   * directory holds more than the cap.
   */
  static async open(options: BlockCacheOptions): Promise<BlockCache> {
    const refill = options.refillSize ?? 256 * 1024;
    if (!Number.isSafeInteger(refill) || refill < MIN_UNIT_SIZE || refill > MAX_UNIT_SIZE || (refill & (refill - 1)) !== 0) {
      throw new InvalidArgumentError(`Cannot open block cache: refill size ${refill} is not a power of two in ${MIN_UNIT_SIZE}..${MAX_UNIT_SIZE}`);
    }
    if (options.capacityBytes !== undefined) checkPositive('capacity', options.capacityBytes);
    if (options.lowWaterBytes !== undefined) {
      checkPositive('low water mark', options.lowWaterBytes);
      if (options.lowWaterBytes > (options.capacityBytes ?? 4 * GIB)) {
        throw new InvalidArgumentError(`Cannot open block cache: low water mark ${options.lowWaterBytes} exceeds the capacity`);
      }
    }
    if (options.maxFetchBytes !== undefined) checkPositive('max fetch', options.maxFetchBytes);
    await mkdir(options.dir, { recursive: true, mode: 0o755 });
    const lock = await acquireDirLock(options.dir);
    const cache = new BlockCache(options, lock);
    try {
      await cache.#scan();
      if (cache.#used > cache.capacityBytes) await cache.#evictDown(cache.lowWaterBytes);
    } catch (e) {
      await lock.release();
      throw e;
    }
    return cache;
  }

  async #scan(): Promise<void> {
    const names = new Set(await readdir(this.dir));
    for (const name of names) {
      const path = join(this.dir, name);
      if (name.endsWith(TMP_SUFFIX)) {
        await rm(path, { force: true });
        continue;
      }
      const digest = name.endsWith(JOURNAL_SUFFIX) ? name.slice(0, -JOURNAL_SUFFIX.length) : name;
      if (!DIGEST.test(digest)) continue;
      if (name.endsWith(JOURNAL_SUFFIX)) {
        if (!names.has(digest)) await rm(path, { force: true });
        continue;
      }
      const journal = path + JOURNAL_SUFFIX;
      const present = names.has(name + JOURNAL_SUFFIX) ? await journalPresentBytes(journal) : undefined;
      if (present === undefined) {
        // Cache file without a (readable) journal: nothing of it can be trusted.
        debug('cache: removing unrecorded cache file %s', path);
        await rm(journal, { force: true });
        await rm(path, { force: true });
        continue;
      }
      const st = await stat(path);
      this.#entries.set(digest, { digest, size: st.size, present, lastAccess: st.mtimeMs, refs: 0, blob: undefined, busy: undefined });
      this.#used += present;
    }
  }

  /** Accounting snapshot. */
  get stats(): BlockCacheStats {
    let open = 0;
    for (const e of this.#entries.values()) if (e.refs > 0) open++;
    return {
      usedBytes: this.#used,
      capacityBytes: this.capacityBytes,
      lowWaterBytes: this.lowWaterBytes,
      blobs: this.#entries.size,
      openBlobs: open,
      evictedBlobs: this.#evictedBlobs,
      evictedBytes: this.#evictedBytes,
    };
  }

  /** Present bytes of a blob, 0 when not cached. */
  cachedBytes(digest: string): number {
    return this.#entries.get(digest)?.present ?? 0;
  }

  /** Digests with a cache file, least recently used first. */
  digests(): string[] {
    return [...this.#entries.values()].sort((a, b) => a.lastAccess - b.lastAccess).map((e) => e.digest);
  }

  /**
   * Opens the cache entry of a blob for a reader (reference-counted; pair with
   * {@link release}). Used by `CachedBlobReader`.
   */
  async acquire(digest: string, size: number): Promise<CachedBlob> {
    if (!DIGEST.test(digest)) throw new InvalidArgumentError(`Cannot cache blob ${digest}: not a digest of the form algorithm:hex`);
    try {
      validateJournalHeader({ unitSize: this.refillSize, blobSize: size });
    } catch (e) {
      throw new InvalidArgumentError(`Cannot cache blob ${digest} of ${size} bytes: ${(e as Error).message}`, { cause: e });
    }
    for (let i = 0; ; i++) {
      if (this.#closed) throw new FailedPreconditionError(`Cannot open cached blob ${digest}: cache ${this.dir} is closed`);
      const entry = this.#entries.get(digest);
      if (entry?.busy !== undefined) {
        if (i >= 100) throw new UnavailableError(`Cannot open cached blob ${digest}: entry stayed busy (closing or being evicted)`);
        await entry.busy;
        continue;
      }
      const e: Entry = entry ?? { digest, size, present: 0, lastAccess: this.#options.now(), refs: 0, blob: undefined, busy: undefined };
      this.#entries.set(digest, e);
      e.refs++;
      e.lastAccess = this.#options.now();
      e.blob ??= this.#openBlob(e, size);
      try {
        const blob = await e.blob;
        if (blob.size !== size) {
          throw new InvalidArgumentError(`Cannot open cached blob ${digest} as ${size} bytes: it is open as ${blob.size} bytes`);
        }
        return blob;
      } catch (err) {
        await this.release(digest);
        throw err;
      }
    }
  }

  #openBlob(e: Entry, size: number): Promise<CachedBlob> {
    const digest = e.digest;
    const owner: BlobOwner = {
      reserve: (bytes) => this.#reserve(e, bytes),
      release: (bytes) => {
        e.present -= bytes;
        this.#used -= bytes;
      },
      touch: () => {
        e.lastAccess = this.#options.now();
      },
    };
    return (async () => {
      const blob = await CachedBlob.open({
        dataPath: join(this.dir, digest),
        journalPath: join(this.dir, digest + JOURNAL_SUFFIX),
        digest,
        size,
        unitSize: this.refillSize,
        sync: this.#options.sync,
        maxFetchBytes: this.#options.maxFetchBytes,
        compactAfterRecords: this.#options.compactAfterRecords,
        owner,
      });
      // Opening may have discarded a stale journal: take the blob's word for it.
      this.#used += blob.presentBytes - e.present;
      e.present = blob.presentBytes;
      e.size = size;
      return blob;
    })();
  }

  /** Drops one reference taken by {@link acquire}; the last one closes the entry. */
  async release(digest: string): Promise<void> {
    const e = this.#entries.get(digest);
    if (e === undefined || e.refs === 0) return;
    e.refs--;
    if (e.refs > 0 || e.blob === undefined) return;
    const opening = e.blob;
    const closing = (async () => {
      const blob = await opening.catch(() => undefined);
      if (blob === undefined) {
        if (e.present === 0) this.#entries.delete(digest);
        return;
      }
      await blob.close();
      const t = new Date(e.lastAccess);
      await utimes(blob.dataPath, t, t).catch(() => undefined);
    })();
    e.busy = closing;
    await closing;
    if (e.busy === closing) e.busy = undefined;
    if (e.blob === opening && e.refs === 0) e.blob = undefined;
  }

  /** Claims `bytes` for blob `e`, evicting other blobs when over the cap. */
  async #reserve(e: Entry, bytes: number): Promise<boolean> {
    if (this.#closed) return false;
    if (this.#used + bytes <= this.capacityBytes) {
      this.#used += bytes;
      e.present += bytes;
      return true;
    }
    await this.#evictDown(Math.max(0, this.lowWaterBytes - bytes));
    if (this.#used + bytes > this.capacityBytes) return false;
    this.#used += bytes;
    e.present += bytes;
    return true;
  }

  /** Evicts unopened blobs, least recently used first, until used ≤ target (one eviction at a time). */
  #evictDown(target: number): Promise<void> {
    const run = this.#evicting.then(async () => {
      if (this.#used <= target) return;
      const victims = [...this.#entries.values()]
        .filter((e) => e.refs === 0 && e.blob === undefined && e.busy === undefined)
        .sort((a, b) => a.lastAccess - b.lastAccess);
      for (const v of victims) {
        if (this.#used <= target) break;
        if (v.refs > 0 || v.blob !== undefined || v.busy !== undefined) continue;
        await this.#deleteBlob(v);
      }
    });
    this.#evicting = run.catch((err: unknown) => debug('cache: eviction failed: %s', (err as Error).message));
    return this.#evicting;
  }

  async #deleteBlob(v: Entry): Promise<void> {
    const deleting = (async () => {
      // Journal first: a crash in between leaves an unrecorded cache file, removed at start-up.
      await rm(join(this.dir, v.digest + JOURNAL_SUFFIX), { force: true });
      await rm(join(this.dir, v.digest), { force: true });
    })();
    v.busy = deleting;
    try {
      await deleting;
    } finally {
      v.busy = undefined;
    }
    this.#used -= v.present;
    this.#evictedBlobs++;
    this.#evictedBytes += v.present;
    if (evictBlobChannel.hasSubscribers) evictBlobChannel.publish({ digest: v.digest, bytes: v.present });
    v.present = 0;
    if (this.#entries.get(v.digest) === v && v.refs === 0) this.#entries.delete(v.digest);
  }

  /**
   * Closes the cache: flushes and closes every open entry (their readers reject from
   * then on) and releases the directory lock. Idempotent.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#evicting;
    const open = [...this.#entries.values()].flatMap((e) => [e.blob, e.busy]).filter((p) => p !== undefined);
    await Promise.allSettled(open.map(async (p) => {
      const blob = await p;
      if (blob instanceof CachedBlob) await blob.close();
    }));
    await this.#lock?.release();
    this.#lock = undefined;
  }
}
