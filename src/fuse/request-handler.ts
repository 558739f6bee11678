/**
 * The per-request logic of the FUSE server: decodes one request read from `/dev/fuse`
 * and either encodes the complete reply, or describes the block-device operation whose
 * result completes it. It does no I/O and holds only static state, so it runs unchanged
 * in a reader worker today and in a restartable serving child later (see README.md).
 *
 * The filesystem is one directory (node 1, the root) holding one regular file (node 2)
 * whose size is the device size. Everything is static except the file's bytes.
 *
 * @example
 * ```ts
 * const h = new FuseRequestHandler({ name: 'block', size: 1 << 30, readOnly: false, directIo: true, uid: 0, gid: 0, time: 0 });
 * const action = h.handle(requestBytes, n);
 * if (action.kind === 'reply') writeSync(fd, action.bytes);
 * else if (action.kind === 'device') writeSync(fd, h.complete(action.request, await run(action.request), requestBytes));
 * ```
 */
import { constants } from 'node:os';
import { constants as fsConstants } from 'node:fs';
import {
  ATTR_OUT_SIZE,
  DirentType,
  ENTRY_OUT_SIZE,
  FUSE_KERNEL_MINOR_VERSION,
  FUSE_KERNEL_VERSION,
  FUSE_MIN_MINOR_VERSION,
  FUSE_ROOT_ID,
  FallocateMode,
  IN_HEADER_SIZE,
  INIT_OUT_SIZE,
  InitFlag,
  InitFlag2,
  OPEN_OUT_SIZE,
  OUT_HEADER_SIZE,
  OpenFlag,
  Opcode,
  STATFS_OUT_SIZE,
  SetattrValid,
  WRITE_IN_SIZE,
  WRITE_OUT_SIZE,
  decodeFallocateIn,
  decodeInHeader,
  decodeInitIn,
  decodeOpenIn,
  decodeReadWriteIn,
  decodeSetattrIn,
  direntSize,
  encodeAttrOut,
  encodeDirent,
  encodeEntryOut,
  encodeInitOut,
  encodeKstatfs,
  encodeOpenOut,
  encodeOutHeader,
  encodeWriteOut,
  viewOf,
} from './protocol.ts';
import type { Attr, InHeader, InitOut } from './protocol.ts';

const E = constants.errno;

/** Node id of the one regular file. */
export const FILE_NODE_ID = 2;
/** Page size the kernel counts `max_pages` in. */
export const FUSE_PAGE_SIZE = 4096;
/** Largest READ/WRITE negotiated: 1 MiB (max_pages 256, the kernel's default limit). */
export const DEFAULT_MAX_IO = 1 << 20;
/** Requests the kernel may have in flight in the background (async reads, async DIO). */
export const MAX_BACKGROUND = 64;
/** Attributes and names never change while mounted; the kernel may cache them this long. */
const VALIDITY = { sec: 3600, nsec: 0 } as const;
const NO_VALIDITY = { sec: 0, nsec: 0 } as const;
const O_ACCMODE = 3;
const W_OK = 2;
const STATFS_BLOCK = 4096;
/** Offset of the data in a READ reply: right after the out header. */
export const READ_DATA_AT = OUT_HEADER_SIZE;
/** Offset of the data in a WRITE request: after the in header and fuse_write_in. */
export const WRITE_DATA_AT = IN_HEADER_SIZE + WRITE_IN_SIZE;

/** The static description of the served file. */
export interface FuseFileConfig {
  /** Name of the file in the mount root: one path component. */
  name: string;
  /** File size in bytes (the device size). */
  size: number;
  readOnly: boolean;
  /** Answer OPEN with FOPEN_DIRECT_IO (no page cache for the file). */
  directIo: boolean;
  uid: number;
  gid: number;
  /** atime/mtime/ctime of both nodes, seconds since the epoch. */
  time: number;
  /** Largest READ/WRITE in bytes; a multiple of 4096. Default {@link DEFAULT_MAX_IO}. */
  maxIo?: number;
}

/** Block-device operations a request can turn into (stored as numbers in a shared slot). */
export const DeviceOpCode = {
  READ: 1,
  WRITE: 2,
  FLUSH: 3,
  /** Discard: the range reads as zeros afterwards (PUNCH_HOLE, ZERO_RANGE). */
  TRIM: 4,
} as const;

/** A request that needs the block device. Offsets/lengths are bytes, already clamped to the size. */
export interface DeviceRequest {
  code: number;
  unique: bigint;
  offset: number;
  length: number;
  /** Where the data sits in the request buffer (WRITE) or goes (READ). */
  dataAt: number;
}

/** What to do with one request. */
export type HandlerAction =
  | { kind: 'reply'; bytes: Uint8Array }
  | { kind: 'none' }
  | { kind: 'device'; request: DeviceRequest };

const NONE: HandlerAction = { kind: 'none' };

/**
 * Decodes requests and encodes replies for the one-file filesystem. Not thread-safe:
 * one handler per reader thread (each has its own reply buffer).
 */
export class FuseRequestHandler {
  readonly #config: Required<FuseFileConfig>;
  readonly #name: Uint8Array;
  readonly #out = new Uint8Array(4096);
  readonly #outView = viewOf(this.#out);
  readonly #dirAttr: Attr;
  readonly #fileAttr: Attr;
  #negotiated: InitOut | undefined;

  /**
   * `options.negotiated`: INIT was answered by an earlier server of the same connection
   * (the kernel sends INIT once); the handler starts as initialized with that reply.
   */
  constructor(config: FuseFileConfig, options: { negotiated?: InitOut } = {}) {
    const maxIo = config.maxIo ?? DEFAULT_MAX_IO;
    if (!Number.isSafeInteger(maxIo) || maxIo < FUSE_PAGE_SIZE || maxIo % FUSE_PAGE_SIZE !== 0 || maxIo > 0xffff * FUSE_PAGE_SIZE) {
      throw new RangeError(`Cannot serve FUSE: maxIo ${maxIo} is not a multiple of 4096 between 4096 and 256 MiB`);
    }
    this.#config = { ...config, maxIo };
    this.#negotiated = options.negotiated;
    this.#name = new TextEncoder().encode(config.name);
    const base = {
      size: 0,
      blocks: 0,
      atime: config.time,
      mtime: config.time,
      ctime: config.time,
      atimensec: 0,
      mtimensec: 0,
      ctimensec: 0,
      uid: config.uid,
      gid: config.gid,
      rdev: 0,
      blksize: STATFS_BLOCK,
      flags: 0,
    };
    this.#dirAttr = { ...base, ino: FUSE_ROOT_ID, mode: 0o040755, nlink: 2 };
    this.#fileAttr = {
      ...base,
      ino: FILE_NODE_ID,
      size: config.size,
      blocks: Math.ceil(config.size / 512),
      mode: config.readOnly ? 0o100444 : 0o100644,
      nlink: 1,
    };
  }

  /** The INIT reply sent, once INIT has been answered. */
  get negotiated(): InitOut | undefined {
    return this.#negotiated;
  }

  /**
   * Handles the request in `req[0, length)`. A `device` action carries offsets into
   * `req`: the caller runs it and passes the result to {@link complete}.
   */
  handle(req: Uint8Array, length: number): HandlerAction {
    const view = viewOf(req.subarray(0, length));
    let h: InHeader;
    try {
      h = decodeInHeader(view);
    } catch {
      return NONE; // Not even a header: there is no unique to answer.
    }
    try {
      return this.#dispatch(h, view, req);
    } catch {
      // A short or malformed argument (decoders throw DataCorruptionError).
      return this.#error(h, E.EINVAL);
    }
  }

  /**
   * Encodes the reply to a finished device request: `result` is the byte count (READ,
   * WRITE), 0 (FLUSH, TRIM) or a negative errno. A READ reply is built in place in
   * `req` (header at 0, data at {@link READ_DATA_AT}) so the data is never copied.
   */
  complete(request: DeviceRequest, result: number, req: Uint8Array): Uint8Array {
    if (result < 0) return this.#header(request.unique, result, 0);
    switch (request.code) {
      case DeviceOpCode.READ: {
        const len = OUT_HEADER_SIZE + result;
        encodeOutHeader(viewOf(req), len, 0, request.unique);
        return req.subarray(0, len);
      }
      case DeviceOpCode.WRITE:
        encodeWriteOut(this.#outView, OUT_HEADER_SIZE, result);
        return this.#header(request.unique, 0, WRITE_OUT_SIZE);
      default:
        return this.#header(request.unique, 0, 0);
    }
  }

  #dispatch(h: InHeader, view: DataView, req: Uint8Array): HandlerAction {
    const at = IN_HEADER_SIZE;
    switch (h.opcode) {
      case Opcode.INIT:
        return this.#init(h, view);
      case Opcode.LOOKUP:
        return this.#lookup(h, req.subarray(at, view.byteLength));
      case Opcode.GETATTR:
        return this.#attr(h);
      case Opcode.SETATTR:
        return this.#setattr(h, view);
      case Opcode.OPEN:
        return this.#open(h, view);
      case Opcode.OPENDIR:
        if (h.nodeid === FILE_NODE_ID) return this.#error(h, E.ENOTDIR);
        if (h.nodeid !== FUSE_ROOT_ID) return this.#error(h, E.ENOENT);
        encodeOpenOut(this.#outView, OUT_HEADER_SIZE, { fh: 0, openFlags: OpenFlag.CACHE_DIR });
        return this.#reply(h, OPEN_OUT_SIZE);
      case Opcode.READ:
        return this.#read(h, view);
      case Opcode.WRITE:
        return this.#write(h, view);
      case Opcode.READDIR:
      case Opcode.READDIRPLUS:
        return this.#readdir(h, view);
      case Opcode.STATFS:
        encodeKstatfs(this.#outView, OUT_HEADER_SIZE, {
          blocks: Math.ceil(this.#config.size / STATFS_BLOCK),
          bfree: 0,
          bavail: 0,
          files: 2,
          ffree: 0,
          bsize: STATFS_BLOCK,
          namelen: 255,
          frsize: STATFS_BLOCK,
        });
        return this.#reply(h, STATFS_OUT_SIZE);
      case Opcode.ACCESS: {
        const mask = view.getUint32(at, true);
        if ((mask & W_OK) !== 0 && this.#config.readOnly && h.nodeid === FILE_NODE_ID) return this.#error(h, E.EROFS);
        return this.#reply(h, 0);
      }
      case Opcode.FSYNC:
        if (h.nodeid !== FILE_NODE_ID || this.#config.readOnly) return this.#reply(h, 0);
        return this.#device(h, { code: DeviceOpCode.FLUSH, offset: 0, length: 0, dataAt: 0 });
      case Opcode.FALLOCATE:
        return this.#fallocate(h, view);
      case Opcode.FLUSH:
      case Opcode.RELEASE:
      case Opcode.RELEASEDIR:
      case Opcode.FSYNCDIR:
      case Opcode.DESTROY:
        return this.#reply(h, 0);
      case Opcode.FORGET:
      case Opcode.BATCH_FORGET:
      case Opcode.INTERRUPT:
        // No reply. Node ids are static, so forgets change nothing; interrupts are
        // ignored (legal: the interrupted request simply completes).
        return NONE;
      case Opcode.CREATE:
      case Opcode.MKNOD:
      case Opcode.MKDIR:
      case Opcode.SYMLINK:
      case Opcode.LINK:
      case Opcode.UNLINK:
      case Opcode.RMDIR:
      case Opcode.RENAME:
      case Opcode.RENAME2:
      case Opcode.TMPFILE:
        return this.#error(h, this.#config.readOnly ? E.EROFS : E.EPERM);
      default:
        return this.#error(h, E.ENOSYS);
    }
  }

  #init(h: InHeader, view: DataView): HandlerAction {
    const init = decodeInitIn(view, IN_HEADER_SIZE);
    if (init.major !== FUSE_KERNEL_VERSION || init.minor < FUSE_MIN_MINOR_VERSION) {
      if (init.major > FUSE_KERNEL_VERSION) {
        // Protocol rule: answer with our major only; the kernel retries INIT with it.
        encodeInitOut(this.#outView, OUT_HEADER_SIZE, { ...EMPTY_INIT, major: FUSE_KERNEL_VERSION });
        return this.#reply(h, INIT_OUT_SIZE);
      }
      return this.#error(h, E.EPROTO);
    }
    const wanted =
      InitFlag.ASYNC_READ | InitFlag.BIG_WRITES | InitFlag.MAX_PAGES | InitFlag.PARALLEL_DIROPS | InitFlag.ASYNC_DIO;
    const wanted2 = InitFlag2.DIRECT_IO_ALLOW_MMAP;
    const flags2 = init.flags2 & wanted2;
    const maxIo = this.#config.maxIo;
    const out: InitOut = {
      major: FUSE_KERNEL_VERSION,
      minor: Math.min(init.minor, FUSE_KERNEL_MINOR_VERSION),
      maxReadahead: init.maxReadahead,
      flags: ((init.flags & wanted) | (flags2 !== 0 ? InitFlag.INIT_EXT : 0)) >>> 0,
      maxBackground: MAX_BACKGROUND,
      congestionThreshold: (MAX_BACKGROUND * 3) / 4,
      maxWrite: maxIo,
      timeGran: 1,
      maxPages: maxIo / FUSE_PAGE_SIZE,
      flags2,
    };
    this.#negotiated = out;
    encodeInitOut(this.#outView, OUT_HEADER_SIZE, out);
    return this.#reply(h, INIT_OUT_SIZE);
  }

  #lookup(h: InHeader, arg: Uint8Array): HandlerAction {
    if (h.nodeid === FILE_NODE_ID) return this.#error(h, E.ENOTDIR);
    if (h.nodeid !== FUSE_ROOT_ID) return this.#error(h, E.ENOENT);
    const nul = arg.indexOf(0);
    const name = nul >= 0 ? arg.subarray(0, nul) : arg;
    if (!equalBytes(name, this.#name)) return this.#error(h, E.ENOENT);
    encodeEntryOut(this.#outView, OUT_HEADER_SIZE, {
      nodeid: FILE_NODE_ID,
      generation: 0,
      entryValid: VALIDITY,
      attrValid: VALIDITY,
      attr: this.#fileAttr,
    });
    return this.#reply(h, ENTRY_OUT_SIZE);
  }

  #attrOf(nodeid: number): Attr | undefined {
    if (nodeid === FUSE_ROOT_ID) return this.#dirAttr;
    if (nodeid === FILE_NODE_ID) return this.#fileAttr;
    return undefined;
  }

  #attr(h: InHeader): HandlerAction {
    const attr = this.#attrOf(h.nodeid);
    if (attr === undefined) return this.#error(h, E.ENOENT);
    encodeAttrOut(this.#outView, OUT_HEADER_SIZE, { attrValid: VALIDITY, attr });
    return this.#reply(h, ATTR_OUT_SIZE);
  }

  #setattr(h: InHeader, view: DataView): HandlerAction {
    const s = decodeSetattrIn(view, IN_HEADER_SIZE);
    if ((s.valid & SetattrValid.SIZE) !== 0) {
      if (h.nodeid === FUSE_ROOT_ID) return this.#error(h, E.EISDIR);
      // The file is a fixed-size disk image: only a no-op "resize" to its own size works.
      if (s.size !== this.#config.size) return this.#error(h, this.#config.readOnly ? E.EROFS : E.EPERM);
    }
    // Mode, owner and time changes are accepted and ignored: the attributes are static.
    return this.#attr(h);
  }

  #open(h: InHeader, view: DataView): HandlerAction {
    if (h.nodeid === FUSE_ROOT_ID) return this.#error(h, E.EISDIR);
    if (h.nodeid !== FILE_NODE_ID) return this.#error(h, E.ENOENT);
    const o = decodeOpenIn(view, IN_HEADER_SIZE);
    if (this.#config.readOnly && (o.flags & O_ACCMODE) !== fsConstants.O_RDONLY) return this.#error(h, E.EROFS);
    // NOFLUSH: close(2) sends no FLUSH (it would do nothing here). Besides a round trip per
    // close, that keeps close — and exec, which closes O_CLOEXEC files — from waiting for
    // a server: a supervisor forking the next server while a file of its mount is open
    // would otherwise wait for that very server.
    const openFlags = (this.#config.directIo ? OpenFlag.DIRECT_IO : 0) | OpenFlag.PARALLEL_DIRECT_WRITES | OpenFlag.NOFLUSH;
    encodeOpenOut(this.#outView, OUT_HEADER_SIZE, { fh: 0, openFlags });
    return this.#reply(h, OPEN_OUT_SIZE);
  }

  #read(h: InHeader, view: DataView): HandlerAction {
    if (h.nodeid !== FILE_NODE_ID) return this.#error(h, h.nodeid === FUSE_ROOT_ID ? E.EISDIR : E.ENOENT);
    const r = decodeReadWriteIn(view, IN_HEADER_SIZE);
    const length = Math.min(r.size, this.#config.maxIo, Math.max(0, this.#config.size - r.offset));
    if (length === 0) return this.#reply(h, 0); // At or past the end: EOF.
    return this.#device(h, { code: DeviceOpCode.READ, offset: r.offset, length, dataAt: READ_DATA_AT });
  }

  #write(h: InHeader, view: DataView): HandlerAction {
    if (h.nodeid !== FILE_NODE_ID) return this.#error(h, h.nodeid === FUSE_ROOT_ID ? E.EISDIR : E.ENOENT);
    const w = decodeReadWriteIn(view, IN_HEADER_SIZE);
    if (view.byteLength < WRITE_DATA_AT + w.size) return this.#error(h, E.EINVAL);
    if (this.#config.readOnly) return this.#error(h, E.EROFS);
    if (w.size === 0) return this.#written(h, 0);
    if (w.offset >= this.#config.size) return this.#error(h, E.ENOSPC);
    // A write crossing the end is shortened; the caller sees a short write, then ENOSPC.
    const length = Math.min(w.size, this.#config.size - w.offset);
    return this.#device(h, { code: DeviceOpCode.WRITE, offset: w.offset, length, dataAt: WRITE_DATA_AT });
  }

  #written(h: InHeader, n: number): HandlerAction {
    encodeWriteOut(this.#outView, OUT_HEADER_SIZE, n);
    return this.#reply(h, WRITE_OUT_SIZE);
  }

  #fallocate(h: InHeader, view: DataView): HandlerAction {
    if (h.nodeid !== FILE_NODE_ID) return this.#error(h, h.nodeid === FUSE_ROOT_ID ? E.EISDIR : E.ENOENT);
    const f = decodeFallocateIn(view, IN_HEADER_SIZE);
    const known = FallocateMode.KEEP_SIZE | FallocateMode.PUNCH_HOLE | FallocateMode.ZERO_RANGE;
    if ((f.mode & ~known) !== 0) return this.#error(h, E.EOPNOTSUPP);
    if (this.#config.readOnly) return this.#error(h, E.EROFS);
    const size = this.#config.size;
    const keepSize = (f.mode & FallocateMode.KEEP_SIZE) !== 0;
    if (!keepSize && f.offset + f.length > size) return this.#error(h, E.EOPNOTSUPP); // Cannot grow.
    const discard = (f.mode & (FallocateMode.PUNCH_HOLE | FallocateMode.ZERO_RANGE)) !== 0;
    const length = Math.min(f.length, Math.max(0, size - f.offset));
    // Plain preallocation is a no-op: every byte of the image already exists.
    if (!discard || length === 0) return this.#reply(h, 0);
    return this.#device(h, { code: DeviceOpCode.TRIM, offset: f.offset, length, dataAt: 0 });
  }

  #readdir(h: InHeader, view: DataView): HandlerAction {
    if (h.nodeid === FILE_NODE_ID) return this.#error(h, E.ENOTDIR);
    if (h.nodeid !== FUSE_ROOT_ID) return this.#error(h, E.ENOENT);
    const r = decodeReadWriteIn(view, IN_HEADER_SIZE);
    const plus = h.opcode === Opcode.READDIRPLUS;
    const entries = [
      { ino: FUSE_ROOT_ID, type: DirentType.DIR, name: DOT, attr: undefined },
      { ino: FUSE_ROOT_ID, type: DirentType.DIR, name: DOTDOT, attr: undefined },
      { ino: FILE_NODE_ID, type: DirentType.REG, name: this.#name, attr: this.#fileAttr },
    ];
    const limit = Math.min(r.size, this.#out.length - OUT_HEADER_SIZE);
    let used = 0;
    for (let i = r.offset; i < entries.length; i++) {
      const e = entries[i] as (typeof entries)[number];
      const size = (plus ? ENTRY_OUT_SIZE : 0) + direntSize(e.name.length);
      if (used + size > limit) break;
      let at = OUT_HEADER_SIZE + used;
      if (plus) {
        // nodeid 0: no lookup happened (the kernel skips "." and ".." anyway).
        const attr = e.attr ?? this.#dirAttr;
        encodeEntryOut(this.#outView, at, {
          nodeid: e.attr === undefined ? 0 : e.ino,
          generation: 0,
          entryValid: e.attr === undefined ? NO_VALIDITY : VALIDITY,
          attrValid: e.attr === undefined ? NO_VALIDITY : VALIDITY,
          attr,
        });
        at += ENTRY_OUT_SIZE;
      }
      encodeDirent(this.#outView, at, { ino: e.ino, off: i + 1, type: e.type, name: e.name });
      used += size;
    }
    return this.#reply(h, used);
  }

  #device(h: InHeader, op: Omit<DeviceRequest, 'unique'>): HandlerAction {
    return { kind: 'device', request: { ...op, unique: h.unique } };
  }

  #header(unique: bigint, error: number, bodyLength: number): Uint8Array {
    const len = OUT_HEADER_SIZE + bodyLength;
    encodeOutHeader(this.#outView, len, error, unique);
    return this.#out.subarray(0, len);
  }

  /** Reply with the body already encoded at OUT_HEADER_SIZE in the out buffer. */
  #reply(h: InHeader, bodyLength: number): HandlerAction {
    return { kind: 'reply', bytes: this.#header(h.unique, 0, bodyLength) };
  }

  #error(h: InHeader, errno: number): HandlerAction {
    return { kind: 'reply', bytes: this.#header(h.unique, -errno, 0) };
  }
}

const DOT = Uint8Array.of(0x2e);
const DOTDOT = Uint8Array.of(0x2e, 0x2e);
const EMPTY_INIT: InitOut = {
  major: 0,
  minor: 0,
  maxReadahead: 0,
  flags: 0,
  maxBackground: 0,
  congestionThreshold: 0,
  maxWrite: 0,
  timeGran: 0,
  maxPages: 0,
  flags2: 0,
};

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
