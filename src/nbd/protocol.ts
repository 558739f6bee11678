/**
 * The NBD wire format (NetworkBlockDevice/nbd `doc/proto.md`): every magic number,
 * flag, option, command, reply type and errno in one table, plus the encoders and
 * decoders of each message the server sends or receives. All integers are big-endian
 * ("network byte order"). The layouts are summarised in `src/nbd/README.md`.
 *
 * Nothing here touches a socket; the server (`nbd-server.ts`) composes these pieces.
 *
 * @example
 * ```ts
 * const h = decodeRequestHeader(bytes); // 28 bytes
 * if (h.magic !== MAGIC.REQUEST) throw new Error('bad magic');
 * const reply = encodeSimpleReply(h.cookie, ERRNO.EINVAL);
 * ```
 */

/** Magic numbers. The 64-bit ones are bigint. */
export const MAGIC = {
  /** 'NBDMAGIC', first 8 bytes the server sends. */
  INIT_PASSWD: 0x4e42444d41474943n,
  /** 'IHAVEOPT': server greeting (newstyle) and the start of every client option. */
  IHAVEOPT: 0x49484156454f5054n,
  /** Start of every fixed-newstyle option reply. */
  OPTION_REPLY: 0x3e889045565a9n,
  /** Start of every transmission request. */
  REQUEST: 0x25609513,
  /** Start of a simple reply. */
  SIMPLE_REPLY: 0x67446698,
  /** Start of a structured reply chunk. */
  STRUCTURED_REPLY: 0x668e33ef,
} as const;

/** Handshake flags (16 bits, server → client, after the greeting). */
export const HANDSHAKE_FLAG = { FIXED_NEWSTYLE: 1 << 0, NO_ZEROES: 1 << 1 } as const;

/** Client flags (32 bits, client → server, after the handshake flags). */
export const CLIENT_FLAG = { FIXED_NEWSTYLE: 1 << 0, NO_ZEROES: 1 << 1 } as const;

/** Options (client → server during option haggling). */
export const OPT = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
  EXTENDED_HEADERS: 11,
} as const;

const REP_ERR = 0x80000000;

/** Option reply types; errors have bit 31 set. */
export const REP = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: REP_ERR + 1,
  ERR_POLICY: REP_ERR + 2,
  ERR_INVALID: REP_ERR + 3,
  ERR_PLATFORM: REP_ERR + 4,
  ERR_TLS_REQD: REP_ERR + 5,
  ERR_UNKNOWN: REP_ERR + 6,
  ERR_SHUTDOWN: REP_ERR + 7,
  ERR_BLOCK_SIZE_REQD: REP_ERR + 8,
  ERR_TOO_BIG: REP_ERR + 9,
} as const;

/** Information types inside NBD_REP_INFO replies (and requested by NBD_OPT_INFO/GO). */
export const INFO = { EXPORT: 0, NAME: 1, DESCRIPTION: 2, BLOCK_SIZE: 3 } as const;

/** Transmission flags (16 bits, per export). */
export const TRANSMISSION_FLAG = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  ROTATIONAL: 1 << 4,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  SEND_DF: 1 << 7,
  CAN_MULTI_CONN: 1 << 8,
  SEND_RESIZE: 1 << 9,
  SEND_CACHE: 1 << 10,
  SEND_FAST_ZERO: 1 << 11,
} as const;

/** Request (command) types. */
export const CMD = {
  READ: 0,
  WRITE: 1,
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  CACHE: 5,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7,
  RESIZE: 8,
} as const;

/** Command flags (16 bits per request). */
export const CMD_FLAG = {
  FUA: 1 << 0,
  NO_HOLE: 1 << 1,
  DF: 1 << 2,
  REQ_ONE: 1 << 3,
  FAST_ZERO: 1 << 4,
  PAYLOAD_LEN: 1 << 5,
} as const;

/** Structured reply chunk flags. */
export const REPLY_FLAG = { DONE: 1 << 0 } as const;

/** Structured reply chunk types; error chunks have bit 15 set. */
export const REPLY_TYPE = {
  NONE: 0,
  OFFSET_DATA: 1,
  OFFSET_HOLE: 2,
  BLOCK_STATUS: 5,
  ERROR: (1 << 15) + 1,
  ERROR_OFFSET: (1 << 15) + 2,
} as const;

/** The only error values the protocol allows on the wire. */
export const ERRNO = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;

export type NbdErrno = (typeof ERRNO)[keyof typeof ERRNO];

/** Greeting: INIT_PASSWD(8) + IHAVEOPT(8) + handshake flags(2). */
export const GREETING_SIZE = 18;
/** Client flags: 4 bytes. */
export const CLIENT_FLAGS_SIZE = 4;
/** Option request header: IHAVEOPT(8) + option(4) + data length(4). */
export const OPTION_HEADER_SIZE = 16;
/** Option reply header: magic(8) + option(4) + reply type(4) + data length(4). */
export const OPTION_REPLY_HEADER_SIZE = 20;
/** Request header: magic(4) + flags(2) + type(2) + cookie(8) + offset(8) + length(4). */
export const REQUEST_HEADER_SIZE = 28;
/** Simple reply: magic(4) + error(4) + cookie(8), then READ data. */
export const SIMPLE_REPLY_HEADER_SIZE = 16;
/** Structured chunk header: magic(4) + flags(2) + type(2) + cookie(8) + payload length(4). */
export const STRUCTURED_REPLY_HEADER_SIZE = 20;
/** OFFSET_DATA payload prefix: offset(8), then the data. */
export const OFFSET_DATA_PREFIX_SIZE = 8;
/** Strings (export names, messages) are at most 4096 bytes (proto.md "Conventions"). */
export const MAX_STRING_LENGTH = 4096;

function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

function need(b: Uint8Array, n: number, what: string): void {
  if (b.length < n) throw new RangeError(`Cannot decode ${what}: ${n} bytes needed, ${b.length} given`);
}

const utf8 = new TextEncoder();
const fatalUtf8 = new TextDecoder('utf-8', { fatal: true });

/** Encodes `s` as UTF-8, cut at a character boundary so it fits `MAX_STRING_LENGTH`. */
export function encodeString(s: string, max = MAX_STRING_LENGTH): Uint8Array {
  let bytes = utf8.encode(s);
  if (bytes.length <= max) return bytes;
  let end = max;
  while (end > 0 && ((bytes[end] as number) & 0xc0) === 0x80) end--;
  bytes = bytes.subarray(0, end);
  return bytes;
}

/** Decodes a protocol string: valid UTF-8, no NUL, at most 4096 bytes; else `undefined`. */
export function decodeString(b: Uint8Array): string | undefined {
  if (b.length > MAX_STRING_LENGTH || b.includes(0)) return undefined;
  try {
    return fatalUtf8.decode(b);
  } catch {
    return undefined;
  }
}

/** The server greeting (fixed newstyle, NO_ZEROES offered). */
export function encodeGreeting(handshakeFlags: number): Uint8Array {
  const b = new Uint8Array(GREETING_SIZE);
  const v = view(b);
  v.setBigUint64(0, MAGIC.INIT_PASSWD);
  v.setBigUint64(8, MAGIC.IHAVEOPT);
  v.setUint16(16, handshakeFlags);
  return b;
}

export interface OptionHeader {
  /** Should be `MAGIC.IHAVEOPT`. */
  magic: bigint;
  option: number;
  /** Length of the option data that follows. */
  length: number;
}

export function decodeOptionHeader(b: Uint8Array): OptionHeader {
  need(b, OPTION_HEADER_SIZE, 'option header');
  const v = view(b);
  return { magic: v.getBigUint64(0), option: v.getUint32(8), length: v.getUint32(12) };
}

/** An option reply header followed by `data`. */
export function encodeOptionReply(option: number, type: number, data: Uint8Array = new Uint8Array(0)): Uint8Array {
  const b = new Uint8Array(OPTION_REPLY_HEADER_SIZE + data.length);
  const v = view(b);
  v.setBigUint64(0, MAGIC.OPTION_REPLY);
  v.setUint32(8, option);
  v.setUint32(12, type);
  v.setUint32(16, data.length);
  b.set(data, OPTION_REPLY_HEADER_SIZE);
  return b;
}

/** NBD_REP_SERVER data: name length(4) + name + optional human-readable details. */
export function encodeServerReplyData(name: string, details = ''): Uint8Array {
  const n = encodeString(name);
  const d = encodeString(details);
  const b = new Uint8Array(4 + n.length + d.length);
  view(b).setUint32(0, n.length);
  b.set(n, 4);
  b.set(d, 4 + n.length);
  return b;
}

/** NBD_INFO_EXPORT: type(2) + size(8) + transmission flags(2). */
export function encodeInfoExport(size: number, flags: number): Uint8Array {
  const b = new Uint8Array(12);
  const v = view(b);
  v.setUint16(0, INFO.EXPORT);
  v.setBigUint64(2, BigInt(size));
  v.setUint16(10, flags);
  return b;
}

/** NBD_INFO_NAME / NBD_INFO_DESCRIPTION: type(2) + string. */
export function encodeInfoString(type: typeof INFO.NAME | typeof INFO.DESCRIPTION, s: string): Uint8Array {
  const str = encodeString(s);
  const b = new Uint8Array(2 + str.length);
  view(b).setUint16(0, type);
  b.set(str, 2);
  return b;
}

export interface BlockSizes {
  /** Power of two, 1..64 KiB: requests should be aligned to it. */
  minimum: number;
  /** Power of two ≥ minimum: best performance at this alignment. */
  preferred: number;
  /** Largest READ/WRITE payload accepted. */
  maximum: number;
}

/** NBD_INFO_BLOCK_SIZE: type(2) + minimum(4) + preferred(4) + maximum(4). */
export function encodeInfoBlockSize(s: BlockSizes): Uint8Array {
  const b = new Uint8Array(14);
  const v = view(b);
  v.setUint16(0, INFO.BLOCK_SIZE);
  v.setUint32(2, s.minimum);
  v.setUint32(6, s.preferred);
  v.setUint32(10, s.maximum);
  return b;
}

/** Reply to NBD_OPT_EXPORT_NAME: size(8) + flags(2) + 124 zero bytes unless NO_ZEROES. */
export function encodeExportNameReply(size: number, flags: number, noZeroes: boolean): Uint8Array {
  const b = new Uint8Array(noZeroes ? 10 : 134);
  const v = view(b);
  v.setBigUint64(0, BigInt(size));
  v.setUint16(8, flags);
  return b;
}

export interface InfoRequest {
  name: string;
  /** Requested NBD_INFO_* types, in the client's order. */
  requests: number[];
}

/**
 * Decodes NBD_OPT_INFO / NBD_OPT_GO data: name length(4) + name + count(2) + count × type(2).
 * Returns `undefined` when the data is inconsistent.
 */
export function decodeInfoRequest(b: Uint8Array): InfoRequest | undefined {
  if (b.length < 6) return undefined;
  const v = view(b);
  const nameLength = v.getUint32(0);
  if (nameLength > b.length - 6) return undefined;
  const name = decodeString(b.subarray(4, 4 + nameLength));
  if (name === undefined) return undefined;
  const count = v.getUint16(4 + nameLength);
  if (b.length !== 6 + nameLength + 2 * count) return undefined;
  const requests: number[] = [];
  for (let i = 0; i < count; i++) requests.push(v.getUint16(6 + nameLength + 2 * i));
  return { name, requests };
}

export interface MetaContextRequest {
  name: string;
  queries: string[];
}

/**
 * Decodes NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT data: name length(4) +
 * name + query count(4) + count × (query length(4) + query). `undefined` when inconsistent.
 */
export function decodeMetaContextRequest(b: Uint8Array): MetaContextRequest | undefined {
  if (b.length < 8) return undefined;
  const v = view(b);
  const nameLength = v.getUint32(0);
  if (nameLength > b.length - 8) return undefined;
  const name = decodeString(b.subarray(4, 4 + nameLength));
  if (name === undefined) return undefined;
  let at = 4 + nameLength;
  const count = v.getUint32(at);
  at += 4;
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    if (b.length - at < 4) return undefined;
    const len = v.getUint32(at);
    at += 4;
    if (len > b.length - at) return undefined;
    const q = decodeString(b.subarray(at, at + len));
    if (q === undefined) return undefined;
    queries.push(q);
    at += len;
  }
  return at === b.length ? { name, queries } : undefined;
}

export interface RequestHeader {
  /** Should be `MAGIC.REQUEST`. */
  magic: number;
  /** `CMD_FLAG` bits. */
  flags: number;
  /** `CMD` value. */
  type: number;
  /** Opaque 64-bit handle, echoed in the reply. */
  cookie: bigint;
  /** Byte offset. Values above 2^53 lose precision but stay above any export size. */
  offset: number;
  length: number;
}

export function decodeRequestHeader(b: Uint8Array): RequestHeader {
  need(b, REQUEST_HEADER_SIZE, 'request header');
  const v = view(b);
  return {
    magic: v.getUint32(0),
    flags: v.getUint16(4),
    type: v.getUint16(6),
    cookie: v.getBigUint64(8),
    offset: Number(v.getBigUint64(16)),
    length: v.getUint32(24),
  };
}

/** Encodes a request header (used by tests and fuzzers acting as a client). */
export function encodeRequestHeader(h: Omit<RequestHeader, 'magic'> & { magic?: number }): Uint8Array {
  const b = new Uint8Array(REQUEST_HEADER_SIZE);
  const v = view(b);
  v.setUint32(0, h.magic ?? MAGIC.REQUEST);
  v.setUint16(4, h.flags);
  v.setUint16(6, h.type);
  v.setBigUint64(8, h.cookie);
  v.setBigUint64(16, BigInt(h.offset));
  v.setUint32(24, h.length);
  return b;
}

/** A simple reply without data (everything but a successful READ). */
export function encodeSimpleReply(cookie: bigint, error: number): Buffer {
  const b = Buffer.allocUnsafe(SIMPLE_REPLY_HEADER_SIZE);
  writeSimpleReplyHeader(b, cookie, error);
  return b;
}

/** Writes a simple reply header into the first 16 bytes of `b` (READ data follows). */
export function writeSimpleReplyHeader(b: Buffer, cookie: bigint, error: number): void {
  b.writeUInt32BE(MAGIC.SIMPLE_REPLY, 0);
  b.writeUInt32BE(error, 4);
  b.writeBigUInt64BE(cookie, 8);
}

export interface ChunkHeader {
  flags: number;
  type: number;
  cookie: bigint;
  /** Payload length. */
  length: number;
}

/** Writes a structured chunk header into `b` at `at`. */
export function writeChunkHeader(b: Buffer, h: ChunkHeader, at = 0): void {
  b.writeUInt32BE(MAGIC.STRUCTURED_REPLY, at);
  b.writeUInt16BE(h.flags, at + 4);
  b.writeUInt16BE(h.type, at + 6);
  b.writeBigUInt64BE(h.cookie, at + 8);
  b.writeUInt32BE(h.length, at + 16);
}

/**
 * Writes the header of a final OFFSET_DATA chunk for `length` bytes at `offset` into
 * the first `OFFSET_DATA_START` bytes of `b` (the data follows).
 */
export function writeOffsetDataHeader(b: Buffer, cookie: bigint, at: { offset: number; length: number }): void {
  writeChunkHeader(b, { flags: REPLY_FLAG.DONE, type: REPLY_TYPE.OFFSET_DATA, cookie, length: OFFSET_DATA_PREFIX_SIZE + at.length });
  b.writeBigUInt64BE(BigInt(at.offset), STRUCTURED_REPLY_HEADER_SIZE);
}

/** Where the data starts inside an OFFSET_DATA chunk. */
export const OFFSET_DATA_START = STRUCTURED_REPLY_HEADER_SIZE + OFFSET_DATA_PREFIX_SIZE;

/** A final NBD_REPLY_TYPE_ERROR chunk: error(4) + message length(2) + message. */
export function encodeErrorChunk(cookie: bigint, error: number, message: string): Buffer {
  const msg = encodeString(message);
  const b = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_SIZE + 6 + msg.length);
  writeChunkHeader(b, { flags: REPLY_FLAG.DONE, type: REPLY_TYPE.ERROR, cookie, length: 6 + msg.length });
  b.writeUInt32BE(error, STRUCTURED_REPLY_HEADER_SIZE);
  b.writeUInt16BE(msg.length, STRUCTURED_REPLY_HEADER_SIZE + 4);
  b.set(msg, STRUCTURED_REPLY_HEADER_SIZE + 6);
  return b;
}

/** The human name of a command, for messages and diagnostics. */
export function commandName(type: number): string {
  for (const [name, value] of Object.entries(CMD)) if (value === type) return name;
  return `command ${type}`;
}
