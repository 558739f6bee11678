/**
 * The per-blob presence journal of the block cache (`<cacheDir>/<digest>.units`), see
 * FORMAT.md in this folder: a 32-byte header followed by 16-byte records, each saying
 * "units `first .. first+count-1` are now present" or "… are now absent". Replaying the
 * records in order yields the set of refill units whose bytes the cache file holds.
 *
 * The journal is append-only between compactions; a torn or corrupt record ends the
 * replay (everything from it on is ignored and truncated by the owner). That is safe
 * because a record is only appended after the state it describes is durable (see
 * `cached-blob.ts`): losing a tail can only forget present units, never invent them.
 *
 * All integers are little-endian. Checksums are standard CRC-32C (init and final XOR
 * 0xFFFFFFFF), so an all-zero record or header never validates.
 */
import { DataCorruptionError } from '../io/errors.ts';
import { crc32c } from '../native/index.ts';
import { UnitBitmap } from './unit-bitmap.ts';

/** "OBDUNITS". */
export const JOURNAL_MAGIC = Uint8Array.from([0x4f, 0x42, 0x44, 0x55, 0x4e, 0x49, 0x54, 0x53]);
export const JOURNAL_VERSION = 1;
export const JOURNAL_HEADER_SIZE = 32;
export const JOURNAL_RECORD_SIZE = 16;

/** Byte offsets of the header fields. */
export const HEADER_FIELDS = {
  magic: 0, // 8 bytes
  version: 8, // u32
  unitSize: 12, // u32, power of two, 4096 .. 2^30
  blobSize: 16, // u64, must be a safe integer
  reserved: 24, // u32, 0
  crc: 28, // u32, CRC-32C of bytes 0..27
} as const;

/** Byte offsets of the record fields. */
export const RECORD_FIELDS = {
  op: 0, // u8: OP_PRESENT or OP_ABSENT
  reserved: 1, // 3 bytes, 0
  first: 4, // u32, first unit
  count: 8, // u32, number of units, ≥ 1
  crc: 12, // u32, CRC-32C of bytes 0..11
} as const;

export const OP_PRESENT = 1;
export const OP_ABSENT = 2;

/** Smallest and largest refill unit. */
export const MIN_UNIT_SIZE = 4096;
export const MAX_UNIT_SIZE = 1 << 30;
/** Unit numbers are u32. */
export const MAX_UNITS = 0xffff_ffff;

export interface JournalHeader {
  unitSize: number;
  blobSize: number;
}

export interface JournalRecord {
  op: typeof OP_PRESENT | typeof OP_ABSENT;
  first: number;
  count: number;
}

/** Result of {@link replayJournal}. */
export interface JournalReplay {
  header: JournalHeader;
  present: UnitBitmap;
  /** Bytes of the journal that are valid (header + whole valid records). */
  validLength: number;
  /** Number of valid records. */
  records: number;
}

function standardCrc(bytes: Uint8Array): number {
  return (crc32c(bytes, 0xffff_ffff) ^ 0xffff_ffff) >>> 0;
}

function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

/** Number of refill units of a blob. */
export function unitCount(h: JournalHeader): number {
  return Math.ceil(h.blobSize / h.unitSize);
}

/** Throws a `RangeError` when `h` cannot be encoded (bad unit size, too many units). */
export function validateJournalHeader(h: JournalHeader): void {
  const { unitSize, blobSize } = h;
  if (!Number.isSafeInteger(unitSize) || unitSize < MIN_UNIT_SIZE || unitSize > MAX_UNIT_SIZE || (unitSize & (unitSize - 1)) !== 0) {
    throw new RangeError(`Refill unit ${unitSize} is not a power of two in ${MIN_UNIT_SIZE}..${MAX_UNIT_SIZE}`);
  }
  if (!Number.isSafeInteger(blobSize) || blobSize < 0) throw new RangeError(`Blob size ${blobSize} is not a safe integer ≥ 0`);
  if (unitCount(h) > MAX_UNITS) throw new RangeError(`Blob of ${blobSize} bytes has more than 2^32-1 units of ${unitSize}`);
}

export function encodeJournalHeader(h: JournalHeader): Uint8Array {
  validateJournalHeader(h);
  const b = new Uint8Array(JOURNAL_HEADER_SIZE);
  const v = view(b);
  b.set(JOURNAL_MAGIC, HEADER_FIELDS.magic);
  v.setUint32(HEADER_FIELDS.version, JOURNAL_VERSION, true);
  v.setUint32(HEADER_FIELDS.unitSize, h.unitSize, true);
  v.setBigUint64(HEADER_FIELDS.blobSize, BigInt(h.blobSize), true);
  v.setUint32(HEADER_FIELDS.crc, standardCrc(b.subarray(0, HEADER_FIELDS.crc)), true);
  return b;
}

/** Decodes and checks a header; throws `DataCorruptionError` when it is not a valid one. */
export function decodeJournalHeader(bytes: Uint8Array): JournalHeader {
  if (bytes.length < JOURNAL_HEADER_SIZE) {
    throw new DataCorruptionError(`Cannot read cache journal header: ${bytes.length} of ${JOURNAL_HEADER_SIZE} bytes present`);
  }
  const v = view(bytes);
  for (let i = 0; i < JOURNAL_MAGIC.length; i++) {
    if (bytes[i] !== JOURNAL_MAGIC[i]) throw new DataCorruptionError('Cannot read cache journal header: bad magic');
  }
  const crc = v.getUint32(HEADER_FIELDS.crc, true);
  if (crc !== standardCrc(bytes.subarray(0, HEADER_FIELDS.crc))) {
    throw new DataCorruptionError('Cannot read cache journal header: checksum mismatch');
  }
  const version = v.getUint32(HEADER_FIELDS.version, true);
  if (version !== JOURNAL_VERSION) {
    throw new DataCorruptionError(`Cannot read cache journal header: version ${version}, expected ${JOURNAL_VERSION}`);
  }
  const big = v.getBigUint64(HEADER_FIELDS.blobSize, true);
  if (big > BigInt(Number.MAX_SAFE_INTEGER)) throw new DataCorruptionError(`Cannot read cache journal header: blob size ${big} exceeds 2^53`);
  const h = { unitSize: v.getUint32(HEADER_FIELDS.unitSize, true), blobSize: Number(big) };
  try {
    validateJournalHeader(h);
  } catch (e) {
    throw new DataCorruptionError(`Cannot read cache journal header: ${(e as Error).message}`, { cause: e });
  }
  return h;
}

export function encodeJournalRecord(r: JournalRecord): Uint8Array {
  const b = new Uint8Array(JOURNAL_RECORD_SIZE);
  encodeJournalRecordInto(r, b);
  return b;
}

/** Encodes `r` into the first 16 bytes of `out`. */
export function encodeJournalRecordInto(r: JournalRecord, out: Uint8Array): void {
  if (r.op !== OP_PRESENT && r.op !== OP_ABSENT) throw new RangeError(`Bad journal op ${String(r.op)}`);
  if (!Number.isInteger(r.first) || r.first < 0 || r.first > MAX_UNITS) throw new RangeError(`Bad first unit ${r.first}`);
  if (!Number.isInteger(r.count) || r.count < 1 || r.first + r.count > MAX_UNITS + 1) throw new RangeError(`Bad unit count ${r.count}`);
  const b = out.subarray(0, JOURNAL_RECORD_SIZE);
  b.fill(0);
  const v = view(b);
  v.setUint8(RECORD_FIELDS.op, r.op);
  v.setUint32(RECORD_FIELDS.first, r.first, true);
  v.setUint32(RECORD_FIELDS.count, r.count, true);
  v.setUint32(RECORD_FIELDS.crc, standardCrc(b.subarray(0, RECORD_FIELDS.crc)), true);
}

/**
 * Decodes the record at `offset` of `bytes`; `undefined` when it is incomplete, fails
 * its checksum, has non-zero reserved bytes, an unknown op or a zero count. Range checks
 * against a blob are the caller's.
 */
export function decodeJournalRecord(bytes: Uint8Array, offset: number): JournalRecord | undefined {
  if (offset < 0 || offset + JOURNAL_RECORD_SIZE > bytes.length) return undefined;
  const b = bytes.subarray(offset, offset + JOURNAL_RECORD_SIZE);
  const v = view(b);
  if (v.getUint32(RECORD_FIELDS.crc, true) !== standardCrc(b.subarray(0, RECORD_FIELDS.crc))) return undefined;
  const op = v.getUint8(RECORD_FIELDS.op);
  if (op !== OP_PRESENT && op !== OP_ABSENT) return undefined;
  if (b[1] !== 0 || b[2] !== 0 || b[3] !== 0) return undefined;
  const first = v.getUint32(RECORD_FIELDS.first, true);
  const count = v.getUint32(RECORD_FIELDS.count, true);
  if (count === 0) return undefined;
  return { op, first, count };
}

/**
 * Replays a whole journal file. Throws `DataCorruptionError` when the header is invalid;
 * otherwise stops at the first invalid record or a record outside the blob's units and
 * reports how many bytes were valid.
 */
export function replayJournal(bytes: Uint8Array): JournalReplay {
  const header = decodeJournalHeader(bytes);
  const units = unitCount(header);
  const present = new UnitBitmap(units);
  let pos = JOURNAL_HEADER_SIZE;
  let records = 0;
  for (;;) {
    const r = decodeJournalRecord(bytes, pos);
    if (r === undefined || r.first + r.count > units) break;
    if (r.op === OP_PRESENT) present.set(r.first, r.count);
    else present.clear(r.first, r.count);
    pos += JOURNAL_RECORD_SIZE;
    records++;
  }
  return { header, present, validLength: pos, records };
}

/** Encodes one `op` record per `[first, count]` run, back to back. */
export function encodeJournalRuns(op: JournalRecord['op'], runs: Iterable<readonly [number, number]>): Uint8Array {
  const list = [...runs];
  const out = new Uint8Array(list.length * JOURNAL_RECORD_SIZE);
  list.forEach(([first, count], i) => encodeJournalRecordInto({ op, first, count }, out.subarray(i * JOURNAL_RECORD_SIZE)));
  return out;
}
