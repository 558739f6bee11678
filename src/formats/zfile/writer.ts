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

/** Uncompressed bytes handed to the encoder at once (whole blocks; at least one block). */
const BATCH_BYTES = 1 << 20;
/** Batches being encoded on the libuv pool while the next one fills. */
const IN_FLIGHT = 3;
/** Headroom of the encoder output over the block size: covers the LZ4 and zstd bounds + CRC. */
const ENCODE_SLACK = 1024;

/**
 * Idle batches by block size, taken by any writer (the next batch of this one, or the
 * next writer's): on the VMs this runs on, first-touch page faults cost ~4 ms per fresh
 * MiB, more than encoding it.
 */
const spareBatches = new Map<number, Batch[]>();
/** Idle batches kept per block size: one writer's worth. */
const SPARE_LIMIT = IN_FLIGHT + 1;

/** A run of blocks: filled here, then encoded on a pool thread. */
interface Batch {
  src: Uint8Array;
  fill: number;
  dst: Uint8Array;
  lengths: Uint32Array;
  /** Packed stored bytes (or -(i+1) for a failed block i) once encoded. */
  job: Promise<number> | undefined;
}

/**
 * Writes a ZFile into a sink. `position` counts uncompressed bytes. Blocks are
 * compressed in batches on the libuv thread pool ({@link IN_FLIGHT} at a time, in
 * order), so the calling thread only copies bytes in and stored blocks out. `writeAt`
 * can only rewrite bytes that are still in the batch being filled (the last
 * {@link BATCH_BYTES} at most); anything older is already handed to the encoder.
 * `close` writes the last block, the jump table, the trailer (and the rewritten header
 * when asked) and closes the sink. The sink must not keep references to buffers after
 * `write` resolves.
 */
export class ZFileWriter implements ByteSink {
  readonly #sink: ByteSink;
  readonly #blockSize: number;
  readonly #algo: number;
  readonly #verify: boolean;
  readonly #rewriteHeader: boolean;
  readonly #batchBytes: number;
  /** The batch being filled. */
  #batch: Batch;
  /** Batches being encoded, oldest first. */
  readonly #encoding: Batch[] = [];
  #lengths = new Uint32Array(1024);
  #count = 0;
  #stored = 0; // sum of stored block lengths written
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
    this.#batchBytes = Math.max(o.blockSize, BATCH_BYTES);
    this.#batch = this.#takeBatch();
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
      for (let p = 0; p < buf.length; ) {
        const batch = this.#batch;
        const n = Math.min(this.#batchBytes - batch.fill, buf.length - p);
        batch.src.set(buf.subarray(p, p + n), batch.fill);
        batch.fill += n;
        p += n;
        if (batch.fill === this.#batchBytes) await this.#submit(IN_FLIGHT);
      }
      this.#written += buf.length;
    } finally {
      this.#busy = false;
    }
  }

  /** Rewrites bytes of the batch being filled; anything older is already with the encoder. */
  async writeAt(buf: Uint8Array, offset: number): Promise<void> {
    if (this.#closed) throw new FailedPreconditionError('Cannot rewrite ZFile content: writer is closed');
    const batchStart = this.#written - this.#batch.fill;
    if (offset < batchStart || offset + buf.length > this.#written) {
      throw new FailedPreconditionError(
        `Cannot rewrite ZFile content [${offset}, +${buf.length}): only [${batchStart}, ${this.#written}) is not yet compressed`,
      );
    }
    this.#batch.src.set(buf, offset - batchStart);
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
      if (this.#batch.fill > 0) await this.#submit(1);
      while (this.#encoding.length > 0) await this.#drainOne();
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
      this.#giveBack(this.#batch);
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

  #takeBatch(): Batch {
    const spare = spareBatches.get(this.#blockSize)?.pop();
    if (spare !== undefined) return spare;
    const blocks = Math.ceil(this.#batchBytes / this.#blockSize);
    return { src: new Uint8Array(this.#batchBytes), fill: 0, dst: new Uint8Array(blocks * (this.#blockSize + ENCODE_SLACK)), lengths: new Uint32Array(blocks), job: undefined };
  }

  /** Returns an idle batch to the spares. */
  #giveBack(batch: Batch): void {
    batch.fill = 0;
    batch.job = undefined;
    let spare = spareBatches.get(this.#blockSize);
    if (spare === undefined) spareBatches.set(this.#blockSize, (spare = []));
    if (spare.length < SPARE_LIMIT) spare.push(batch);
  }

  /** Hands the filled batch to the encoder, then waits until fewer than `limit` are encoding. */
  async #submit(limit: number): Promise<void> {
    const batch = this.#batch;
    const job = native.encodeBlocks(batch.src.subarray(0, batch.fill), this.#blockSize, batch.dst, this.#blockSize + ENCODE_SLACK, batch.lengths, this.#algo, this.#verify ? 1 : 0);
    job.catch(() => {}); // awaited in order by #drainOne
    batch.job = job;
    this.#encoding.push(batch);
    this.#batch = this.#takeBatch();
    while (this.#encoding.length >= limit) await this.#drainOne();
  }

  /** Waits for the oldest encoding batch and writes its stored blocks to the sink. */
  async #drainOne(): Promise<void> {
    const batch = this.#encoding.shift() as Batch;
    const n = await (batch.job as Promise<number>);
    const blocks = Math.ceil(batch.fill / this.#blockSize);
    if (n <= 0) {
      throw new RangeError(`Cannot compress ZFile block ${this.#count + (n < 0 ? -n - 1 : 0)}: the encoder failed`);
    }
    if (this.#count + blocks > this.#lengths.length) {
      const next = new Uint32Array(Math.max(this.#lengths.length * 2, this.#count + blocks));
      next.set(this.#lengths);
      this.#lengths = next;
    }
    this.#lengths.set(batch.lengths.subarray(0, blocks), this.#count);
    this.#count += blocks;
    this.#stored += n;
    await this.#sink.write(batch.dst.subarray(0, n));
    this.#giveBack(batch);
  }
}
