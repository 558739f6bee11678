/**
 * A `BlobReader` of one registry blob through the block cache: reads of cached units are
 * served from the cache file without touching the source; missing units are fetched
 * from the source (coalesced per run, each unit once even under concurrent readers),
 * stored, and served. `evict()` drops units so that the next read fetches them again
 * (used after a ZFile block fails its CRC, zfile.md §4.3).
 *
 * @example
 * ```ts
 * const cache = await BlockCache.open({ dir });
 * const reader = await CachedBlobReader.open(cache, remoteReader, { digest: 'sha256:…' });
 * const head = await readBytes(reader, 0, 512);
 * reader.stats; // { hitBytes: 0, missBytes: 512, sourceReads: 1, sourceBytes: 262144, … }
 * await reader.close(); // also closes remoteReader
 * ```
 */
import type { BlobReader, Evictable } from '../io/blob-reader.ts';
import { FailedPreconditionError } from '../io/errors.ts';
import type { BlockCache } from './block-cache.ts';
import { newCacheReadStats, type CachedBlob, type CacheReadStats, type ReadContext } from './cached-blob.ts';

/** Options of {@link CachedBlobReader.open}. */
export interface CachedBlobReaderOptions {
  /** Digest of the blob (`sha256:<hex>`): names the cache file. The size is `source.size`. */
  digest: string;
  /** Close the source with the reader. Default true. */
  closeSource?: boolean;
}

/** See the file comment. */
export class CachedBlobReader implements BlobReader, Evictable {
  readonly size: number;
  readonly digest: string;
  #cache: BlockCache;
  #blob: CachedBlob | undefined;
  #ctx: ReadContext;
  #closeSource: boolean;
  #closing: Promise<void> | undefined;

  private constructor(cache: BlockCache, blob: CachedBlob, init: { source: BlobReader; closeSource: boolean }) {
    this.#cache = cache;
    this.#blob = blob;
    this.size = blob.size;
    this.digest = blob.digest;
    this.#ctx = { source: init.source, stats: newCacheReadStats() };
    this.#closeSource = init.closeSource;
  }

  /** Opens the cache entry of `options.digest` (of `source.size` bytes) for reading through `source`. */
  static async open(cache: BlockCache, source: BlobReader, options: CachedBlobReaderOptions): Promise<CachedBlobReader> {
    const blob = await cache.acquire(options.digest, source.size);
    return new CachedBlobReader(cache, blob, { source, closeSource: options.closeSource ?? true });
  }

  /** Counters of this reader (not of other readers of the same blob). */
  get stats(): Readonly<CacheReadStats> {
    return { ...this.#ctx.stats };
  }

  async readAt(buf: Uint8Array, offset: number): Promise<number> {
    return this.#open().read(buf, offset, this.#ctx);
  }

  async evict(offset: number, length: number): Promise<void> {
    await this.#open().evict(offset, length);
  }

  /** True when `[offset, offset+length)` would be served entirely from the cache file. */
  isCached(offset: number, length: number): boolean {
    return this.#open().isCached(offset, length);
  }

  /** Waits until everything stored so far is recorded in the journal. */
  async flush(): Promise<void> {
    await this.#open().flush();
  }

  /** Releases the cache entry and (by default) closes the source. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      const blob = this.#blob;
      this.#blob = undefined;
      if (blob !== undefined) await this.#cache.release(blob.digest);
      if (this.#closeSource) await this.#ctx.source.close();
    })();
    return this.#closing;
  }

  #open(): CachedBlob {
    const blob = this.#blob;
    if (blob === undefined) throw new FailedPreconditionError(`Cannot read cached blob ${this.digest}: reader is closed`);
    return blob;
  }
}
