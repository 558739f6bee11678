/**
 * The 4096-byte LSMT header/trailer record (lsmt.md §2-§4).
 *
 * | offset | size | field        |
 * |-------:|-----:|--------------|
 * | 0      | 8    | magic0 "LSMT\0\1\2\0" |
 * | 8      | 16   | magic1       |
 * | 24     | 4    | size (390)   |
 * | 28     | 4    | flags        |
 * | 32     | 8    | index_offset (bytes) |
 * | 40     | 8    | index_size (entries) |
 * | 48     | 8    | virtual_size (bytes) |
 * | 56     | 37   | uuid (text + NUL)    |
 * | 93     | 37   | parent_uuid          |
 * | 130    | 2    | reserved             |
 * | 132    | 1    | version (1)          |
 * | 133    | 1    | sub_version (1)      |
 * | 134    | 256  | user_tag             |
 */
import { DataCorruptionError, InvalidArgumentError, toSafeNumber } from '../../io/errors.ts';

export const HEADER_TRAILER_SIZE = 4096;
export const HT_MEANINGFUL_SIZE = 390;
export const LSMT_MAGIC0 = Uint8Array.of(0x4c, 0x53, 0x4d, 0x54, 0x00, 0x01, 0x02, 0x00);
export const LSMT_MAGIC1 = Uint8Array.of(
  0x65, 0x7e, 0x63, 0xd2, 0x94, 0x44, 0x08, 0x4c, 0xa2, 0xd2, 0xc8, 0xec, 0x4f, 0xcf, 0xae, 0x8a,
);

export const FLAG_HEADER = 0x01;
export const FLAG_DATA = 0x02;
export const FLAG_SEALED = 0x04;
export const FLAG_SPARSE = 0x10;
const KNOWN_FLAGS = 0x3f;

export const NIL_UUID = '00000000-0000-0000-0000-000000000000';
const USER_TAG_SIZE = 256;

const OFF = {
  magic0: 0,
  magic1: 8,
  size: 24,
  flags: 28,
  indexOffset: 32,
  indexSize: 40,
  virtualSize: 48,
  uuid: 56,
  parentUuid: 93,
  version: 132,
  subVersion: 133,
  userTag: 134,
} as const;

export interface HeaderTrailer {
  flags: number;
  /** Bytes. */
  indexOffset: number;
  /** Entries (including padding entries in a committed blob). */
  indexSize: number;
  /** Bytes. */
  virtualSize: number;
  /** Upper-case UUID text, or the nil UUID. */
  uuid: string;
  parentUuid: string;
  version: number;
  subVersion: number;
  /** The commit message bytes, trailing NULs removed. */
  userTag: Uint8Array;
}

export function isHeader(h: HeaderTrailer): boolean {
  return (h.flags & FLAG_HEADER) !== 0;
}
export function isDataFile(h: HeaderTrailer): boolean {
  return (h.flags & FLAG_DATA) !== 0;
}
export function isSealed(h: HeaderTrailer): boolean {
  return (h.flags & FLAG_SEALED) !== 0;
}
export function isSparse(h: HeaderTrailer): boolean {
  return (h.flags & FLAG_SPARSE) !== 0;
}

/** Whether `bytes` starts with the LSMT magics. */
export function hasLsmtMagic(bytes: Uint8Array): boolean {
  if (bytes.length < 24) return false;
  for (let i = 0; i < 8; i++) if (bytes[i] !== LSMT_MAGIC0[i]) return false;
  for (let i = 0; i < 16; i++) if (bytes[8 + i] !== LSMT_MAGIC1[i]) return false;
  return true;
}

/**
 * Normalises UUID text as upstream parses it (lsmt.md §4): 36 characters, hex digits
 * outside positions 8/13/18/23 (which are skipped), returned upper-case with dashes;
 * anything else is `undefined` ("no UUID").
 */
export function parseUuid(text: string): string | undefined {
  if (text.length !== 36) return undefined;
  let hex = '';
  for (let i = 0; i < 36; i++) {
    const c = text[i] as string;
    if (i === 8 || i === 13 || i === 18 || i === 23) {
      if (!/[-0-9a-fA-F]/.test(c)) return undefined;
      continue;
    }
    if (!/[0-9a-fA-F]/.test(c)) return undefined;
    hex += c;
  }
  hex = hex.toUpperCase();
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

function decodeUuid(bytes: Uint8Array, at: number): string {
  // Valid only when the 36 characters are followed by a NUL; otherwise "no UUID".
  if (bytes[at + 36] !== 0) return NIL_UUID;
  const text = String.fromCharCode(...bytes.subarray(at, at + 36));
  return parseUuid(text) ?? NIL_UUID;
}

function encodeUuid(uuid: string, bytes: Uint8Array, at: number): void {
  const text = parseUuid(uuid) ?? NIL_UUID;
  for (let i = 0; i < 36; i++) bytes[at + i] = text.charCodeAt(i);
  bytes[at + 36] = 0;
}

/** Decodes a record; checks only the magics (see {@link validateHeaderTrailer}). */
export function decodeHeaderTrailer(bytes: Uint8Array, what = 'LSMT header'): HeaderTrailer {
  if (bytes.length < HT_MEANINGFUL_SIZE) {
    throw new DataCorruptionError(`Cannot read ${what}: ${bytes.length} bytes, need ${HT_MEANINGFUL_SIZE}`);
  }
  if (!hasLsmtMagic(bytes)) throw new DataCorruptionError(`Cannot read ${what}: bad LSMT magic`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let tagEnd = USER_TAG_SIZE;
  while (tagEnd > 0 && bytes[OFF.userTag + tagEnd - 1] === 0) tagEnd--;
  return {
    flags: view.getUint32(OFF.flags, true) & KNOWN_FLAGS,
    indexOffset: toSafeNumber(view.getBigUint64(OFF.indexOffset, true), `${what} index_offset`),
    indexSize: toSafeNumber(view.getBigUint64(OFF.indexSize, true), `${what} index_size`),
    virtualSize: toSafeNumber(view.getBigUint64(OFF.virtualSize, true), `${what} virtual_size`),
    uuid: decodeUuid(bytes, OFF.uuid),
    parentUuid: decodeUuid(bytes, OFF.parentUuid),
    version: bytes[OFF.version] as number,
    subVersion: bytes[OFF.subVersion] as number,
    userTag: bytes.slice(OFF.userTag, OFF.userTag + tagEnd),
  };
}

/** Encodes a full 4096-byte record. */
export function encodeHeaderTrailer(h: HeaderTrailer): Uint8Array {
  if (h.userTag.length > USER_TAG_SIZE) {
    throw new InvalidArgumentError(`Cannot write LSMT header: user tag is ${h.userTag.length} bytes, at most 256`);
  }
  const bytes = new Uint8Array(HEADER_TRAILER_SIZE);
  const view = new DataView(bytes.buffer);
  bytes.set(LSMT_MAGIC0, OFF.magic0);
  bytes.set(LSMT_MAGIC1, OFF.magic1);
  view.setUint32(OFF.size, HT_MEANINGFUL_SIZE, true);
  view.setUint32(OFF.flags, h.flags, true);
  view.setBigUint64(OFF.indexOffset, BigInt(h.indexOffset), true);
  view.setBigUint64(OFF.indexSize, BigInt(h.indexSize), true);
  view.setBigUint64(OFF.virtualSize, BigInt(h.virtualSize), true);
  encodeUuid(h.uuid, bytes, OFF.uuid);
  encodeUuid(h.parentUuid, bytes, OFF.parentUuid);
  bytes[OFF.version] = h.version;
  bytes[OFF.subVersion] = h.subVersion;
  bytes.set(h.userTag, OFF.userTag);
  return bytes;
}

/** A record with upstream's defaults (version 1.1, nil UUIDs, empty tag). */
export function newHeaderTrailer(fields: Partial<HeaderTrailer> & { flags: number }): HeaderTrailer {
  return {
    indexOffset: 0,
    indexSize: 0,
    virtualSize: 0,
    uuid: NIL_UUID,
    parentUuid: NIL_UUID,
    version: 1,
    subVersion: 1,
    userTag: new Uint8Array(0),
    ...fields,
  };
}

/**
 * Checks the role bits a record must have: `expect.header` (bit 0), `expect.data`
 * (bit 1), `expect.sealed` (bit 2), each only when given.
 */
export function validateHeaderTrailer(
  h: HeaderTrailer,
  expect: { header?: boolean; data?: boolean; sealed?: boolean; what: string },
): void {
  const check = (want: boolean | undefined, has: boolean, name: string): void => {
    if (want !== undefined && want !== has) {
      throw new DataCorruptionError(`Cannot open ${expect.what}: ${name} flag is ${has ? 'set' : 'clear'}`);
    }
  };
  check(expect.header, isHeader(h), 'header');
  check(expect.data, isDataFile(h), 'data-file');
  check(expect.sealed, isSealed(h), 'sealed');
}
