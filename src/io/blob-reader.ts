/**
 * The random-access reader contract: the spine of the data path (STYLE.md §1).
 *
 * A `BlobReader` is an immutable byte sequence of known `size` that can be read at any
 * offset, concurrently. Local files, registry blobs, the cache, the tar payload view, the
 * ZFile decoder and LSMT layers all implement it, and each consumes the one below it.
 *
 * Lifecycle: obtain (open), `readAt` any number of times (concurrent calls are allowed),
 * `close` once. After `close`, reads reject.
 *
 * `readAt(buf, offset)` fills `buf` from `offset` and resolves with the number of bytes
 * read; that is `buf.length` unless the read reaches `size` (then fewer; 0 at or past
 * the end). It never returns bytes beyond `size`.
 *
 * @example
 * ```ts
 * const r = await openFileReader('layer.bin');
 * const head = new Uint8Array(512);
 * await readFully(r, head, 0);
 * await r.close();
 * ```
 */
import { DataCorruptionError } from './errors.ts';

export interface BlobReader {
  readonly size: number;
  readAt(buf: Uint8Array, offset: number): Promise<number>;
  close(): Promise<void>;
}

/**
 * Optional ability: drop any cached copy of `[offset, offset+length)` so the next read
 * goes to the source again (used after a CRC mismatch, zfile.md §4.3).
 */
export interface Evictable {
  evict(offset: number, length: number): Promise<void>;
}

export function isEvictable(r: unknown): r is Evictable {
  return typeof (r as Partial<Evictable>).evict === 'function';
}

/**
 * Optional ability: bring what reading `[offset, offset+length)` needs into the caches
 * below, without producing the bytes (a decoder skips decoding). Used by trace replay,
 * which only warms the cache for later reads.
 */
export interface Prefetchable {
  prefetch(offset: number, length: number): Promise<void>;
}

export function isPrefetchable(r: unknown): r is Prefetchable {
  return typeof (r as Partial<Prefetchable>).prefetch === 'function';
}

/**
 * Reads exactly `buf.length` bytes at `offset`, or throws a `DataCorruptionError`
 * naming `what` when the blob ends first.
 */
// eslint-disable-next-line max-params -- the label is optional context for the error message
export async function readFully(r: BlobReader, buf: Uint8Array, offset: number, what = 'blob'): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const n = await r.readAt(buf.subarray(done), offset + done);
    if (n <= 0) {
      throw new DataCorruptionError(
        `Cannot read ${what}: ${buf.length} bytes wanted at offset ${offset}, blob ends at ${r.size}`,
      );
    }
    done += n;
  }
}

/** Allocates and reads `length` bytes at `offset` (see {@link readFully}). */
// eslint-disable-next-line max-params -- the label is optional context for the error message
export async function readBytes(r: BlobReader, offset: number, length: number, what = 'blob'): Promise<Uint8Array> {
  const buf = new Uint8Array(length);
  await readFully(r, buf, offset, what);
  return buf;
}

/** Clamps a read of `length` bytes at `offset` to a blob of `size`; returns the usable length. */
export function clampRead(size: number, offset: number, length: number): number {
  if (offset >= size || length <= 0) return 0;
  return Math.min(length, size - offset);
}
