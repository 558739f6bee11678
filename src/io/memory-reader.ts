import type { BlobReader } from './blob-reader.ts';
import { clampRead } from './blob-reader.ts';
import { FailedPreconditionError } from './errors.ts';

/**
 * A `BlobReader` over bytes in memory (tests, fuzzing, small metadata blobs).
 *
 * @example
 * ```ts
 * const r = new MemoryReader(new Uint8Array([1, 2, 3]));
 * const b = new Uint8Array(2);
 * await r.readAt(b, 1); // b = [2, 3]
 * ```
 */
export class MemoryReader implements BlobReader {
  #bytes: Uint8Array | undefined;
  readonly size: number;

  constructor(bytes: Uint8Array) {
    this.#bytes = bytes;
    this.size = bytes.length;
  }

  async readAt(buf: Uint8Array, offset: number): Promise<number> {
    const bytes = this.#bytes;
    if (bytes === undefined) throw new FailedPreconditionError('Cannot read: memory reader is closed');
    const n = clampRead(this.size, offset, buf.length);
    if (n > 0) buf.set(bytes.subarray(offset, offset + n));
    return n;
  }

  async close(): Promise<void> {
    this.#bytes = undefined;
  }
}
