/**
 * Random-access decoder of a ZFile (zfile.md §7, FORMAT.md beside this file).
 *
 * `ZFileReader` is a {@link BlobReader} whose bytes are the uncompressed content; it
 * consumes another `BlobReader` holding the ZFile (a local file, a tar payload slice, a
 * registry blob). A read fetches the stored bytes of all blocks it needs with as few
 * underlying reads as possible (batches of up to 1 MiB of compressed bytes), then
 * verifies and decodes each batch with one native call.
 *
 * @example
 * ```ts
 * const file = await openFileReader('layer.zfile');
 * const z = await ZFileReader.open(file);
 * const head = new Uint8Array(4096);
 * await z.readAt(head, 0); // uncompressed bytes
 * await z.close();         // closes `file` too
 * ```
 */
import type { BlobReader } from '../../io/blob-reader.ts';
import { clampRead, isEvictable, isPrefetchable, readFully, type Prefetchable } from '../../io/blob-reader.ts';
import { DataCorruptionError, FailedPreconditionError } from '../../io/errors.ts';
import { DECODE_FAIL_BASE, crc32c, native } from '../../native/index.ts';
import type { ZFileHeader } from './header.ts';
import {
  ZFILE_FLAG_DATA,
  ZFILE_FLAG_DIGEST,
  ZFILE_FLAG_HEADER,
  ZFILE_FLAG_HEADER_OVERWRITE,
  ZFILE_FLAG_SEALED,
  ZFILE_HEADER_SIZE,
  decodeZFileHeader,
  hasZFileMagic,
  readZFileFlags,
  validateZFileHeader,
  zfileDigest,
} from './header.ts';

/** Compressed bytes fetched per underlying read (a single larger block still goes in one read). */
const BATCH_BYTES = 1 << 20;
/** Re-reads of a block whose CRC (or decoding) failed, before giving up (zfile.md §4.3). */
const MAX_RETRIES = 3;
/** Seed of the per-block CRC. */
const BLOCK_CRC_SEED = 100007;
/** Jump-table bytes read per underlying read at open. */
const INDEX_CHUNK = 1 << 20;

/** Options of {@link ZFileReader.open}. */
export interface ZFileOpenOptions {
  /** Name used in error messages (a path or digest); default "ZFile". */
  name?: string;
}

/** What `obd info` shows about an opened ZFile. */
export interface ZFileInfo {
  /** The record at offset 0, or null when its (unused) 64-bit fields hold unrepresentable garbage. */
  readonly header: ZFileHeader | null;
  /** The trailer record, or null when the header carries the final fields (flag bit 3) and the trailer was not read. */
  readonly trailer: ZFileHeader | null;
  /** Which record the index fields come from. */
  readonly source: 'header' | 'trailer';
  readonly algorithm: 'lz4' | 'zstd';
  readonly blockSize: number;
  readonly verify: boolean;
  readonly indexOffset: number;
  /** Number of blocks. */
  readonly indexSize: number;
  readonly originalFileSize: number;
  /** Size of the ZFile itself. */
  readonly compressedSize: number;
  /** Smallest and largest stored block length (0 when there are no blocks). */
  readonly minBlockLength: number;
  readonly maxBlockLength: number;
}

/** Largest plausible stored length of one block: the codec bound plus the CRC, with margin. */
function maxStoredLength(blockSize: number): number {
  return blockSize + (blockSize >>> 6) + 1024;
}

/**
 * A decoded view of a ZFile. `size` is `original_file_size`. Concurrent `readAt` calls
 * are allowed. `close` closes the underlying reader.
 */
export class ZFileReader implements BlobReader, Prefetchable {
  readonly #src: BlobReader;
  readonly #name: string;
  readonly #info: ZFileInfo;
  readonly #blockSize: number;
  readonly #algo: number;
  readonly #verify: number;
  /** start[i] = file offset of block i; start[n] = end of the last block. */
  readonly #start: Float64Array;
  readonly #lengths: Uint32Array;
  /** Scratch buffers for compressed bytes, reused across reads (a pool: reads may overlap). */
  readonly #pool: Uint8Array[] = [];
  /** Decode scratch; only used between two awaits, so one is enough. */
  #decoded: Uint8Array = new Uint8Array(0);
  #closed = false;
  readonly size: number;

  private constructor(src: BlobReader, init: { name: string; info: ZFileInfo; lengths: Uint32Array; start: Float64Array }) {
    this.#src = src;
    this.#name = init.name;
    this.#info = init.info;
    this.#blockSize = init.info.blockSize;
    this.#algo = init.info.algorithm === 'lz4' ? 1 : 2;
    this.#verify = init.info.verify ? 1 : 0;
    this.#lengths = init.lengths;
    this.#start = init.start;
    this.size = init.info.originalFileSize;
  }

  /**
   * Opens a ZFile per zfile.md §7.1. Throws `DataCorruptionError` when the bytes are not
   * a valid ZFile (after evicting an evictable source's copies and reading again, up to
   * 3 times) and `UnsupportedError` for unsupported options (algorithm, block size).
   * The source is not closed on failure.
   */
  static async open(reader: BlobReader, options: ZFileOpenOptions = {}): Promise<ZFileReader> {
    // Metadata that fails its checks may be a bad copy (a flipped bit on the wire, kept
    // by a cache): drop the cached copies and read again, as for a block (§4.3).
    for (let attempt = 0; ; attempt++) {
      try {
        return await ZFileReader.#open(reader, options);
      } catch (e) {
        if (!(e instanceof DataCorruptionError) || attempt >= MAX_RETRIES || !isEvictable(reader)) throw e;
        await reader.evict(0, reader.size);
      }
    }
  }

  static async #open(reader: BlobReader, options: ZFileOpenOptions): Promise<ZFileReader> {
    const name = options.name ?? 'ZFile';
    const fileSize = reader.size;
    if (fileSize < ZFILE_HEADER_SIZE) {
      throw new DataCorruptionError(`Cannot open ${name}: ${fileSize} bytes is shorter than a ZFile header`);
    }
    const headerBytes = new Uint8Array(ZFILE_HEADER_SIZE);
    await readFully(reader, headerBytes, 0, `${name} header`);
    if (!hasZFileMagic(headerBytes)) throw new DataCorruptionError(`Cannot open ${name}: not a ZFile (bad magic)`);
    const hflags = readZFileFlags(headerBytes);
    if ((hflags & ZFILE_FLAG_HEADER) === 0) {
      throw new DataCorruptionError(`Cannot open ${name}: not a ZFile (header flag clear in record at offset 0)`);
    }
    if ((hflags & ZFILE_FLAG_DIGEST) !== 0) checkDigest(headerBytes, `${name} header`);

    let header: ZFileHeader | null;
    let trailer: ZFileHeader | null = null;
    let used: ZFileHeader;
    let tableLimit: number;
    if ((hflags & ZFILE_FLAG_HEADER_OVERWRITE) !== 0) {
      header = decodeZFileHeader(headerBytes, `${name} header`);
      used = header;
      tableLimit = fileSize;
    } else {
      header = tryDecode(headerBytes, `${name} header`);
      if ((hflags & ZFILE_FLAG_DATA) === 0) {
        throw new DataCorruptionError(`Cannot open ${name}: header flags 0x${hflags.toString(16)} lack the data-file bit`);
      }
      if (fileSize < 2 * ZFILE_HEADER_SIZE) {
        throw new DataCorruptionError(`Cannot open ${name}: ${fileSize} bytes leaves no room for a trailer`);
      }
      const trailerOffset = fileSize - ZFILE_HEADER_SIZE;
      const trailerBytes = new Uint8Array(ZFILE_HEADER_SIZE);
      await readFully(reader, trailerBytes, trailerOffset, `${name} trailer`);
      if (!hasZFileMagic(trailerBytes)) {
        throw new DataCorruptionError(`Cannot open ${name}: trailer at offset ${trailerOffset} has a bad magic (truncated file?)`);
      }
      const tflags = readZFileFlags(trailerBytes);
      const need = ZFILE_FLAG_DATA | ZFILE_FLAG_SEALED;
      if ((tflags & ZFILE_FLAG_HEADER) !== 0 || (tflags & need) !== need) {
        throw new DataCorruptionError(
          `Cannot open ${name}: trailer flags 0x${tflags.toString(16)} are not those of a sealed data trailer`,
        );
      }
      // Upstream never checks the trailer digest; current writers always set it right.
      if ((tflags & ZFILE_FLAG_DIGEST) !== 0) checkDigest(trailerBytes, `${name} trailer`);
      trailer = decodeZFileHeader(trailerBytes, `${name} trailer`);
      used = trailer;
      tableLimit = trailerOffset;
    }
    validateZFileHeader(used, name);

    const n = used.indexSize;
    const dataStart = ZFILE_HEADER_SIZE + used.dictSize;
    if (used.indexOffset < dataStart || used.indexOffset + 4 * n > tableLimit) {
      throw new DataCorruptionError(
        `Cannot open ${name}: jump table [${used.indexOffset}, +${4 * n}) lies outside the data area [${dataStart}, ${tableLimit})`,
      );
    }
    const table = new Uint8Array(4 * n);
    for (let off = 0; off < table.length; off += INDEX_CHUNK) {
      const part = table.subarray(off, Math.min(table.length, off + INDEX_CHUNK));
      await readFully(reader, part, used.indexOffset + off, `${name} jump table`);
    }
    if ((used.flags & ZFILE_FLAG_DIGEST) !== 0) {
      const crc = crc32c(table, 0);
      if (crc !== used.indexCrc) {
        throw new DataCorruptionError(
          `Cannot open ${name}: jump table CRC 0x${hex(crc)} does not match index_crc 0x${hex(used.indexCrc)}`,
        );
      }
    }
    const lengths = new Uint32Array(n);
    const tv = new DataView(table.buffer, table.byteOffset, table.byteLength);
    const start = new Float64Array(n + 1);
    const minLen = used.verify ? 5 : 1;
    const maxLen = maxStoredLength(used.blockSize);
    let pos = dataStart;
    let lo = n > 0 ? 0xffffffff : 0;
    let hi = 0;
    for (let i = 0; i < n; i++) {
      const len = tv.getUint32(4 * i, true);
      if (len < minLen || len > maxLen) {
        throw new DataCorruptionError(
          `Cannot open ${name}: jump-table entry ${i} has length ${len}, outside ${minLen}..${maxLen}`,
        );
      }
      lengths[i] = len;
      start[i] = pos;
      pos += len;
      if (len < lo) lo = len;
      if (len > hi) hi = len;
    }
    start[n] = pos;
    if (pos > used.indexOffset) {
      throw new DataCorruptionError(
        `Cannot open ${name}: blocks end at offset ${pos}, past the jump table at ${used.indexOffset}`,
      );
    }
    const info: ZFileInfo = {
      header,
      trailer,
      source: trailer === null ? 'header' : 'trailer',
      algorithm: used.algo === 1 ? 'lz4' : 'zstd',
      blockSize: used.blockSize,
      verify: used.verify,
      indexOffset: used.indexOffset,
      indexSize: n,
      originalFileSize: used.originalFileSize,
      compressedSize: fileSize,
      minBlockLength: lo,
      maxBlockLength: hi,
    };
    return new ZFileReader(reader, { name, info, lengths, start });
  }

  /** Header/trailer fields and block statistics. */
  get info(): ZFileInfo {
    return this.#info;
  }

  /** Number of blocks. */
  get blockCount(): number {
    return this.#lengths.length;
  }

  /** File offset and stored length (CRC included) of block `i`. */
  blockExtent(i: number): { offset: number; length: number } {
    if (!Number.isInteger(i) || i < 0 || i >= this.#lengths.length) {
      throw new RangeError(`Block ${i} is outside 0..${this.#lengths.length - 1}`);
    }
    return { offset: this.#start[i]!, length: this.#lengths[i]! };
  }

  async readAt(buf: Uint8Array, offset: number): Promise<number> {
    if (this.#closed) throw new FailedPreconditionError(`Cannot read ${this.#name}: reader is closed`);
    if (!Number.isSafeInteger(offset) || offset < 0) throw new RangeError(`Read offset ${offset} is invalid`);
    const count = clampRead(this.size, offset, buf.length);
    if (count === 0) return 0;
    const bs = this.#blockSize;
    const end = offset + count;
    const last = Math.floor((end - 1) / bs);
    let b = Math.floor(offset / bs);
    let out = 0; // bytes of buf filled
    while (b <= last) {
      // Grow the batch while its stored bytes fit BATCH_BYTES (always at least one block).
      let e = b + 1;
      while (e <= last && this.#start[e + 1]! - this.#start[b]! <= BATCH_BYTES) e++;
      const firstSkip = b === Math.floor(offset / bs) ? offset - b * bs : 0;
      const batchEnd = Math.min(e * bs, end); // logical end of what we need from this batch
      const want = batchEnd - (b * bs + firstSkip);
      const at = out;
      // Decode straight into the caller's buffer when it is aligned and has room; else
      // into the shared scratch, copied out in the same synchronous step.
      const direct = firstSkip === 0 && buf.length - at >= (e - b) * bs;
      await this.#decodeRange(b, e, (decode) => {
        if (direct) {
          decode(buf.subarray(at, at + (e - b) * bs));
        } else {
          const tmp = this.#scratch((e - b) * bs);
          decode(tmp);
          buf.set(tmp.subarray(firstSkip, firstSkip + want), at);
        }
      });
      out += want;
      b = e;
    }
    return count;
  }

  /**
   * Reads the stored blocks covering `[offset, offset+length)` from the source, without
   * checking or decoding them: the source's caches keep them for later reads, which
   * check and decode as usual (trace replay, `Prefetchable`).
   */
  async prefetch(offset: number, length: number): Promise<void> {
    if (this.#closed) throw new FailedPreconditionError(`Cannot read ${this.#name}: reader is closed`);
    const count = clampRead(this.size, offset, length);
    if (count === 0) return;
    const last = Math.floor((offset + count - 1) / this.#blockSize);
    let b = Math.floor(offset / this.#blockSize);
    if (isPrefetchable(this.#src)) {
      // The stored blocks go into the source's caches without a copy out.
      await this.#src.prefetch(this.#start[b]!, this.#start[last + 1]! - this.#start[b]!);
      return;
    }
    while (b <= last) {
      let e = b + 1;
      while (e <= last && this.#start[e + 1]! - this.#start[b]! <= BATCH_BYTES) e++;
      const from = this.#start[b]!;
      const stored = this.#take(this.#start[e]! - from);
      try {
        await readFully(this.#src, stored, from, `${this.#name} blocks ${b}..${e - 1}`);
      } finally {
        this.#give(stored);
      }
      b = e;
    }
  }

  /**
   * Validation mode (zfile.md §7.3): reads every block and checks its CRC without
   * decompressing. Resolves with the number of blocks checked; throws a
   * `DataCorruptionError` naming the first bad block (after retries), or a
   * `FailedPreconditionError` when the file has no block CRCs.
   */
  async verifyAll(): Promise<number> {
    if (this.#closed) throw new FailedPreconditionError(`Cannot verify ${this.#name}: reader is closed`);
    if (this.#verify === 0) {
      throw new FailedPreconditionError(`Cannot verify ${this.#name}: the file has no block CRCs (verify = 0)`);
    }
    const n = this.#lengths.length;
    let b = 0;
    while (b < n) {
      let e = b + 1;
      while (e < n && this.#start[e + 1]! - this.#start[b]! <= BATCH_BYTES) e++;
      await this.#withStored(b, e, (stored) => {
        let pos = 0;
        for (let i = b; i < e; i++) {
          const len = this.#lengths[i]!;
          const block = stored.subarray(pos, pos + len);
          const want = new DataView(block.buffer, block.byteOffset + len - 4, 4).getUint32(0, true);
          if (crc32c(block.subarray(0, len - 4), BLOCK_CRC_SEED) !== want) return { failed: i, crc: true };
          pos += len;
        }
        return null;
      });
      b = e;
    }
    return n;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#src.close();
  }

  #scratch(bytes: number): Uint8Array {
    if (this.#decoded.length < bytes) this.#decoded = new Uint8Array(Math.max(bytes, BATCH_BYTES));
    return this.#decoded.subarray(0, bytes);
  }

  /**
   * Verifies and decodes blocks [b, e). `use` is called synchronously once the stored
   * bytes are in; it calls `decode(dst)` (dst holds (e-b)*blockSize bytes) and consumes
   * dst before returning, so shared scratch memory is never observed by another read.
   */
  async #decodeRange(b: number, e: number, use: (decode: (dst: Uint8Array) => void) => void): Promise<void> {
    const bs = this.#blockSize;
    await this.#withStored(b, e, (stored) => {
      const lens = this.#lengths.subarray(b, e);
      let r = 0;
      use((dst) => {
        r = native.decodeBlocks(stored, lens, e - b, dst, bs, this.#algo, this.#verify);
      });
      if (r < 0) {
        const crc = r > -DECODE_FAIL_BASE;
        return { failed: b + (crc ? -r : -r - DECODE_FAIL_BASE) - 1, crc };
      }
      const expected = Math.min(e * bs, this.size) - b * bs;
      if (r !== expected) {
        throw new DataCorruptionError(
          `Cannot read ${this.#name} blocks ${b}..${e - 1} at offset ${this.#start[b]}: decoded ${r} bytes, expected ${expected}`,
        );
      }
      return null;
    });
  }

  /**
   * Fetches the stored bytes of blocks [b, e) in one underlying read and hands them to
   * `check`, which reports the first failed block. A failed block's range is evicted
   * from the source (when it can) and the batch is read again, up to MAX_RETRIES times.
   */
  async #withStored(
    b: number,
    e: number,
    check: (stored: Uint8Array) => { failed: number; crc: boolean } | null,
  ): Promise<void> {
    const from = this.#start[b]!;
    const length = this.#start[e]! - from;
    const stored = this.#take(length);
    try {
      for (let attempt = 0; ; attempt++) {
        await readFully(this.#src, stored, from, `${this.#name} blocks ${b}..${e - 1}`);
        const bad = check(stored);
        if (bad === null) return;
        const at = this.#start[bad.failed]!;
        const what = bad.crc ? 'CRC mismatch' : 'decompression failed';
        if (attempt >= MAX_RETRIES) {
          throw new DataCorruptionError(
            `Cannot read ${this.#name} block ${bad.failed} at offset ${at}: ${what} after ${MAX_RETRIES} retries`,
          );
        }
        if (isEvictable(this.#src)) await this.#src.evict(at, this.#lengths[bad.failed]!);
      }
    } finally {
      this.#give(stored);
    }
  }

  #take(length: number): Uint8Array {
    for (let i = 0; i < this.#pool.length; i++) {
      const buf = this.#pool[i]!;
      if (buf.length >= length) {
        this.#pool.splice(i, 1);
        return buf.subarray(0, length);
      }
    }
    return new Uint8Array(Math.max(length, BATCH_BYTES)).subarray(0, length);
  }

  #give(buf: Uint8Array): void {
    if (this.#pool.length < 4) this.#pool.push(new Uint8Array(buf.buffer, buf.byteOffset, buf.buffer.byteLength));
  }
}

function hex(v: number): string {
  return v.toString(16).padStart(8, '0');
}

function checkDigest(record: Uint8Array, what: string): void {
  const stored = new DataView(record.buffer, record.byteOffset, record.byteLength).getUint32(28, true);
  const actual = zfileDigest(record);
  if (stored !== actual) {
    throw new DataCorruptionError(`Cannot open ${what}: digest 0x${hex(actual)} does not match stored 0x${hex(stored)}`);
  }
}

function tryDecode(bytes: Uint8Array, what: string): ZFileHeader | null {
  try {
    return decodeZFileHeader(bytes, what);
  } catch (e) {
    if (e instanceof DataCorruptionError) return null;
    throw e;
  }
}

/**
 * Whether `reader` holds a ZFile (zfile.md §8): magics and header bit at offset 0.
 * A blob shorter than 512 bytes is "not a ZFile" (upstream reports an error; for
 * open-by-magic a short blob simply is a plain file). Throws `DataCorruptionError` when
 * the header claims a digest (bit 4) that does not match.
 */
export async function isZFile(reader: BlobReader): Promise<boolean> {
  if (reader.size < ZFILE_HEADER_SIZE) return false;
  const head = new Uint8Array(ZFILE_HEADER_SIZE);
  await readFully(reader, head, 0, 'ZFile header');
  if (!hasZFileMagic(head)) return false;
  const flags = readZFileFlags(head);
  if ((flags & ZFILE_FLAG_HEADER) === 0) return false;
  if ((flags & ZFILE_FLAG_DIGEST) !== 0) checkDigest(head, 'ZFile header');
  return true;
}
