/**
 * The overlaybd tar wrapper (tar-wrapper.md §1-§3, FORMAT.md beside this file).
 *
 * Writing: {@link TarWrapSink} wraps a payload (normally a ZFile) as the single member
 * `overlaybd.commit` of a tar archive, byte-identical to upstream `overlaybd-commit -t`
 * and `overlaybd-zfile -t`. Reading: {@link isOverlaybdTar} recognises a ustar archive
 * the way upstream does, and {@link openTarPayload} returns the first member as a
 * {@link SliceReader} read in place.
 *
 * @example
 * ```ts
 * const tar = await TarWrapSink.create(await FileSink.create('layer.tar'));
 * const z = await ZFileWriter.create(tar, { rewriteHeader: true });
 * await z.write(lsmtBytes);
 * await z.close(); // closes tar, which finishes the archive and closes the file
 *
 * const payload = await openTarPayload(await openFileReader('layer.tar')); // the ZFile
 * ```
 */
import type { BlobReader } from '../../io/blob-reader.ts';
import { readFully } from '../../io/blob-reader.ts';
import type { ByteSink } from '../../io/byte-sink.ts';
import { DataCorruptionError, InvalidArgumentError, UnsupportedError } from '../../io/errors.ts';
import { SliceReader } from '../../io/slice-reader.ts';

/** Size of a tar block. */
export const TAR_BLOCK_SIZE = 512;
/** Offset of the payload in an archive written by {@link TarWrapSink}: PAX header, PAX data, member header. */
export const TAR_WRAP_PAYLOAD_OFFSET = 3 * TAR_BLOCK_SIZE;

/** Byte offsets and sizes of the ustar header fields used here. */
export const USTAR_FIELDS = {
  name: [0, 100],
  mode: [100, 8],
  uid: [108, 8],
  gid: [116, 8],
  size: [124, 12],
  mtime: [136, 12],
  chksum: [148, 8],
  typeflag: [156, 1],
  linkname: [157, 100],
  magic: [257, 6],
  version: [263, 2],
  uname: [265, 32],
  gname: [297, 32],
  devmajor: [329, 8],
  devminor: [337, 8],
  prefix: [345, 155],
} as const;

type Field = keyof typeof USTAR_FIELDS;

/** Largest PAX extended-header data this reader loads (anything real is a few hundred bytes). */
const MAX_PAX_DATA = 1 << 20;

/** Options of {@link TarWrapSink.create} and {@link wrapBytes}. */
export interface TarWrapOptions {
  /**
   * The member's mode field: upstream stores the full `st_mode` of the output file,
   * file-type bits included. Default 0o100644 (regular file, 0644), as observed.
   */
  mode?: number;
  /**
   * Owner names. Upstream looks up the names of uid 0 / gid 0 on the writing host; we
   * write the constant `root` (what every observed blob carries) unless told otherwise.
   */
  uname?: string;
  gname?: string;
}

const enc = new TextEncoder();
const dec = new TextDecoder();

function putString(h: Uint8Array, field: Field, value: string): void {
  const [at, size] = USTAR_FIELDS[field];
  const b = enc.encode(value);
  if (b.length > size) throw new RangeError(`Tar ${field} "${value}" does not fit ${size} bytes`);
  h.set(b, at);
}

/** "oct6": octal right-aligned in 6 characters padded with spaces, then a space and a NUL. */
function oct6(value: number): string {
  const s = value.toString(8);
  if (s.length > 6) throw new RangeError(`Value ${value} does not fit a 6-digit octal tar field`);
  return `${s.padStart(6, ' ')} \0`;
}

/** "oct11": octal right-aligned in 11 characters padded with spaces, then a space. */
function oct11(value: number): string {
  const s = value.toString(8);
  if (s.length > 11) throw new RangeError(`Value ${value} does not fit an 11-digit octal tar field`);
  return `${s.padStart(11, ' ')} `;
}

/** The tar header checksum: unsigned byte sum with the checksum field counted as spaces. */
function checksums(h: Uint8Array): { unsigned: number; signed: number } {
  const [at, size] = USTAR_FIELDS.chksum;
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < TAR_BLOCK_SIZE; i++) {
    const v = i >= at && i < at + size ? 0x20 : h[i]!;
    unsigned += v;
    signed += v >= 0x80 ? v - 0x100 : v;
  }
  return { unsigned, signed };
}

function seal(h: Uint8Array): void {
  putString(h, 'chksum', oct6(checksums(h).unsigned));
}

/** The PAX record `"<L> size=<P>\n"` with its self-inclusive length (tar-wrapper.md §2.2). */
export function paxSizeRecord(payloadSize: number): string {
  const body = ` size=${payloadSize}\n`;
  let len = body.length;
  len += String(len).length;
  if (String(len).length + body.length !== len) len = String(len).length + body.length;
  return `${len}${body}`;
}

/** Writes the three 512-byte blocks that precede a payload of `payloadSize` bytes (§2.1-§2.3). */
export function encodeTarWrapPrefix(payloadSize: number, options: TarWrapOptions = {}): Uint8Array {
  if (!Number.isSafeInteger(payloadSize) || payloadSize < 0) {
    throw new RangeError(`Tar payload size ${payloadSize} is invalid`);
  }
  const out = new Uint8Array(TAR_WRAP_PAYLOAD_OFFSET);
  const record = paxSizeRecord(payloadSize);

  const pax = out.subarray(0, TAR_BLOCK_SIZE);
  putString(pax, 'name', 'overlaybd.pax');
  putString(pax, 'size', oct11(record.length));
  putString(pax, 'typeflag', 'x');
  putString(pax, 'magic', 'ustar\0');
  putString(pax, 'version', '00');
  seal(pax);

  out.set(enc.encode(record), TAR_BLOCK_SIZE);

  const m = out.subarray(2 * TAR_BLOCK_SIZE, 3 * TAR_BLOCK_SIZE);
  putString(m, 'name', 'overlaybd.commit');
  putString(m, 'mode', oct6(options.mode ?? 0o100644));
  putString(m, 'uid', oct6(0));
  putString(m, 'gid', oct6(0));
  putString(m, 'size', oct11(0));
  putString(m, 'mtime', oct11(0));
  putString(m, 'typeflag', '0');
  putString(m, 'magic', 'ustar\0');
  putString(m, 'version', '00');
  putString(m, 'uname', options.uname ?? 'root');
  putString(m, 'gname', options.gname ?? 'root');
  seal(m);
  return out;
}

/**
 * The placeholder upstream writes at creation (§2.4); kept byte for byte so that an
 * abandoned output looks like upstream's, which no reader accepts as tar.
 */
function placeholder(): Uint8Array {
  const out = new Uint8Array(TAR_WRAP_PAYLOAD_OFFSET);
  const pax = out.subarray(0, TAR_BLOCK_SIZE);
  putString(pax, 'name', 'overlaybd.pax');
  putString(pax, 'size', oct11(9));
  putString(pax, 'typeflag', 'x');
  out.set(enc.encode('9 size=0\n'), TAR_BLOCK_SIZE);
  const m = out.subarray(2 * TAR_BLOCK_SIZE);
  putString(m, 'name', 'overlaybd.new');
  putString(m, 'size', oct11(0));
  putString(m, 'magic', 'xxtar\0');
  putString(m, 'version', 'xx');
  return out;
}

function roundUp(n: number): number {
  return Math.ceil(n / TAR_BLOCK_SIZE) * TAR_BLOCK_SIZE;
}

/**
 * A {@link ByteSink} that wraps everything written to it as the payload of the member
 * `overlaybd.commit` (tar-wrapper.md §2). `position` and `writeAt` offsets are payload
 * offsets. `close` pads, appends the end-of-archive blocks, rewrites the 1536-byte
 * prefix with the final PAX and member headers, and closes the underlying sink.
 */
export class TarWrapSink implements ByteSink {
  readonly #sink: ByteSink;
  readonly #options: TarWrapOptions;
  #closed = false;

  private constructor(sink: ByteSink, options: TarWrapOptions) {
    this.#sink = sink;
    this.#options = options;
  }

  /** Writes the placeholder prefix into `sink`, which must be empty. */
  static async create(sink: ByteSink, options: TarWrapOptions = {}): Promise<TarWrapSink> {
    if (sink.position !== 0) {
      throw new InvalidArgumentError(`Cannot start a tar wrapper: the sink is at position ${sink.position}, not 0`);
    }
    encodeTarWrapPrefix(0, options); // validate the options before writing anything
    await sink.write(placeholder());
    return new TarWrapSink(sink, options);
  }

  get position(): number {
    return this.#sink.position - TAR_WRAP_PAYLOAD_OFFSET;
  }

  async write(buf: Uint8Array): Promise<void> {
    if (this.#closed) throw new InvalidArgumentError('Cannot write tar payload: wrapper is closed');
    await this.#sink.write(buf);
  }

  async writeAt(buf: Uint8Array, offset: number): Promise<void> {
    if (offset < 0) throw new RangeError(`Tar payload offset ${offset} is negative`);
    await this.#sink.writeAt(buf, TAR_WRAP_PAYLOAD_OFFSET + offset);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const payload = this.position;
    const end = this.#sink.position;
    await this.#sink.write(new Uint8Array(roundUp(end) - end + 2 * TAR_BLOCK_SIZE));
    await this.#sink.writeAt(encodeTarWrapPrefix(payload, this.#options), 0);
    await this.#sink.close();
  }
}

/** Wraps a payload held in memory (see {@link TarWrapSink}). */
export function wrapBytes(payload: Uint8Array, options: TarWrapOptions = {}): Uint8Array {
  const total = roundUp(TAR_WRAP_PAYLOAD_OFFSET + payload.length) + 2 * TAR_BLOCK_SIZE;
  const out = new Uint8Array(total);
  out.set(encodeTarWrapPrefix(payload.length, options), 0);
  out.set(payload, TAR_WRAP_PAYLOAD_OFFSET);
  return out;
}

/**
 * Parses a numeric tar field: octal text (leading spaces/NULs allowed, ended by a space
 * or NUL) or the base-256 form (high bit of the first byte set). Returns null when the
 * field is not a number.
 */
export function parseTarNumber(h: Uint8Array, at: number, size: number): number | null {
  const first = h[at]!;
  if ((first & 0x80) !== 0) {
    if ((first & 0x40) !== 0) return null; // negative
    let v = first & 0x3f;
    for (let i = 1; i < size; i++) {
      v = v * 256 + h[at + i]!;
      if (v > Number.MAX_SAFE_INTEGER) return null;
    }
    return v;
  }
  let i = at;
  const end = at + size;
  while (i < end && (h[i] === 0x20 || h[i] === 0)) i++;
  if (i === end) return 0;
  let v = 0;
  let digits = 0;
  for (; i < end; i++) {
    const c = h[i]!;
    if (c === 0x20 || c === 0) break;
    if (c < 0x30 || c > 0x37) return null;
    v = v * 8 + (c - 0x30);
    digits++;
  }
  for (; i < end; i++) if (h[i] !== 0x20 && h[i] !== 0) return null;
  return digits > 0 ? v : null;
}

function fieldBytes(h: Uint8Array, field: Field): Uint8Array {
  const [at, size] = USTAR_FIELDS[field];
  return h.subarray(at, at + size);
}

/** Whether a 512-byte block is a ustar header per upstream `is_tar` (§3 steps 2-3). */
export function isUstarHeader(h: Uint8Array): boolean {
  if (h.length < TAR_BLOCK_SIZE) return false;
  const magic = fieldBytes(h, 'magic');
  const ustar = [0x75, 0x73, 0x74, 0x61, 0x72]; // "ustar"; the 6th byte is not checked
  for (let i = 0; i < ustar.length; i++) if (magic[i] !== ustar[i]) return false;
  const version = fieldBytes(h, 'version');
  if (version[0] !== 0x30 || version[1] !== 0x30) return false;
  const [at, size] = USTAR_FIELDS.chksum;
  const stored = parseTarNumber(h, at, size);
  if (stored === null) return false;
  const sums = checksums(h);
  return stored === sums.unsigned || stored === sums.signed;
}

/**
 * Whether `reader` starts with a ustar header as upstream decides (tar-wrapper.md §3):
 * magic `ustar` + version `00` + a valid (unsigned or signed) checksum. GNU-format
 * archives and blobs shorter than 512 bytes are not tar.
 */
export async function isOverlaybdTar(reader: BlobReader): Promise<boolean> {
  if (reader.size < TAR_BLOCK_SIZE) return false;
  const h = new Uint8Array(TAR_BLOCK_SIZE);
  await readFully(reader, h, 0, 'tar header');
  return isUstarHeader(h);
}

/**
 * Parses PAX extended-header records `"<len> <key>=<value>\n"` (stops at a NUL). Throws
 * `DataCorruptionError` for a length below 5, a record past the data, or a missing '='.
 */
export function parsePaxRecords(data: Uint8Array): Map<string, string> {
  const out = new Map<string, string>();
  let pos = 0;
  while (pos < data.length && data[pos] !== 0) {
    let i = pos;
    let len = 0;
    while (i < data.length && data[i]! >= 0x30 && data[i]! <= 0x39 && i - pos < 16) {
      len = len * 10 + (data[i]! - 0x30);
      i++;
    }
    if (i === pos || data[i] !== 0x20) {
      throw new DataCorruptionError(`Cannot parse PAX record at byte ${pos}: no length field`);
    }
    if (len < 5) throw new DataCorruptionError(`Cannot parse PAX record at byte ${pos}: length ${len} is below 5`);
    if (pos + len > data.length) {
      throw new DataCorruptionError(`Cannot parse PAX record at byte ${pos}: length ${len} runs past ${data.length} bytes`);
    }
    let rec = data.subarray(i + 1, pos + len);
    if (rec[rec.length - 1] === 0x0a) rec = rec.subarray(0, rec.length - 1);
    const eq = rec.indexOf(0x3d);
    if (eq < 0) throw new DataCorruptionError(`Cannot parse PAX record at byte ${pos}: no '=' in the record`);
    out.set(dec.decode(rec.subarray(0, eq)), dec.decode(rec.subarray(eq + 1)));
    pos += len;
  }
  return out;
}

function isZeroBlock(h: Uint8Array): boolean {
  for (let i = 0; i < h.length; i++) if (h[i] !== 0) return false;
  return true;
}

/**
 * When `reader` is a tar archive ({@link isOverlaybdTar}), returns its first member's
 * data as a slice of `reader` (closing the slice closes `reader`); otherwise null.
 *
 * PAX (`x`, `g`) and GNU long-name/long-link (`L`, `K`) headers are skipped with their
 * data; the payload starts right after the member header (1536 for overlaybd's own
 * wrapper, 512 without PAX), and its size is the PAX `size` record when present and
 * positive, else the header's size field. Everything is bounds-checked against
 * `reader.size` (`DataCorruptionError`).
 */
export async function openTarPayload(reader: BlobReader): Promise<SliceReader | null> {
  if (!(await isOverlaybdTar(reader))) return null;
  const h = new Uint8Array(TAR_BLOCK_SIZE);
  let paxSize: number | null = null;
  let prevZero = false;
  let off = 0;
  for (;;) {
    if (off + TAR_BLOCK_SIZE > reader.size) {
      throw new DataCorruptionError(`Cannot find tar member: header at offset ${off} runs past the end (${reader.size})`);
    }
    await readFully(reader, h, off, 'tar header');
    if (isZeroBlock(h)) {
      if (prevZero) throw new DataCorruptionError(`Cannot find tar member: archive ends at offset ${off + TAR_BLOCK_SIZE}`);
      prevZero = true;
      off += TAR_BLOCK_SIZE;
      continue;
    }
    prevZero = false;
    const [sizeAt, sizeLen] = USTAR_FIELDS.size;
    const size = parseTarNumber(h, sizeAt, sizeLen);
    if (size === null) throw new DataCorruptionError(`Cannot read tar header at offset ${off}: bad size field`);
    const dataStart = off + TAR_BLOCK_SIZE;
    if (dataStart + size > reader.size) {
      throw new DataCorruptionError(
        `Cannot read tar entry at offset ${off}: ${size} data bytes run past the end (${reader.size})`,
      );
    }
    const type = String.fromCharCode(h[USTAR_FIELDS.typeflag[0]]!);
    if (type === 'x' || type === 'g' || type === 'L' || type === 'K') {
      if (type === 'x') {
        if (size > MAX_PAX_DATA) {
          throw new UnsupportedError(`Cannot read PAX header at offset ${off}: ${size} bytes exceeds ${MAX_PAX_DATA}`);
        }
        const data = new Uint8Array(size);
        await readFully(reader, data, dataStart, 'PAX header data');
        const v = parsePaxRecords(data).get('size');
        if (v !== undefined) {
          if (!/^[0-9]{1,16}$/.test(v) || !Number.isSafeInteger(Number(v))) {
            throw new DataCorruptionError(`Cannot read PAX header at offset ${off}: bad size "${v}"`);
          }
          paxSize = Number(v);
        }
      }
      off = dataStart + roundUp(size);
      continue;
    }
    const payloadSize = paxSize !== null && paxSize > 0 ? paxSize : size;
    if (dataStart + payloadSize > reader.size) {
      throw new DataCorruptionError(
        `Cannot open tar payload at offset ${dataStart}: ${payloadSize} bytes run past the end (${reader.size})`,
      );
    }
    return new SliceReader(reader, { start: dataStart, size: payloadSize, ownsParent: true });
  }
}
