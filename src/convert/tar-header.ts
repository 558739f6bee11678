/**
 * The 512-byte tar header block (POSIX ustar, with the GNU and PAX extensions that OCI
 * layers use) and PAX extended-header records: a decode/encode pair for each, all field
 * offsets in one table (STYLE.md §2; erofs-and-fs.md §2.2).
 *
 * Numeric fields are octal text (NUL- or space-terminated, leading spaces allowed), or
 * GNU base-256 when the first byte has its high bit set (GNU tar writes large uids and
 * sizes that way; upstream overlaybd does not read it, we do). The checksum is the
 * unsigned (or, as old writers did, signed) byte sum of the block with the checksum
 * field read as spaces.
 *
 * @example
 * ```ts
 * const block = encodeTarHeader({ name: 'etc/motd', typeflag: TYPE.regular, size: 5, mode: 0o644 });
 * decodeTarHeader(block).name; // 'etc/motd'
 * ```
 */
import { DataCorruptionError, InvalidArgumentError } from '../io/errors.ts';
import { USTAR_FIELDS } from '../formats/tar/wrapper.ts';

/** Size of a tar block. */
export const TAR_BLOCK = 512;

/** Byte offset and size of every header field (the ustar layout the tar wrapper also reads). */
export const TAR_FIELDS = USTAR_FIELDS;

type Field = keyof typeof TAR_FIELDS;

/** Type flags (one ASCII character at offset 156). */
export const TYPE = {
  regular: '0',
  regularOld: '\0',
  hardlink: '1',
  symlink: '2',
  char: '3',
  block: '4',
  directory: '5',
  fifo: '6',
  contiguous: '7',
  paxExtended: 'x',
  paxGlobal: 'g',
  gnuLongName: 'L',
  gnuLongLink: 'K',
} as const;

/** A decoded header block, before PAX/GNU overrides are applied. */
export interface TarHeader {
  /** `name` field (NUL-terminated text). */
  name: string;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  /** Seconds since the epoch. */
  mtime: number;
  typeflag: string;
  linkname: string;
  /** Magic without trailing NULs: `ustar` (POSIX) or `ustar ` (GNU); empty for v7 headers. */
  magic: string;
  uname: string;
  gname: string;
  devmajor: number;
  devminor: number;
  /** ustar `prefix` (joined with `/` before `name` when the magic is ustar). */
  prefix: string;
}

const dec = new TextDecoder('utf-8', { fatal: false });
const enc = new TextEncoder();

function field(block: Uint8Array, f: Field): Uint8Array {
  const [at, size] = TAR_FIELDS[f];
  return block.subarray(at, at + size);
}

function text(block: Uint8Array, f: Field): string {
  const b = field(block, f);
  const nul = b.indexOf(0);
  return dec.decode(nul < 0 ? b : b.subarray(0, nul));
}

/** Parses an octal or base-256 numeric field; throws naming the field when malformed. */
function numeric(block: Uint8Array, f: Field): number {
  const b = field(block, f);
  if (((b[0] as number) & 0x80) !== 0) {
    if (((b[0] as number) & 0x40) !== 0) throw new DataCorruptionError(`Cannot read tar header: negative base-256 ${f} field`);
    let v = BigInt((b[0] as number) & 0x3f);
    for (let i = 1; i < b.length; i++) v = (v << 8n) | BigInt(b[i] as number);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new DataCorruptionError(`Cannot read tar header: ${f} ${v} exceeds 2^53`);
    return Number(v);
  }
  let i = 0;
  while (i < b.length && b[i] === 0x20) i++;
  let v = 0;
  let digits = 0;
  for (; i < b.length; i++) {
    const c = b[i] as number;
    if (c === 0 || c === 0x20) break;
    if (c < 0x30 || c > 0x37) throw new DataCorruptionError(`Cannot read tar header: ${f} field is not octal (${JSON.stringify(dec.decode(b))})`);
    v = v * 8 + (c - 0x30);
    digits++;
  }
  if (digits === 0) return 0;
  if (!Number.isSafeInteger(v)) throw new DataCorruptionError(`Cannot read tar header: ${f} exceeds 2^53`);
  return v;
}

/** Unsigned and signed byte sums of a block with the checksum field counted as spaces. */
function checksums(block: Uint8Array): { unsigned: number; signed: number } {
  const [at, size] = TAR_FIELDS.chksum;
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < TAR_BLOCK; i++) {
    const c = i >= at && i < at + size ? 0x20 : (block[i] as number);
    unsigned += c;
    signed += c >= 0x80 ? c - 256 : c;
  }
  return { unsigned, signed };
}

/** Whether a block is all zeros (an end-of-archive marker block). */
export function isZeroBlock(block: Uint8Array): boolean {
  for (let i = 0; i < block.length; i++) if (block[i] !== 0) return false;
  return true;
}

/** Decodes one header block; the checksum is verified. */
export function decodeTarHeader(block: Uint8Array): TarHeader {
  if (block.length !== TAR_BLOCK) throw new RangeError(`A tar header is ${TAR_BLOCK} bytes, got ${block.length}`);
  const stored = numeric(block, 'chksum');
  const sums = checksums(block);
  if (stored !== sums.unsigned && stored !== sums.signed) {
    throw new DataCorruptionError(`Cannot read tar header: checksum ${stored} does not match the block (${sums.unsigned})`);
  }
  const magic = dec.decode(field(block, 'magic')).replace(/\0+$/, '');
  return {
    name: text(block, 'name'),
    mode: numeric(block, 'mode'),
    uid: numeric(block, 'uid'),
    gid: numeric(block, 'gid'),
    size: numeric(block, 'size'),
    mtime: numeric(block, 'mtime'),
    typeflag: String.fromCharCode(block[TAR_FIELDS.typeflag[0]] as number),
    linkname: text(block, 'linkname'),
    magic,
    uname: text(block, 'uname'),
    gname: text(block, 'gname'),
    devmajor: numeric(block, 'devmajor'),
    devminor: numeric(block, 'devminor'),
    prefix: magic === 'ustar' ? text(block, 'prefix') : '',
  };
}

function putText(block: Uint8Array, f: Field, value: string): void {
  const [at, size] = TAR_FIELDS[f];
  const b = enc.encode(value);
  if (b.length > size) throw new InvalidArgumentError(`Cannot encode tar header: ${f} '${value}' is longer than ${size} bytes`);
  block.set(b, at);
}

/** Octal with a NUL terminator, or base-256 when it does not fit (GNU). */
function putNumber(block: Uint8Array, f: Field, value: number): void {
  const [at, size] = TAR_FIELDS[f];
  if (!Number.isSafeInteger(value) || value < 0) throw new InvalidArgumentError(`Cannot encode tar header: ${f} ${value} is not a non-negative integer`);
  const octal = value.toString(8);
  if (octal.length <= size - 1) {
    block.set(enc.encode(octal.padStart(size - 1, '0')), at);
    block[at + size - 1] = 0;
    return;
  }
  let v = BigInt(value);
  for (let i = size - 1; i > 0; i--) {
    block[at + i] = Number(v & 0xffn);
    v >>= 8n;
  }
  block[at] = 0x80;
}

/** Fields of {@link encodeTarHeader}; all but `name` and `typeflag` default to 0 / empty. */
export interface TarHeaderInit {
  name: string;
  typeflag: string;
  mode?: number;
  uid?: number;
  gid?: number;
  size?: number;
  mtime?: number;
  linkname?: string;
  uname?: string;
  gname?: string;
  devmajor?: number;
  devminor?: number;
  prefix?: string;
  /** Default POSIX `ustar\0` + `00`; `gnu` writes `ustar  \0`. */
  format?: 'ustar' | 'gnu';
}

/** Encodes a header block with a valid checksum (names must fit their fields). */
export function encodeTarHeader(h: TarHeaderInit): Uint8Array {
  const block = new Uint8Array(TAR_BLOCK);
  putText(block, 'name', h.name);
  putNumber(block, 'mode', h.mode ?? 0);
  putNumber(block, 'uid', h.uid ?? 0);
  putNumber(block, 'gid', h.gid ?? 0);
  putNumber(block, 'size', h.size ?? 0);
  putNumber(block, 'mtime', h.mtime ?? 0);
  if (h.typeflag.length !== 1) throw new InvalidArgumentError(`Cannot encode tar header: typeflag '${h.typeflag}' is not one character`);
  block[TAR_FIELDS.typeflag[0]] = h.typeflag.charCodeAt(0);
  putText(block, 'linkname', h.linkname ?? '');
  if (h.format === 'gnu') block.set(enc.encode('ustar  \0'), TAR_FIELDS.magic[0]);
  else block.set(enc.encode('ustar\u000000'), TAR_FIELDS.magic[0]);
  putText(block, 'uname', h.uname ?? '');
  putText(block, 'gname', h.gname ?? '');
  putNumber(block, 'devmajor', h.devmajor ?? 0);
  putNumber(block, 'devminor', h.devminor ?? 0);
  if (h.format !== 'gnu') putText(block, 'prefix', h.prefix ?? '');
  const sum = checksums(block).unsigned;
  const [at] = TAR_FIELDS.chksum;
  block.set(enc.encode(`${sum.toString(8).padStart(6, '0')}\0 `), at);
  return block;
}

/**
 * Parses PAX extended-header data: records `"<len> <key>=<value>\n"` where `len` counts
 * the whole record in bytes. Values are kept as bytes (`SCHILY.xattr.*` values are
 * binary); later records override earlier ones.
 */
export function decodePaxRecords(data: Uint8Array): Map<string, Uint8Array> {
  const out = new Map<string, Uint8Array>();
  let at = 0;
  while (at < data.length) {
    if (data[at] === 0) break; // NUL padding after the last record
    const space = data.indexOf(0x20, at);
    if (space < 0) throw new DataCorruptionError(`Cannot read PAX header: record at byte ${at} has no length`);
    const lenText = dec.decode(data.subarray(at, space));
    if (!/^[1-9]\d*$/.test(lenText)) throw new DataCorruptionError(`Cannot read PAX header: record at byte ${at} has length '${lenText}'`);
    const len = Number(lenText);
    const end = at + len;
    if (end > data.length || data[end - 1] !== 0x0a) {
      throw new DataCorruptionError(`Cannot read PAX header: record at byte ${at} of ${len} bytes overruns the data or lacks its newline`);
    }
    const eq = data.indexOf(0x3d, space + 1);
    if (eq < 0 || eq >= end) throw new DataCorruptionError(`Cannot read PAX header: record at byte ${at} has no '='`);
    out.set(dec.decode(data.subarray(space + 1, eq)), data.slice(eq + 1, end - 1));
    at = end;
  }
  return out;
}

/** Encodes PAX records (string values as UTF-8, byte values as given), in the order given. */
export function encodePaxRecords(records: Iterable<readonly [string, string | Uint8Array]>): Uint8Array {
  const parts: Uint8Array[] = [];
  for (const [key, value] of records) {
    const body = Buffer.concat([enc.encode(` ${key}=`), typeof value === 'string' ? enc.encode(value) : value, enc.encode('\n')]);
    let len = body.length + 1;
    while (String(len).length + body.length !== len) len = String(len).length + body.length;
    parts.push(enc.encode(String(len)), body);
  }
  return Buffer.concat(parts);
}
