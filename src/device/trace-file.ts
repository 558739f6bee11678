/**
 * The binary trace file of trace-based prefetch (runtime.md §8.2): a 24-byte header and
 * 24-byte records of reads of the lower layers, as upstream's `overlaybd` records and
 * replays them.
 *
 * Header (little-endian):
 *
 * | Offset | Size | Field |
 * |---:|---:|---|
 * | 0 | 4 | magic `0xC2EF1820` (zlib CRC-32 of "Container Image Trace Format") |
 * | 4 | 4 | padding |
 * | 8 | 8 | `data_size` = 24 × record count |
 * | 16 | 4 | checksum: raw CRC-32C (zfile.md §4.0), seed 0, chained over the record bytes as stored |
 * | 20 | 4 | padding |
 *
 * Record:
 *
 * | Offset | Size | Field |
 * |---:|---:|---|
 * | 0 | 1 | op: `R` (0x52) or `W` (0x57) |
 * | 1 | 3 | padding |
 * | 4 | 4 | `layer_index`: position in `lowers`, 0 = bottom |
 * | 8 | 8 | `count` in bytes |
 * | 16 | 8 | `offset` in bytes (i64) in the decoded layer file |
 *
 * @example
 * ```ts
 * const bytes = encodeTrace([{ op: 'R', layerIndex: 0, count: 4096, offset: 0 }]);
 * decodeTrace(bytes); // [{ op: 'R', layerIndex: 0, count: 4096, offset: 0 }]
 * ```
 */
import { crc32c } from '../native/index.ts';
import { DataCorruptionError } from '../io/errors.ts';

/** Magic of a trace file (u32 at offset 0). */
export const TRACE_MAGIC = 0xc2ef1820;
/** Size of the header in bytes. */
export const TRACE_HEADER_SIZE = 24;
/** Size of one record in bytes. */
export const TRACE_RECORD_SIZE = 24;

const OFF = {
  magic: 0,
  dataSize: 8,
  checksum: 16,
  rec: { op: 0, layerIndex: 4, count: 8, offset: 16 },
} as const;

const OP_READ = 0x52;
const OP_WRITE = 0x57;

/** One traced I/O: `count` bytes at `offset` of the decoded layer file `layerIndex`. */
export interface TraceRecord {
  op: 'R' | 'W';
  layerIndex: number;
  count: number;
  offset: number;
}

/** Whether `bytes` starts with the trace magic (replay rather than a dynamic file list, runtime.md §8.1). */
export function hasTraceMagic(bytes: Uint8Array): boolean {
  if (bytes.byteLength < 4) return false;
  return new DataView(bytes.buffer, bytes.byteOffset, 4).getUint32(0, true) === TRACE_MAGIC;
}

/** Encodes `records` into a complete trace file (padding zero, checksum set). */
export function encodeTrace(records: readonly TraceRecord[]): Uint8Array {
  const out = new Uint8Array(TRACE_HEADER_SIZE + records.length * TRACE_RECORD_SIZE);
  const dv = new DataView(out.buffer);
  records.forEach((r, i) => {
    const at = TRACE_HEADER_SIZE + i * TRACE_RECORD_SIZE;
    if (!Number.isSafeInteger(r.count) || r.count < 0) throw new RangeError(`Cannot encode trace record ${i}: count ${r.count} is not a non-negative integer`);
    if (!Number.isSafeInteger(r.offset)) throw new RangeError(`Cannot encode trace record ${i}: offset ${r.offset} is not an integer`);
    if (!Number.isInteger(r.layerIndex) || r.layerIndex < 0 || r.layerIndex > 0xffffffff) {
      throw new RangeError(`Cannot encode trace record ${i}: layer index ${r.layerIndex} is not a u32`);
    }
    dv.setUint8(at + OFF.rec.op, r.op === 'R' ? OP_READ : OP_WRITE);
    dv.setUint32(at + OFF.rec.layerIndex, r.layerIndex, true);
    dv.setBigUint64(at + OFF.rec.count, BigInt(r.count), true);
    dv.setBigInt64(at + OFF.rec.offset, BigInt(r.offset), true);
  });
  dv.setUint32(OFF.magic, TRACE_MAGIC, true);
  dv.setBigUint64(OFF.dataSize, BigInt(records.length * TRACE_RECORD_SIZE), true);
  dv.setUint32(OFF.checksum, crc32c(out.subarray(TRACE_HEADER_SIZE), 0), true);
  return out;
}

function safe(v: bigint, what: string): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < -BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new DataCorruptionError(`Cannot read trace file: ${what} ${v} is out of range`);
  }
  return Number(v);
}

/**
 * Decodes and validates a trace file: size = 24 + `data_size`, `data_size` a multiple of
 * 24, the magic, the checksum (over the record bytes as read), and each record's op.
 *
 * @param options.name names the file in error messages.
 * @throws DataCorruptionError naming what does not match.
 */
export function decodeTrace(bytes: Uint8Array, options: { name?: string } = {}): TraceRecord[] {
  const what = options.name === undefined ? 'trace file' : `trace file ${options.name}`;
  if (bytes.byteLength < TRACE_HEADER_SIZE) {
    throw new DataCorruptionError(`Cannot read ${what}: ${bytes.byteLength} bytes, shorter than the ${TRACE_HEADER_SIZE}-byte header`);
  }
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const magic = dv.getUint32(OFF.magic, true);
  if (magic !== TRACE_MAGIC) {
    throw new DataCorruptionError(`Cannot read ${what}: magic 0x${magic.toString(16).padStart(8, '0')}, expected 0x${TRACE_MAGIC.toString(16)}`);
  }
  const dataSize = dv.getBigUint64(OFF.dataSize, true);
  if (dataSize !== BigInt(bytes.byteLength - TRACE_HEADER_SIZE)) {
    throw new DataCorruptionError(`Cannot read ${what}: data_size ${dataSize} but ${bytes.byteLength - TRACE_HEADER_SIZE} bytes follow the header`);
  }
  if (dataSize % BigInt(TRACE_RECORD_SIZE) !== 0n) {
    throw new DataCorruptionError(`Cannot read ${what}: data_size ${dataSize} is not a multiple of ${TRACE_RECORD_SIZE}`);
  }
  const stored = dv.getUint32(OFF.checksum, true);
  const actual = crc32c(bytes.subarray(TRACE_HEADER_SIZE), 0);
  if (stored !== actual) {
    throw new DataCorruptionError(`Cannot read ${what}: checksum 0x${stored.toString(16)} but the records sum to 0x${actual.toString(16)}`);
  }
  const n = Number(dataSize) / TRACE_RECORD_SIZE;
  const records: TraceRecord[] = [];
  for (let i = 0; i < n; i++) {
    const at = TRACE_HEADER_SIZE + i * TRACE_RECORD_SIZE;
    const op = dv.getUint8(at + OFF.rec.op);
    if (op !== OP_READ && op !== OP_WRITE) {
      throw new DataCorruptionError(`Cannot read ${what}: record ${i} has op 0x${op.toString(16)}, expected R (0x52) or W (0x57)`);
    }
    records.push({
      op: op === OP_READ ? 'R' : 'W',
      layerIndex: dv.getUint32(at + OFF.rec.layerIndex, true),
      count: safe(dv.getBigUint64(at + OFF.rec.count, true), `record ${i} count`),
      offset: safe(dv.getBigInt64(at + OFF.rec.offset, true), `record ${i} offset`),
    });
  }
  return records;
}
