import type { BlobReader, Evictable } from './blob-reader.ts';
import { clampRead, isEvictable } from './blob-reader.ts';

/**
 * A window `[start, start+size)` of another reader, seen as a blob of its own (the tar
 * payload of a wrapped layer). Closing the slice closes the parent when `ownsParent`.
 */
export class SliceReader implements BlobReader, Evictable {
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

  async evict(offset: number, length: number): Promise<void> {
    if (isEvictable(this.#parent)) await this.#parent.evict(this.start + offset, length);
  }

  async close(): Promise<void> {
    if (this.#ownsParent) await this.#parent.close();
  }
}
