/**
 * The 512-byte ZFile header/trailer record (zfile.md §2-§4, FORMAT.md beside this file).
 *
 * One module per on-disk structure: {@link decodeZFileHeader} / {@link encodeZFileHeader}
 * convert between bytes and a {@link ZFileHeader}; {@link validateZFileHeader} checks the
 * fields a reader relies on. Every offset lives in {@link ZFILE_HEADER_OFFSETS}.
 *
 * @example
 * ```ts
 * const rec = encodeZFileHeader({ ...emptyZFileHeader({ blockSize: 4096, algo: ZFILE_ALGO_LZ4, verify: true }) });
 * const h = decodeZFileHeader(rec); // h.flags === 0x13, digest verified by zfileDigest(rec)
 * ```
 */
import { crc32c } from '../../native/index.ts';
import { DataCorruptionError, UnsupportedError, toSafeNumber } from '../../io/errors.ts';

/** Size of one header or trailer record. */
export const ZFILE_HEADER_SIZE = 512;

/** Value of the `size` field: the length of the meaningful part of the record. */
export const ZFILE_RECORD_DATA_SIZE = 96;

/** `magic0`: "ZFile", 0x00, 0x01, 0x00. */
export const ZFILE_MAGIC0: Uint8Array = Uint8Array.of(0x5a, 0x46, 0x69, 0x6c, 0x65, 0x00, 0x01, 0x00);

/** `magic1`: ASCII "tuji.yyf@Alibaba". */
export const ZFILE_MAGIC1: Uint8Array = new TextEncoder().encode('tuji.yyf@Alibaba');

/** Byte offsets of the record fields (zfile.md §2). */
export const ZFILE_HEADER_OFFSETS = {
  magic0: 0,
  magic1: 8,
  size: 24,
  digest: 28,
  flags: 32,
  indexOffset: 40,
  indexSize: 48,
  originalFileSize: 56,
  indexCrc: 64,
  reserved0: 68,
  blockSize: 72,
  algo: 76,
  level: 77,
  useDict: 78,
  reserved: 80,
  dictSize: 84,
  verify: 88,
} as const;

/** Flag bit 0: this record is a header (clear: trailer). */
export const ZFILE_FLAG_HEADER = 0x01;
/** Flag bit 1: data file; always set by writers. */
export const ZFILE_FLAG_DATA = 0x02;
/** Flag bit 2: sealed (set in trailers). */
export const ZFILE_FLAG_SEALED = 0x04;
/** Flag bit 3: the header carries the final index fields; the trailer need not be read. */
export const ZFILE_FLAG_HEADER_OVERWRITE = 0x08;
/** Flag bit 4: `digest` and `index_crc` are meaningful and must be verified. */
export const ZFILE_FLAG_DIGEST = 0x10;
/** Flag bit 5: index compression; defined upstream but never written nor honoured. */
export const ZFILE_FLAG_INDEX_COMPRESSION = 0x20;
/** Every flag bit this implementation knows; the rest (old files: garbage) is ignored. */
export const ZFILE_KNOWN_FLAGS = 0x3f;

/** Flags of the initial header written at creation (header, data, digest). */
export const ZFILE_FLAGS_INITIAL_HEADER = 0x13;
/** Flags of the trailer (data, sealed, digest). */
export const ZFILE_FLAGS_TRAILER = 0x16;
/** Flags of a header rewritten at close (header, data, overwrite, digest). */
export const ZFILE_FLAGS_REWRITTEN_HEADER = 0x1b;

/** Algorithm id of LZ4 raw blocks. */
export const ZFILE_ALGO_LZ4 = 1;
/** Algorithm id of zstd frames. */
export const ZFILE_ALGO_ZSTD = 2;

/** Largest `index_size` (number of blocks) a reader accepts (zfile.md §7.1 step 4). */
export const ZFILE_MAX_INDEX_SIZE = 1_000_000_000;
/** Smallest block size this implementation accepts (our choice, FORMAT.md). */
export const ZFILE_MIN_BLOCK_SIZE = 512;
/** Largest block size upstream can read. */
export const ZFILE_MAX_BLOCK_SIZE = 65536;

/**
 * The decoded fields of a header or trailer record. Reserved bytes and bytes 96..511 are
 * not represented: readers ignore them and writers write zeros.
 */
export interface ZFileHeader {
  /** Offset 24, u32: length of the meaningful part, 96. */
  size: number;
  /** Offset 28, u32: raw CRC-32C (seed 0) of the record with this field zeroed; meaningful when flag bit 4. */
  digest: number;
  /** Offset 32, u64: flag bits, masked to {@link ZFILE_KNOWN_FLAGS}. */
  flags: number;
  /** Offset 40, u64: byte offset of the jump table. */
  indexOffset: number;
  /** Offset 48, u64: number of blocks (= number of u32 jump-table entries). */
  indexSize: number;
  /** Offset 56, u64: length of the uncompressed content. */
  originalFileSize: number;
  /** Offset 64, u32: raw CRC-32C (seed 0) of the jump-table bytes. */
  indexCrc: number;
  /** Offset 72, u32: uncompressed block size. */
  blockSize: number;
  /** Offset 76, u8: 1 = LZ4, 2 = zstd. */
  algo: number;
  /** Offset 77, u8: written 0, ignored. */
  level: number;
  /** Offset 78, u8: 1 if a dictionary was supplied (never). */
  useDict: number;
  /** Offset 84, u32: dictionary length; block 0 starts at 512 + dictSize. */
  dictSize: number;
  /** Offset 88, u8: every block carries a trailing CRC (non-zero byte = true). */
  verify: boolean;
}

/** A header with the compression options set and every other field zero (flags 0). */
export function emptyZFileHeader(options: { blockSize: number; algo: number; verify: boolean }): ZFileHeader {
  return {
    size: ZFILE_RECORD_DATA_SIZE,
    digest: 0,
    flags: 0,
    indexOffset: 0,
    indexSize: 0,
    originalFileSize: 0,
    indexCrc: 0,
    blockSize: options.blockSize,
    algo: options.algo,
    level: 0,
    useDict: 0,
    dictSize: 0,
    verify: options.verify,
  };
}

function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

function startsWith(b: Uint8Array, magic: Uint8Array, at: number): boolean {
  for (let i = 0; i < magic.length; i++) if (b[at + i] !== magic[i]) return false;
  return true;
}

/** Whether `bytes` begins with both ZFile magics (no other check). */
export function hasZFileMagic(bytes: Uint8Array): boolean {
  return (
    bytes.length >= ZFILE_HEADER_SIZE &&
    startsWith(bytes, ZFILE_MAGIC0, ZFILE_HEADER_OFFSETS.magic0) &&
    startsWith(bytes, ZFILE_MAGIC1, ZFILE_HEADER_OFFSETS.magic1)
  );
}

/**
 * The flags word of a record, masked to the known bits. Reads only the low 32 bits, so
 * it never fails on garbage (old files, zfile.md §11.3).
 */
export function readZFileFlags(bytes: Uint8Array): number {
  if (bytes.length < ZFILE_HEADER_SIZE) {
    throw new RangeError(`ZFile record needs ${ZFILE_HEADER_SIZE} bytes, got ${bytes.length}`);
  }
  return view(bytes).getUint32(ZFILE_HEADER_OFFSETS.flags, true) & ZFILE_KNOWN_FLAGS;
}

/** The record digest (§4.1): raw CRC-32C, seed 0, over the 512 bytes with bytes 28..31 as zero. */
export function zfileDigest(record: Uint8Array): number {
  if (record.length < ZFILE_HEADER_SIZE) {
    throw new RangeError(`ZFile record needs ${ZFILE_HEADER_SIZE} bytes, got ${record.length}`);
  }
  const d = ZFILE_HEADER_OFFSETS.digest;
  let crc = crc32c(record.subarray(0, d), 0);
  crc = crc32c(new Uint8Array(4), crc);
  return crc32c(record.subarray(d + 4, ZFILE_HEADER_SIZE), crc);
}

/**
 * Decodes a 512-byte record. Checks the magics only; everything else is
 * {@link validateZFileHeader}'s job. 64-bit fields must be safe integers.
 *
 * @param what names the record in error messages ("header", "trailer").
 */
export function decodeZFileHeader(bytes: Uint8Array, what = 'ZFile header'): ZFileHeader {
  if (bytes.length < ZFILE_HEADER_SIZE) {
    throw new DataCorruptionError(`Cannot decode ${what}: ${bytes.length} bytes, need ${ZFILE_HEADER_SIZE}`);
  }
  if (!hasZFileMagic(bytes)) throw new DataCorruptionError(`Cannot decode ${what}: bad magic`);
  const v = view(bytes);
  const o = ZFILE_HEADER_OFFSETS;
  return {
    size: v.getUint32(o.size, true),
    digest: v.getUint32(o.digest, true),
    flags: readZFileFlags(bytes),
    indexOffset: toSafeNumber(v.getBigUint64(o.indexOffset, true), `${what} index_offset`),
    indexSize: toSafeNumber(v.getBigUint64(o.indexSize, true), `${what} index_size`),
    originalFileSize: toSafeNumber(v.getBigUint64(o.originalFileSize, true), `${what} original_file_size`),
    indexCrc: v.getUint32(o.indexCrc, true),
    blockSize: v.getUint32(o.blockSize, true),
    algo: v.getUint8(o.algo),
    level: v.getUint8(o.level),
    useDict: v.getUint8(o.useDict),
    dictSize: v.getUint32(o.dictSize, true),
    verify: v.getUint8(o.verify) !== 0,
  };
}

function checkU32(value: number, what: string): void {
  if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) {
    throw new RangeError(`Cannot encode ZFile ${what}: ${value} is not a u32`);
  }
}

function checkU8(value: number, what: string): void {
  if (!Number.isInteger(value) || value < 0 || value > 0xff) {
    throw new RangeError(`Cannot encode ZFile ${what}: ${value} is not a u8`);
  }
}

function checkU53(value: number, what: string): void {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new RangeError(`Cannot encode ZFile ${what}: ${value} is not a safe non-negative integer`);
  }
}

/**
 * Encodes a record: magics, fields, zeros elsewhere. When flag bit 4 is set the digest
 * is computed (§4.1) and `h.digest` is ignored; otherwise `h.digest` is stored as is.
 */
export function encodeZFileHeader(h: ZFileHeader): Uint8Array {
  const o = ZFILE_HEADER_OFFSETS;
  checkU32(h.size, 'size');
  checkU32(h.digest, 'digest');
  checkU32(h.indexCrc, 'index_crc');
  checkU32(h.blockSize, 'block_size');
  checkU32(h.dictSize, 'dict_size');
  checkU8(h.algo, 'algo');
  checkU8(h.level, 'level');
  checkU8(h.useDict, 'use_dict');
  checkU53(h.indexOffset, 'index_offset');
  checkU53(h.indexSize, 'index_size');
  checkU53(h.originalFileSize, 'original_file_size');
  if ((h.flags & ~ZFILE_KNOWN_FLAGS) !== 0 || h.flags < 0) {
    throw new RangeError(`Cannot encode ZFile flags 0x${h.flags.toString(16)}: unknown bits`);
  }
  const b = new Uint8Array(ZFILE_HEADER_SIZE);
  const v = view(b);
  b.set(ZFILE_MAGIC0, o.magic0);
  b.set(ZFILE_MAGIC1, o.magic1);
  v.setUint32(o.size, h.size, true);
  v.setBigUint64(o.flags, BigInt(h.flags), true);
  v.setBigUint64(o.indexOffset, BigInt(h.indexOffset), true);
  v.setBigUint64(o.indexSize, BigInt(h.indexSize), true);
  v.setBigUint64(o.originalFileSize, BigInt(h.originalFileSize), true);
  v.setUint32(o.indexCrc, h.indexCrc, true);
  v.setUint32(o.blockSize, h.blockSize, true);
  v.setUint8(o.algo, h.algo);
  v.setUint8(o.level, h.level);
  v.setUint8(o.useDict, h.useDict);
  v.setUint32(o.dictSize, h.dictSize, true);
  v.setUint8(o.verify, h.verify ? 1 : 0);
  v.setUint32(o.digest, (h.flags & ZFILE_FLAG_DIGEST) !== 0 ? zfileDigest(b) : h.digest, true);
  return b;
}

/**
 * Checks the fields a reader depends on, for the record whose index fields are used:
 * algorithm, block size, index size and the count/size relation. Throws
 * `UnsupportedError` for valid-but-unsupported values (algo 0, index compression,
 * block sizes outside 512..65536) and `DataCorruptionError` for impossible ones.
 */
export function validateZFileHeader(h: ZFileHeader, what = 'ZFile'): void {
  if (h.algo !== ZFILE_ALGO_LZ4 && h.algo !== ZFILE_ALGO_ZSTD) {
    const name = h.algo === 0 ? 'mini-LZO' : 'unknown';
    throw new UnsupportedError(`Cannot open ${what}: compression algorithm ${h.algo} (${name}) is not supported`);
  }
  if ((h.flags & ZFILE_FLAG_INDEX_COMPRESSION) !== 0) {
    throw new UnsupportedError(`Cannot open ${what}: compressed jump tables (flag bit 5) are not supported`);
  }
  const bs = h.blockSize;
  if (bs === 0 || (bs & (bs - 1)) !== 0) {
    throw new DataCorruptionError(`Cannot open ${what}: block size ${bs} is not a power of two`);
  }
  if (bs < ZFILE_MIN_BLOCK_SIZE || bs > ZFILE_MAX_BLOCK_SIZE) {
    throw new UnsupportedError(
      `Cannot open ${what}: block size ${bs} is outside ${ZFILE_MIN_BLOCK_SIZE}..${ZFILE_MAX_BLOCK_SIZE}`,
    );
  }
  if (h.indexSize > ZFILE_MAX_INDEX_SIZE) {
    throw new DataCorruptionError(`Cannot open ${what}: index_size ${h.indexSize} exceeds ${ZFILE_MAX_INDEX_SIZE}`);
  }
  const blocks = Math.ceil(h.originalFileSize / bs);
  if (blocks !== h.indexSize) {
    throw new DataCorruptionError(
      `Cannot open ${what}: index_size ${h.indexSize} does not match ${blocks} blocks of ${bs} bytes for original_file_size ${h.originalFileSize}`,
    );
  }
}
