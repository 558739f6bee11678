import type { BlobReader, Evictable, Prefetchable } from './blob-reader.ts';
import { clampRead, isEvictable, isPrefetchable, readFully } from './blob-reader.ts';

/** Bytes read at a time by {@link SliceReader.prefetch} from a parent that cannot prefetch. */
const PREFETCH_READ = 1 << 20;

/**
 * A window `[start, start+size)` of another reader, seen as a blob of its own (the tar
 * payload of a wrapped layer). Closing the slice closes the parent when `ownsParent`.
 */
export class SliceReader implements BlobReader, Evictable, Prefetchable {
  readonly #parent: BlobReader;
  /** Where the window starts in the parent. */
  readonly start: number;
  readonly #ownsParent: boolean;
  readonly size: number;

  constructor(parent: BlobReader, range: { start: number; size: number; ownsParent?: boolean }) {
    if (range.start < 0 || range.size < 0 || range.start + range.size > parent.size) {
      throw new RangeError(`Slice [${range.start}, +${range.size}) lies outside a blob of ${parent.size} bytes`);
    }
    this.#parent = parent;
    this.start = range.start;
    this.size = range.size;
    this.#ownsParent = range.ownsParent ?? true;
  }

  async readAt(buf: Uint8Array, offset: number): Promise<number> {
    const n = clampRead(this.size, offset, buf.length);
    if (n === 0) return 0;
    return this.#parent.readAt(buf.subarray(0, n), this.start + offset);
  }

  /** The parent's `prefetch` of the window's range, or a read of it (into the parent's caches). */
  async prefetch(offset: number, length: number): Promise<void> {
    const n = clampRead(this.size, offset, length);
    if (n === 0) return;
    if (isPrefetchable(this.#parent)) return this.#parent.prefetch(this.start + offset, n);
    const buf = new Uint8Array(Math.min(n, PREFETCH_READ));
    for (let done = 0; done < n; done += buf.length) {
      const part = buf.subarray(0, Math.min(buf.length, n - done));
      await readFully(this.#parent, part, this.start + offset + done, 'slice prefetch');
    }
  }

  async evict(offset: number, length: number): Promise<void> {
    if (isEvictable(this.#parent)) await this.#parent.evict(this.start + offset, length);
  }

  async close(): Promise<void> {
    if (this.#ownsParent) await this.#parent.close();
  }
}
