import type { BlobReader, Evictable } from './blob-reader.ts';
import { isEvictable } from './blob-reader.ts';

/**
 * Counts the bytes and reads that pass through to another reader (how much of a layer
 * a lazily mounted image really fetched).
 */
export class CountingReader implements BlobReader, Evictable {
  readonly #inner: BlobReader;
  bytesRead = 0;
  reads = 0;

  constructor(inner: BlobReader) {
    this.#inner = inner;
  }

  get size(): number {
    return this.#inner.size;
  }

  async readAt(buf: Uint8Array, offset: number): Promise<number> {
    const n = await this.#inner.readAt(buf, offset);
    this.bytesRead += n;
    this.reads++;
    return n;
  }

  async evict(offset: number, length: number): Promise<void> {
    if (isEvictable(this.#inner)) await this.#inner.evict(offset, length);
  }

  close(): Promise<void> {
    return this.#inner.close();
  }
}
