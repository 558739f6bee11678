/**
 * The sequential output contract: what the LSMT commit writes into, what the ZFile
 * writer and the tar wrapper both consume and implement, so a commit can stream
 * `LSMT → ZFile → tar → file` in one pass (lsmt.md §13, zfile.md §6, tar-wrapper.md §2.4).
 *
 * `write` appends at `position`; `writeAt` rewrites bytes that were already written
 * (header rewrites) and never extends the output. `close` finishes the format (trailers)
 * and closes what lies below.
 */
export interface ByteSink {
  readonly position: number;
  write(buf: Uint8Array): Promise<void>;
  writeAt(buf: Uint8Array, offset: number): Promise<void>;
  close(): Promise<void>;
}

/** A sink collecting everything in memory (tests, small blobs). */
export class MemorySink implements ByteSink {
  #chunks: Uint8Array = new Uint8Array(4096);
  #length = 0;

  get position(): number {
    return this.#length;
  }

  async write(buf: Uint8Array): Promise<void> {
    if (this.#length + buf.length > this.#chunks.length) {
      let cap = this.#chunks.length * 2;
      while (cap < this.#length + buf.length) cap *= 2;
      const next = new Uint8Array(cap);
      next.set(this.#chunks.subarray(0, this.#length));
      this.#chunks = next;
    }
    this.#chunks.set(buf, this.#length);
    this.#length += buf.length;
  }

  async writeAt(buf: Uint8Array, offset: number): Promise<void> {
    if (offset < 0 || offset + buf.length > this.#length) {
      throw new RangeError(`writeAt [${offset}, +${buf.length}) outside the ${this.#length} bytes written`);
    }
    this.#chunks.set(buf, offset);
  }

  /** The bytes written so far (a copy). */
  bytes(): Uint8Array {
    return this.#chunks.slice(0, this.#length);
  }

  async close(): Promise<void> {}
}
