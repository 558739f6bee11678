/**
 * Streaming ZFile encoder (zfile.md §6), byte-identical to upstream `overlaybd-zfile` /
 * `overlaybd-commit -z` given the same encoder libraries (the native binding links the
 * same liblz4 / libzstd calls).
 *
 * `ZFileWriter` is itself a {@link ByteSink}: whatever is written to it is the
 * uncompressed content, so an LSMT commit can stream `LSMT → ZFile → tar → file`.
 *
 * @example
 * ```ts
 * const sink = await FileSink.create('layer.zfile');
 * const z = await ZFileWriter.create(sink, { algorithm: 'lz4', blockSize: 4096 });
 * await z.write(content);
 * await z.close(); // jump table, trailer, closes `sink`
 * ```
 */
import type { ByteSink } from '../../io/byte-sink.ts';
import { FailedPreconditionError, InvalidArgumentError } from '../../io/errors.ts';
import { crc32c, native } from '../../native/index.ts';
import type { ZFileHeader } from './header.ts';
import {
  ZFILE_ALGO_LZ4,
  ZFILE_ALGO_ZSTD,
  ZFILE_FLAGS_INITIAL_HEADER,
  ZFILE_FLAGS_REWRITTEN_HEADER,
  ZFILE_FLAGS_TRAILER,
  ZFILE_HEADER_SIZE,
  ZFILE_MAX_BLOCK_SIZE,
  ZFILE_MIN_BLOCK_SIZE,
  emptyZFileHeader,
  encodeZFileHeader,
} from './header.ts';

/** Options of {@link ZFileWriter.create}. */
export interface ZFileWriterOptions {
  /** Block codec; default 'lz4'. */
  algorithm?: 'lz4' | 'zstd';
  /** Uncompressed block size, a power of two in 512..65536; default 4096. Upstream tools use 4..64 KiB. */
  blockSize?: number;
  /** Append a CRC to every block; default true (every upstream tool does). */
  verify?: boolean;
  /** Rewrite the header with the final fields at close (flags 0x1B), as `overlaybd-commit -z`; default false. */
  rewriteHeader?: boolean;
}

/** Stored bytes gathered before one write to the sink. */
const FLUSH_BYTES = 1 << 20;
/** Headroom of the encoder output over the block size: covers the LZ4 and zstd bounds + CRC. */
const ENCODE_SLACK = 1024;

/**
 * Writes a ZFile into a sink. `position` counts uncompressed bytes. `writeAt` can only
 * rewrite bytes that are still in the current, not yet compressed block. `close` writes
 * the last block, the jump table, the trailer (and the rewritten header when asked) and
 * closes the sink. The sink must not keep references to buffers after `write` resolves.
 */
export class ZFileWriter implements ByteSink {
  readonly #sink: ByteSink;
  readonly #blockSize: number;
  readonly #algo: number;
  readonly #verify: boolean;
  readonly #rewriteHeader: boolean;
  /** The current partial block. */
  readonly #block: Uint8Array;
  #blockFill = 0;
  /** Encoded blocks waiting to be written to the sink. */
  readonly #out: Uint8Array;
  #outFill = 0;
  #lengths = new Uint32Array(1024);
  #count = 0;
  #stored = 0; // sum of stored block lengths written or pending
  #written = 0; // uncompressed bytes accepted
  #closed = false;
  #busy = false;
  #trailer: ZFileHeader | null = null;
  private constructor(sink: ByteSink, o: { blockSize: number; algo: number; verify: boolean; rewriteHeader: boolean }) {
    this.#sink = sink;
    this.#blockSize = o.blockSize;
    this.#algo = o.algo;
    this.#verify = o.verify;
    this.#rewriteHeader = o.rewriteHeader;
    this.#block = new Uint8Array(o.blockSize);
    this.#out = new Uint8Array(FLUSH_BYTES + o.blockSize + ENCODE_SLACK);
  }

  /**
   * Starts a ZFile: validates the options and writes the initial header (flags 0x13) to
   * `sink`, which must be empty (position 0).
   */
  static async create(sink: ByteSink, options: ZFileWriterOptions = {}): Promise<ZFileWriter> {
    const algorithm = options.algorithm ?? 'lz4';
    if (algorithm !== 'lz4' && algorithm !== 'zstd') {
      throw new InvalidArgumentError(`Cannot create ZFile: unknown algorithm ${String(algorithm)}`);
    }
    const blockSize = options.blockSize ?? 4096;
    if (
      !Number.isInteger(blockSize) ||
      blockSize < ZFILE_MIN_BLOCK_SIZE ||
      blockSize > ZFILE_MAX_BLOCK_SIZE ||
      (blockSize & (blockSize - 1)) !== 0
    ) {
      throw new InvalidArgumentError(
        `Cannot create ZFile: block size ${blockSize} is not a power of two in ${ZFILE_MIN_BLOCK_SIZE}..${ZFILE_MAX_BLOCK_SIZE}`,
      );
    }
    if (sink.position !== 0) {
      throw new InvalidArgumentError(`Cannot create ZFile: the sink is at position ${sink.position}, not 0`);
    }
    const w = new ZFileWriter(sink, {
      blockSize,
      algo: algorithm === 'lz4' ? ZFILE_ALGO_LZ4 : ZFILE_ALGO_ZSTD,
      verify: options.verify ?? true,
      rewriteHeader: options.rewriteHeader ?? false,
    });
    await sink.write(encodeZFileHeader({ ...w.#baseHeader(), flags: ZFILE_FLAGS_INITIAL_HEADER }));
    return w;
  }

  /** Uncompressed bytes written so far. */
  get position(): number {
    return this.#written;
  }

  /** The trailer record written by `close` (null before). */
  get trailer(): ZFileHeader | null {
    return this.#trailer;
  }

  async write(buf: Uint8Array): Promise<void> {
    this.#enter('write');
    try {
      const bs = this.#blockSize;
      let p = 0;
      if (this.#blockFill > 0) {
        const n = Math.min(bs - this.#blockFill, buf.length);
        this.#block.set(buf.subarray(0, n), this.#blockFill);
        this.#blockFill += n;
        p = n;
        if (this.#blockFill === bs) {
          if (this.#encode(this.#block)) await this.#flush();
          this.#blockFill = 0;
        }
      }
      // Whole blocks straight from the caller's buffer (no promise per block: a 4 KiB
      // block encodes in microseconds, an await per block cost as much again).
      while (buf.length - p >= bs) {
        if (this.#encode(buf.subarray(p, p + bs))) await this.#flush();
        p += bs;
      }
      if (p < buf.length) {
        this.#block.set(buf.subarray(p), 0);
        this.#blockFill = buf.length - p;
      }
      this.#written += buf.length;
    } finally {
      this.#busy = false;
    }
  }

  /** Rewrites bytes of the current, not yet compressed block; anything older is already encoded. */
  async writeAt(buf: Uint8Array, offset: number): Promise<void> {
    const blockStart = this.#written - this.#blockFill;
    if (offset < blockStart || offset + buf.length > this.#written) {
      throw new FailedPreconditionError(
        `Cannot rewrite ZFile content [${offset}, +${buf.length}): only [${blockStart}, ${this.#written}) is not yet compressed`,
      );
    }
    this.#block.set(buf, offset - blockStart);
  }

  /**
   * Writes the last block, the jump table and the trailer (and header rewrite), then
   * closes the sink. A second call does nothing.
   */
  async close(): Promise<void> {
    if (this.#closed && !this.#busy) return;
    this.#enter('close');
    this.#closed = true;
    try {
      if (this.#blockFill > 0) this.#encode(this.#block.subarray(0, this.#blockFill));
      await this.#flush();
      const n = this.#count;
      const table = new Uint8Array(4 * n);
      const tv = new DataView(table.buffer);
      for (let i = 0; i < n; i++) tv.setUint32(4 * i, this.#lengths[i]!, true);
      const indexOffset = ZFILE_HEADER_SIZE + this.#stored;
      if (n > 0) await this.#sink.write(table);
      const trailer: ZFileHeader = {
        ...this.#baseHeader(),
        flags: ZFILE_FLAGS_TRAILER,
        indexOffset,
        indexSize: n,
        originalFileSize: this.#written,
        indexCrc: crc32c(table, 0),
      };
      const bytes = encodeZFileHeader(trailer);
      trailer.digest = new DataView(bytes.buffer).getUint32(28, true);
      await this.#sink.write(bytes);
      if (this.#rewriteHeader) {
        await this.#sink.writeAt(encodeZFileHeader({ ...trailer, flags: ZFILE_FLAGS_REWRITTEN_HEADER }), 0);
      }
      this.#trailer = trailer;
    } finally {
      this.#busy = false;
    }
    await this.#sink.close();
  }

  #enter(what: string): void {
    if (this.#closed) throw new FailedPreconditionError(`Cannot ${what} ZFile: writer is closed`);
    if (this.#busy) throw new FailedPreconditionError(`Cannot ${what} ZFile: a previous write is still running`);
    this.#busy = true;
  }

  #baseHeader(): ZFileHeader {
    return emptyZFileHeader({ blockSize: this.#blockSize, algo: this.#algo, verify: this.#verify });
  }

  /** Encodes one block into the output buffer; true when the buffer should be flushed. */
  #encode(block: Uint8Array): boolean {
    const room = this.#blockSize + ENCODE_SLACK;
    const dst = this.#out.subarray(this.#outFill, this.#outFill + room);
    const n = native.encodeBlock(block, dst, this.#algo, this.#verify ? 1 : 0);
    if (n <= 0) {
      throw new RangeError(`Cannot compress ZFile block ${this.#count}: encoder returned ${n}`);
    }
    if (this.#count === this.#lengths.length) {
      const next = new Uint32Array(this.#lengths.length * 2);
      next.set(this.#lengths);
      this.#lengths = next;
    }
    this.#lengths[this.#count++] = n;
    this.#outFill += n;
    this.#stored += n;
    return this.#outFill >= FLUSH_BYTES;
  }

  async #flush(): Promise<void> {
    if (this.#outFill === 0) return;
    await this.#sink.write(this.#out.subarray(0, this.#outFill));
    this.#outFill = 0;
  }
}
