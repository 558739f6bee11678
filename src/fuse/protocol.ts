/**
 * The FUSE kernel protocol subset this server speaks (Linux `include/uapi/linux/fuse.h`,
 * protocol 7.45): opcodes, flag bits, and a decode/encode pair per structure with all
 * offsets in one table each (STYLE.md §2). Every structure is little-endian on the
 * machines we run on (the kernel uses host order; x86-64 and arm64 are little-endian).
 *
 * A request read from `/dev/fuse` is a `fuse_in_header` followed by the opcode's
 * argument structure(s); a reply is a `fuse_out_header` followed by the opcode's
 * result structure, written with one `write(2)`. A notification is a reply with
 * `unique = 0` and the notify code in `error`.
 *
 * | structure          | size | fields (offset: name)                                                      |
 * |--------------------|-----:|----------------------------------------------------------------------------|
 * | fuse_in_header     | 40   | 0 len u32, 4 opcode u32, 8 unique u64, 16 nodeid u64, 24 uid, 28 gid, 32 pid, 36 total_extlen u16, 38 pad |
 * | fuse_out_header    | 16   | 0 len u32, 4 error s32 (-errno), 8 unique u64                              |
 * | fuse_init_in       | 64   | 0 major, 4 minor, 8 max_readahead, 12 flags, 16 flags2, 20 unused[11]      |
 * | fuse_init_out      | 64   | 0 major, 4 minor, 8 max_readahead, 12 flags, 16 max_background u16, 18 congestion_threshold u16, 20 max_write, 24 time_gran, 28 max_pages u16, 30 map_alignment u16, 32 flags2, 36 max_stack_depth, 40 request_timeout u16, 42 unused |
 * | fuse_attr          | 88   | 0 ino, 8 size, 16 blocks, 24 atime, 32 mtime, 40 ctime (u64); 48 atimensec, 52 mtimensec, 56 ctimensec, 60 mode, 64 nlink, 68 uid, 72 gid, 76 rdev, 80 blksize, 84 flags (u32) |
 * | fuse_entry_out     | 128  | 0 nodeid, 8 generation, 16 entry_valid, 24 attr_valid (u64), 32 entry_valid_nsec, 36 attr_valid_nsec, 40 attr |
 * | fuse_attr_out      | 104  | 0 attr_valid u64, 8 attr_valid_nsec, 12 dummy, 16 attr                     |
 * | fuse_setattr_in    | 88   | 0 valid, 4 pad, 8 fh, 16 size, 24 lock_owner, 32 atime, 40 mtime, 48 ctime, 56.. nsecs, 68 mode, 76 uid, 80 gid |
 * | fuse_open_in       | 8    | 0 flags, 4 open_flags                                                      |
 * | fuse_open_out      | 16   | 0 fh u64, 8 open_flags, 12 backing_id s32                                  |
 * | fuse_read_in       | 40   | 0 fh, 8 offset (u64), 16 size, 20 read_flags, 24 lock_owner u64, 32 flags, 36 pad |
 * | fuse_write_in      | 40   | same layout as fuse_read_in (write_flags); the data follows               |
 * | fuse_write_out     | 8    | 0 size, 4 pad                                                              |
 * | fuse_fsync_in      | 16   | 0 fh u64, 8 fsync_flags, 12 pad                                            |
 * | fuse_fallocate_in  | 32   | 0 fh, 8 offset, 16 length (u64), 24 mode, 28 pad                           |
 * | fuse_access_in     | 8    | 0 mask, 4 pad                                                              |
 * | fuse_kstatfs       | 80   | 0 blocks, 8 bfree, 16 bavail, 24 files, 32 ffree (u64), 40 bsize, 44 namelen, 48 frsize, 52 pad, 56 spare[6] |
 * | fuse_dirent        | 24+n | 0 ino u64, 8 off u64 (offset of the next entry), 16 namelen, 20 type, 24 name; padded to 8 |
 * | fuse_direntplus    | 128+dirent | fuse_entry_out, then fuse_dirent                                     |
 */
import { DataCorruptionError, toSafeNumber } from '../io/errors.ts';

export const FUSE_KERNEL_VERSION = 7;
/** The newest minor version whose structures this module encodes. */
export const FUSE_KERNEL_MINOR_VERSION = 45;
/** Oldest kernel minor accepted: 7.28 brought MAX_PAGES and the current init_out. */
export const FUSE_MIN_MINOR_VERSION = 28;
export const FUSE_ROOT_ID = 1;
/** The kernel refuses reads of /dev/fuse into smaller buffers. */
export const FUSE_MIN_READ_BUFFER = 8192;
/** Bit 63 of `unique` marks a request the kernel resent after FUSE_NOTIFY_RESEND. */
export const FUSE_UNIQUE_RESEND = 1n << 63n;

/** `enum fuse_opcode`. */
export const Opcode = {
  LOOKUP: 1,
  FORGET: 2,
  GETATTR: 3,
  SETATTR: 4,
  READLINK: 5,
  SYMLINK: 6,
  MKNOD: 8,
  MKDIR: 9,
  UNLINK: 10,
  RMDIR: 11,
  RENAME: 12,
  LINK: 13,
  OPEN: 14,
  READ: 15,
  WRITE: 16,
  STATFS: 17,
  RELEASE: 18,
  FSYNC: 20,
  SETXATTR: 21,
  GETXATTR: 22,
  LISTXATTR: 23,
  REMOVEXATTR: 24,
  FLUSH: 25,
  INIT: 26,
  OPENDIR: 27,
  READDIR: 28,
  RELEASEDIR: 29,
  FSYNCDIR: 30,
  GETLK: 31,
  SETLK: 32,
  SETLKW: 33,
  ACCESS: 34,
  CREATE: 35,
  INTERRUPT: 36,
  BMAP: 37,
  DESTROY: 38,
  IOCTL: 39,
  POLL: 40,
  NOTIFY_REPLY: 41,
  BATCH_FORGET: 42,
  FALLOCATE: 43,
  READDIRPLUS: 44,
  RENAME2: 45,
  LSEEK: 46,
  COPY_FILE_RANGE: 47,
  SETUPMAPPING: 48,
  REMOVEMAPPING: 49,
  SYNCFS: 50,
  TMPFILE: 51,
  STATX: 52,
  COPY_FILE_RANGE_64: 53,
} as const;

const OPCODE_NAMES = new Map<number, string>(Object.entries(Opcode).map(([k, v]) => [v, k]));

/** `LOOKUP`, `READ`, … or `OPCODE_<n>` for numbers this module does not name. */
export function opcodeName(opcode: number): string {
  return OPCODE_NAMES.get(opcode) ?? `OPCODE_${opcode}`;
}

/** `enum fuse_notify_code` (sent by the server with `unique = 0`). */
export const NotifyCode = {
  POLL: 1,
  INVAL_INODE: 2,
  INVAL_ENTRY: 3,
  STORE: 4,
  RETRIEVE: 5,
  DELETE: 6,
  /** Kernel ≥ 6.9 (7.40): requeue every request the server has read but not answered. */
  RESEND: 7,
  INC_EPOCH: 8,
} as const;

/** INIT flags, bits 0-31 (`fuse_init_in.flags` / `fuse_init_out.flags`). */
export const InitFlag = {
  ASYNC_READ: 1 << 0,
  POSIX_LOCKS: 1 << 1,
  ATOMIC_O_TRUNC: 1 << 3,
  EXPORT_SUPPORT: 1 << 4,
  BIG_WRITES: 1 << 5,
  DONT_MASK: 1 << 6,
  FLOCK_LOCKS: 1 << 10,
  AUTO_INVAL_DATA: 1 << 12,
  DO_READDIRPLUS: 1 << 13,
  READDIRPLUS_AUTO: 1 << 14,
  ASYNC_DIO: 1 << 15,
  WRITEBACK_CACHE: 1 << 16,
  NO_OPEN_SUPPORT: 1 << 17,
  PARALLEL_DIROPS: 1 << 18,
  HANDLE_KILLPRIV: 1 << 19,
  ABORT_ERROR: 1 << 21,
  MAX_PAGES: 1 << 22,
  NO_OPENDIR_SUPPORT: 1 << 24,
  EXPLICIT_INVAL_DATA: 1 << 25,
  /** `flags2` is valid (in both directions). */
  INIT_EXT: 1 << 30,
} as const;

/** INIT flags, bits 32-63, as bits of `flags2`. */
export const InitFlag2 = {
  SECURITY_CTX: 1 << 0,
  HAS_INODE_DAX: 1 << 1,
  CREATE_SUPP_GROUP: 1 << 2,
  HAS_EXPIRE_ONLY: 1 << 3,
  DIRECT_IO_ALLOW_MMAP: 1 << 4,
  PASSTHROUGH: 1 << 5,
  NO_EXPORT_SUPPORT: 1 << 6,
  /** Kernel understands FUSE_NOTIFY_RESEND. */
  HAS_RESEND: 1 << 7,
  ALLOW_IDMAP: 1 << 8,
  OVER_IO_URING: 1 << 9,
  REQUEST_TIMEOUT: 1 << 10,
} as const;

/** `fuse_open_out.open_flags`. */
export const OpenFlag = {
  DIRECT_IO: 1 << 0,
  KEEP_CACHE: 1 << 1,
  NONSEEKABLE: 1 << 2,
  CACHE_DIR: 1 << 3,
  STREAM: 1 << 4,
  NOFLUSH: 1 << 5,
  PARALLEL_DIRECT_WRITES: 1 << 6,
} as const;

/** `fuse_setattr_in.valid`. */
export const SetattrValid = {
  MODE: 1 << 0,
  UID: 1 << 1,
  GID: 1 << 2,
  SIZE: 1 << 3,
  ATIME: 1 << 4,
  MTIME: 1 << 5,
  FH: 1 << 6,
  ATIME_NOW: 1 << 7,
  MTIME_NOW: 1 << 8,
  LOCKOWNER: 1 << 9,
  CTIME: 1 << 10,
  KILL_SUIDGID: 1 << 11,
} as const;

/** `fallocate(2)` modes the kernel forwards (fuse_file_fallocate accepts only these). */
export const FallocateMode = {
  KEEP_SIZE: 0x01,
  PUNCH_HOLE: 0x02,
  ZERO_RANGE: 0x10,
} as const;

/** `d_type` values used in directory entries. */
export const DirentType = { DIR: 4, REG: 8 } as const;

export const IN_HEADER_SIZE = 40;
export const OUT_HEADER_SIZE = 16;
export const INIT_IN_SIZE = 64;
/** Kernels before 7.36 sent only major, minor, max_readahead and flags. */
export const INIT_IN_COMPAT_SIZE = 16;
export const INIT_OUT_SIZE = 64;
export const ATTR_SIZE = 88;
export const ENTRY_OUT_SIZE = 128;
export const ATTR_OUT_SIZE = 104;
export const GETATTR_IN_SIZE = 16;
export const SETATTR_IN_SIZE = 88;
export const OPEN_IN_SIZE = 8;
export const OPEN_OUT_SIZE = 16;
export const READ_IN_SIZE = 40;
export const WRITE_IN_SIZE = 40;
export const WRITE_OUT_SIZE = 8;
export const FSYNC_IN_SIZE = 16;
export const FALLOCATE_IN_SIZE = 32;
export const ACCESS_IN_SIZE = 8;
export const STATFS_OUT_SIZE = 80;
export const DIRENT_HEADER_SIZE = 24;
export const BATCH_FORGET_IN_SIZE = 8;

const IN = { len: 0, opcode: 4, unique: 8, nodeid: 16, uid: 24, gid: 28, pid: 32, totalExtlen: 36 } as const;
const OUT = { len: 0, error: 4, unique: 8 } as const;
const INIT_IN = { major: 0, minor: 4, maxReadahead: 8, flags: 12, flags2: 16 } as const;
const INIT_OUT = {
  major: 0,
  minor: 4,
  maxReadahead: 8,
  flags: 12,
  maxBackground: 16,
  congestionThreshold: 18,
  maxWrite: 20,
  timeGran: 24,
  maxPages: 28,
  mapAlignment: 30,
  flags2: 32,
  maxStackDepth: 36,
  requestTimeout: 40,
} as const;
const ATTR = {
  ino: 0,
  size: 8,
  blocks: 16,
  atime: 24,
  mtime: 32,
  ctime: 40,
  atimensec: 48,
  mtimensec: 52,
  ctimensec: 56,
  mode: 60,
  nlink: 64,
  uid: 68,
  gid: 72,
  rdev: 76,
  blksize: 80,
  flags: 84,
} as const;
const ENTRY_OUT = { nodeid: 0, generation: 8, entryValid: 16, attrValid: 24, entryValidNsec: 32, attrValidNsec: 36, attr: 40 } as const;
const ATTR_OUT = { attrValid: 0, attrValidNsec: 8, attr: 16 } as const;
const SETATTR_IN = { valid: 0, fh: 8, size: 16, mode: 68, uid: 76, gid: 80 } as const;
const OPEN_IN = { flags: 0, openFlags: 4 } as const;
const OPEN_OUT = { fh: 0, openFlags: 8, backingId: 12 } as const;
const RW_IN = { fh: 0, offset: 8, size: 16, rwFlags: 20, lockOwner: 24, flags: 32 } as const;
const FSYNC_IN = { fh: 0, fsyncFlags: 8 } as const;
const FALLOCATE_IN = { fh: 0, offset: 8, length: 16, mode: 24 } as const;
const KSTATFS = { blocks: 0, bfree: 8, bavail: 16, files: 24, ffree: 32, bsize: 40, namelen: 44, frsize: 48 } as const;
const DIRENT = { ino: 0, off: 8, namelen: 16, type: 20, name: 24 } as const;

/** A DataView over exactly `bytes` (the view every codec takes). */
export function viewOf(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

// eslint-disable-next-line max-params -- a bounds check names the structure it guards
function need(view: DataView, at: number, size: number, what: string): void {
  if (at < 0 || at + size > view.byteLength) {
    throw new DataCorruptionError(`Cannot decode ${what}: ${size} bytes wanted at offset ${at}, request has ${view.byteLength}`);
  }
}

function u64(view: DataView, at: number, what: string): number {
  return toSafeNumber(view.getBigUint64(at, true), what);
}

function putU64(view: DataView, at: number, value: number): void {
  view.setBigUint64(at, BigInt(value), true);
}

/** `fuse_in_header`. */
export interface InHeader {
  /** Total request length including this header. */
  len: number;
  opcode: number;
  /** Request id, echoed in the reply (bit 63 set on a resent request). */
  unique: bigint;
  nodeid: number;
  uid: number;
  gid: number;
  pid: number;
  /** Length of extension headers after the argument, in units of 8 bytes. */
  totalExtlen: number;
}

/** Reads `fuse_in_header` at the start of `view`; DataCorruptionError when the bytes are short. */
export function decodeInHeader(view: DataView): InHeader {
  need(view, 0, IN_HEADER_SIZE, 'fuse_in_header');
  return {
    len: view.getUint32(IN.len, true),
    opcode: view.getUint32(IN.opcode, true),
    unique: view.getBigUint64(IN.unique, true),
    nodeid: u64(view, IN.nodeid, 'fuse_in_header.nodeid'),
    uid: view.getUint32(IN.uid, true),
    gid: view.getUint32(IN.gid, true),
    pid: view.getUint32(IN.pid, true),
    totalExtlen: view.getUint16(IN.totalExtlen, true),
  };
}

/** Writes `fuse_in_header` at the start of `view`. */
export function encodeInHeader(view: DataView, h: InHeader): void {
  need(view, 0, IN_HEADER_SIZE, 'fuse_in_header');
  view.setUint32(IN.len, h.len, true);
  view.setUint32(IN.opcode, h.opcode, true);
  view.setBigUint64(IN.unique, h.unique, true);
  putU64(view, IN.nodeid, h.nodeid);
  view.setUint32(IN.uid, h.uid, true);
  view.setUint32(IN.gid, h.gid, true);
  view.setUint32(IN.pid, h.pid, true);
  view.setUint16(IN.totalExtlen, h.totalExtlen, true);
  view.setUint16(IN.totalExtlen + 2, 0, true);
}

/** `fuse_out_header`. `error` is 0 or a negative errno; a notification has `unique = 0n`. */
export interface OutHeader {
  len: number;
  error: number;
  unique: bigint;
}

/** Writes `fuse_out_header` at the start of `view`: `len` is the whole reply, `error` 0 or -errno. */
// eslint-disable-next-line max-params -- the hot path writes a header per reply without allocating
export function encodeOutHeader(view: DataView, len: number, error: number, unique: bigint): void {
  view.setUint32(OUT.len, len, true);
  view.setInt32(OUT.error, error, true);
  view.setBigUint64(OUT.unique, unique, true);
}

/** Reads `fuse_out_header` at the start of `view`; DataCorruptionError when the bytes are short. */
export function decodeOutHeader(view: DataView): OutHeader {
  need(view, 0, OUT_HEADER_SIZE, 'fuse_out_header');
  return { len: view.getUint32(OUT.len, true), error: view.getInt32(OUT.error, true), unique: view.getBigUint64(OUT.unique, true) };
}

/** `fuse_init_in`. `flags2` is 0 unless the kernel set INIT_EXT. */
export interface InitIn {
  major: number;
  minor: number;
  maxReadahead: number;
  flags: number;
  flags2: number;
}

/** Reads `fuse_init_in` at byte `at` of `view`; DataCorruptionError when the bytes are short. */
export function decodeInitIn(view: DataView, at: number): InitIn {
  need(view, at, INIT_IN_COMPAT_SIZE, 'fuse_init_in');
  const flags = view.getUint32(at + INIT_IN.flags, true);
  const hasExt = (flags & InitFlag.INIT_EXT) !== 0 && at + INIT_IN.flags2 + 4 <= view.byteLength;
  return {
    major: view.getUint32(at + INIT_IN.major, true),
    minor: view.getUint32(at + INIT_IN.minor, true),
    maxReadahead: view.getUint32(at + INIT_IN.maxReadahead, true),
    flags: flags >>> 0,
    flags2: hasExt ? view.getUint32(at + INIT_IN.flags2, true) : 0,
  };
}

/** Writes `fuse_init_in` at byte `at` of `view` (throws DataCorruptionError when it does not fit). */
export function encodeInitIn(view: DataView, at: number, v: InitIn): void {
  need(view, at, INIT_IN_SIZE, 'fuse_init_in');
  new Uint8Array(view.buffer, view.byteOffset + at, INIT_IN_SIZE).fill(0);
  view.setUint32(at + INIT_IN.major, v.major, true);
  view.setUint32(at + INIT_IN.minor, v.minor, true);
  view.setUint32(at + INIT_IN.maxReadahead, v.maxReadahead, true);
  view.setUint32(at + INIT_IN.flags, v.flags >>> 0, true);
  view.setUint32(at + INIT_IN.flags2, v.flags2 >>> 0, true);
}

/** `fuse_init_out`. */
export interface InitOut {
  major: number;
  minor: number;
  maxReadahead: number;
  flags: number;
  maxBackground: number;
  congestionThreshold: number;
  /** Largest WRITE payload in bytes. */
  maxWrite: number;
  /** Timestamp granularity in ns. */
  timeGran: number;
  /** Largest READ/WRITE in pages (with InitFlag.MAX_PAGES). */
  maxPages: number;
  flags2: number;
}

/** Writes `fuse_init_out` at byte `at` of `view` (throws DataCorruptionError when it does not fit). */
export function encodeInitOut(view: DataView, at: number, v: InitOut): void {
  need(view, at, INIT_OUT_SIZE, 'fuse_init_out');
  new Uint8Array(view.buffer, view.byteOffset + at, INIT_OUT_SIZE).fill(0);
  view.setUint32(at + INIT_OUT.major, v.major, true);
  view.setUint32(at + INIT_OUT.minor, v.minor, true);
  view.setUint32(at + INIT_OUT.maxReadahead, v.maxReadahead, true);
  view.setUint32(at + INIT_OUT.flags, v.flags >>> 0, true);
  view.setUint16(at + INIT_OUT.maxBackground, v.maxBackground, true);
  view.setUint16(at + INIT_OUT.congestionThreshold, v.congestionThreshold, true);
  view.setUint32(at + INIT_OUT.maxWrite, v.maxWrite, true);
  view.setUint32(at + INIT_OUT.timeGran, v.timeGran, true);
  view.setUint16(at + INIT_OUT.maxPages, v.maxPages, true);
  view.setUint32(at + INIT_OUT.flags2, v.flags2 >>> 0, true);
}

/** Reads `fuse_init_out` at byte `at` of `view`; DataCorruptionError when the bytes are short. */
export function decodeInitOut(view: DataView, at: number): InitOut {
  need(view, at, INIT_OUT_SIZE, 'fuse_init_out');
  return {
    major: view.getUint32(at + INIT_OUT.major, true),
    minor: view.getUint32(at + INIT_OUT.minor, true),
    maxReadahead: view.getUint32(at + INIT_OUT.maxReadahead, true),
    flags: view.getUint32(at + INIT_OUT.flags, true),
    maxBackground: view.getUint16(at + INIT_OUT.maxBackground, true),
    congestionThreshold: view.getUint16(at + INIT_OUT.congestionThreshold, true),
    maxWrite: view.getUint32(at + INIT_OUT.maxWrite, true),
    timeGran: view.getUint32(at + INIT_OUT.timeGran, true),
    maxPages: view.getUint16(at + INIT_OUT.maxPages, true),
    flags2: view.getUint32(at + INIT_OUT.flags2, true),
  };
}

/** `fuse_attr`. Times are whole seconds plus nanoseconds. */
export interface Attr {
  ino: number;
  size: number;
  blocks: number;
  atime: number;
  mtime: number;
  ctime: number;
  atimensec: number;
  mtimensec: number;
  ctimensec: number;
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  rdev: number;
  blksize: number;
  flags: number;
}

/** Writes `fuse_attr` at byte `at` of `view` (throws DataCorruptionError when it does not fit). */
export function encodeAttr(view: DataView, at: number, a: Attr): void {
  need(view, at, ATTR_SIZE, 'fuse_attr');
  putU64(view, at + ATTR.ino, a.ino);
  putU64(view, at + ATTR.size, a.size);
  putU64(view, at + ATTR.blocks, a.blocks);
  putU64(view, at + ATTR.atime, a.atime);
  putU64(view, at + ATTR.mtime, a.mtime);
  putU64(view, at + ATTR.ctime, a.ctime);
  view.setUint32(at + ATTR.atimensec, a.atimensec, true);
  view.setUint32(at + ATTR.mtimensec, a.mtimensec, true);
  view.setUint32(at + ATTR.ctimensec, a.ctimensec, true);
  view.setUint32(at + ATTR.mode, a.mode, true);
  view.setUint32(at + ATTR.nlink, a.nlink, true);
  view.setUint32(at + ATTR.uid, a.uid, true);
  view.setUint32(at + ATTR.gid, a.gid, true);
  view.setUint32(at + ATTR.rdev, a.rdev, true);
  view.setUint32(at + ATTR.blksize, a.blksize, true);
  view.setUint32(at + ATTR.flags, a.flags, true);
}

/** Reads `fuse_attr` at byte `at` of `view`; DataCorruptionError when the bytes are short. */
export function decodeAttr(view: DataView, at: number): Attr {
  need(view, at, ATTR_SIZE, 'fuse_attr');
  return {
    ino: u64(view, at + ATTR.ino, 'fuse_attr.ino'),
    size: u64(view, at + ATTR.size, 'fuse_attr.size'),
    blocks: u64(view, at + ATTR.blocks, 'fuse_attr.blocks'),
    atime: u64(view, at + ATTR.atime, 'fuse_attr.atime'),
    mtime: u64(view, at + ATTR.mtime, 'fuse_attr.mtime'),
    ctime: u64(view, at + ATTR.ctime, 'fuse_attr.ctime'),
    atimensec: view.getUint32(at + ATTR.atimensec, true),
    mtimensec: view.getUint32(at + ATTR.mtimensec, true),
    ctimensec: view.getUint32(at + ATTR.ctimensec, true),
    mode: view.getUint32(at + ATTR.mode, true),
    nlink: view.getUint32(at + ATTR.nlink, true),
    uid: view.getUint32(at + ATTR.uid, true),
    gid: view.getUint32(at + ATTR.gid, true),
    rdev: view.getUint32(at + ATTR.rdev, true),
    blksize: view.getUint32(at + ATTR.blksize, true),
    flags: view.getUint32(at + ATTR.flags, true),
  };
}

/** Cache lifetime of a name or attributes, as seconds + nanoseconds. */
export interface Validity {
  sec: number;
  nsec: number;
}

/** `fuse_entry_out`. `nodeid = 0` in READDIRPLUS means "no entry data". */
export interface EntryOut {
  nodeid: number;
  generation: number;
  entryValid: Validity;
  attrValid: Validity;
  attr: Attr;
}

/** Writes `fuse_entry_out` at byte `at` of `view` (throws DataCorruptionError when it does not fit). */
export function encodeEntryOut(view: DataView, at: number, e: EntryOut): void {
  need(view, at, ENTRY_OUT_SIZE, 'fuse_entry_out');
  putU64(view, at + ENTRY_OUT.nodeid, e.nodeid);
  putU64(view, at + ENTRY_OUT.generation, e.generation);
  putU64(view, at + ENTRY_OUT.entryValid, e.entryValid.sec);
  putU64(view, at + ENTRY_OUT.attrValid, e.attrValid.sec);
  view.setUint32(at + ENTRY_OUT.entryValidNsec, e.entryValid.nsec, true);
  view.setUint32(at + ENTRY_OUT.attrValidNsec, e.attrValid.nsec, true);
  encodeAttr(view, at + ENTRY_OUT.attr, e.attr);
}

/** Reads `fuse_entry_out` at byte `at` of `view`; DataCorruptionError when the bytes are short. */
export function decodeEntryOut(view: DataView, at: number): EntryOut {
  need(view, at, ENTRY_OUT_SIZE, 'fuse_entry_out');
  return {
    nodeid: u64(view, at + ENTRY_OUT.nodeid, 'fuse_entry_out.nodeid'),
    generation: u64(view, at + ENTRY_OUT.generation, 'fuse_entry_out.generation'),
    entryValid: { sec: u64(view, at + ENTRY_OUT.entryValid, 'entry_valid'), nsec: view.getUint32(at + ENTRY_OUT.entryValidNsec, true) },
    attrValid: { sec: u64(view, at + ENTRY_OUT.attrValid, 'attr_valid'), nsec: view.getUint32(at + ENTRY_OUT.attrValidNsec, true) },
    attr: decodeAttr(view, at + ENTRY_OUT.attr),
  };
}

/** `fuse_attr_out`. */
export interface AttrOut {
  attrValid: Validity;
  attr: Attr;
}

/** Writes `fuse_attr_out` at byte `at` of `view` (throws DataCorruptionError when it does not fit). */
export function encodeAttrOut(view: DataView, at: number, a: AttrOut): void {
  need(view, at, ATTR_OUT_SIZE, 'fuse_attr_out');
  putU64(view, at + ATTR_OUT.attrValid, a.attrValid.sec);
  view.setUint32(at + ATTR_OUT.attrValidNsec, a.attrValid.nsec, true);
  view.setUint32(at + ATTR_OUT.attrValidNsec + 4, 0, true);
  encodeAttr(view, at + ATTR_OUT.attr, a.attr);
}

/** Reads `fuse_attr_out` at byte `at` of `view`; DataCorruptionError when the bytes are short. */
export function decodeAttrOut(view: DataView, at: number): AttrOut {
  need(view, at, ATTR_OUT_SIZE, 'fuse_attr_out');
  return {
    attrValid: { sec: u64(view, at + ATTR_OUT.attrValid, 'attr_valid'), nsec: view.getUint32(at + ATTR_OUT.attrValidNsec, true) },
    attr: decodeAttr(view, at + ATTR_OUT.attr),
  };
}

/** The `fuse_setattr_in` fields this server looks at. */
export interface SetattrIn {
  valid: number;
  fh: number;
  size: number;
  mode: number;
  uid: number;
  gid: number;
}

/** Reads `fuse_setattr_in` at byte `at` of `view`; DataCorruptionError when the bytes are short. */
export function decodeSetattrIn(view: DataView, at: number): SetattrIn {
  need(view, at, SETATTR_IN_SIZE, 'fuse_setattr_in');
  return {
    valid: view.getUint32(at + SETATTR_IN.valid, true),
    fh: u64(view, at + SETATTR_IN.fh, 'fuse_setattr_in.fh'),
    size: u64(view, at + SETATTR_IN.size, 'fuse_setattr_in.size'),
    mode: view.getUint32(at + SETATTR_IN.mode, true),
    uid: view.getUint32(at + SETATTR_IN.uid, true),
    gid: view.getUint32(at + SETATTR_IN.gid, true),
  };
}

/** Writes `fuse_setattr_in` at byte `at` of `view` (throws DataCorruptionError when it does not fit). */
export function encodeSetattrIn(view: DataView, at: number, s: SetattrIn): void {
  need(view, at, SETATTR_IN_SIZE, 'fuse_setattr_in');
  new Uint8Array(view.buffer, view.byteOffset + at, SETATTR_IN_SIZE).fill(0);
  view.setUint32(at + SETATTR_IN.valid, s.valid, true);
  putU64(view, at + SETATTR_IN.fh, s.fh);
  putU64(view, at + SETATTR_IN.size, s.size);
  view.setUint32(at + SETATTR_IN.mode, s.mode, true);
  view.setUint32(at + SETATTR_IN.uid, s.uid, true);
  view.setUint32(at + SETATTR_IN.gid, s.gid, true);
}

/** `fuse_open_in`: `flags` are the open(2) flags (O_ACCMODE in the low bits). */
export interface OpenIn {
  flags: number;
  openFlags: number;
}

/** Reads `fuse_open_in` at byte `at` of `view`; DataCorruptionError when the bytes are short. */
export function decodeOpenIn(view: DataView, at: number): OpenIn {
  need(view, at, OPEN_IN_SIZE, 'fuse_open_in');
  return { flags: view.getUint32(at + OPEN_IN.flags, true), openFlags: view.getUint32(at + OPEN_IN.openFlags, true) };
}

/** Writes `fuse_open_in` at byte `at` of `view` (throws DataCorruptionError when it does not fit). */
export function encodeOpenIn(view: DataView, at: number, o: OpenIn): void {
  need(view, at, OPEN_IN_SIZE, 'fuse_open_in');
  view.setUint32(at + OPEN_IN.flags, o.flags, true);
  view.setUint32(at + OPEN_IN.openFlags, o.openFlags, true);
}

/** `fuse_open_out`. */
export interface OpenOut {
  fh: number;
  openFlags: number;
}

/** Writes `fuse_open_out` at byte `at` of `view` (throws DataCorruptionError when it does not fit). */
export function encodeOpenOut(view: DataView, at: number, o: OpenOut): void {
  need(view, at, OPEN_OUT_SIZE, 'fuse_open_out');
  putU64(view, at + OPEN_OUT.fh, o.fh);
  view.setUint32(at + OPEN_OUT.openFlags, o.openFlags, true);
  view.setInt32(at + OPEN_OUT.backingId, 0, true);
}

/** Reads `fuse_open_out` at byte `at` of `view`; DataCorruptionError when the bytes are short. */
export function decodeOpenOut(view: DataView, at: number): OpenOut {
  need(view, at, OPEN_OUT_SIZE, 'fuse_open_out');
  return { fh: u64(view, at + OPEN_OUT.fh, 'fuse_open_out.fh'), openFlags: view.getUint32(at + OPEN_OUT.openFlags, true) };
}

/** `fuse_read_in` / `fuse_write_in` (same layout; `rwFlags` is read_flags or write_flags). */
export interface ReadWriteIn {
  fh: number;
  offset: number;
  size: number;
  rwFlags: number;
  flags: number;
}

/** Reads `fuse_read_in/fuse_write_in` at byte `at` of `view`; DataCorruptionError when the bytes are short. */
export function decodeReadWriteIn(view: DataView, at: number): ReadWriteIn {
  need(view, at, READ_IN_SIZE, 'fuse_read_in');
  return {
    fh: u64(view, at + RW_IN.fh, 'fuse_read_in.fh'),
    offset: u64(view, at + RW_IN.offset, 'fuse_read_in.offset'),
    size: view.getUint32(at + RW_IN.size, true),
    rwFlags: view.getUint32(at + RW_IN.rwFlags, true),
    flags: view.getUint32(at + RW_IN.flags, true),
  };
}

/** Writes `fuse_read_in/fuse_write_in` at byte `at` of `view` (throws DataCorruptionError when it does not fit). */
export function encodeReadWriteIn(view: DataView, at: number, r: ReadWriteIn): void {
  need(view, at, READ_IN_SIZE, 'fuse_read_in');
  new Uint8Array(view.buffer, view.byteOffset + at, READ_IN_SIZE).fill(0);
  putU64(view, at + RW_IN.fh, r.fh);
  putU64(view, at + RW_IN.offset, r.offset);
  view.setUint32(at + RW_IN.size, r.size, true);
  view.setUint32(at + RW_IN.rwFlags, r.rwFlags, true);
  view.setUint32(at + RW_IN.flags, r.flags, true);
}

/** Writes `fuse_write_out` at byte `at` of `view` (throws DataCorruptionError when it does not fit). */
export function encodeWriteOut(view: DataView, at: number, size: number): void {
  need(view, at, WRITE_OUT_SIZE, 'fuse_write_out');
  view.setUint32(at, size, true);
  view.setUint32(at + 4, 0, true);
}

/** `fuse_fsync_in`. */
export interface FsyncIn {
  fh: number;
  fsyncFlags: number;
}

/** Reads `fuse_fsync_in` at byte `at` of `view`; DataCorruptionError when the bytes are short. */
export function decodeFsyncIn(view: DataView, at: number): FsyncIn {
  need(view, at, FSYNC_IN_SIZE, 'fuse_fsync_in');
  return { fh: u64(view, at + FSYNC_IN.fh, 'fuse_fsync_in.fh'), fsyncFlags: view.getUint32(at + FSYNC_IN.fsyncFlags, true) };
}

/** `fuse_fallocate_in`. */
export interface FallocateIn {
  fh: number;
  offset: number;
  length: number;
  mode: number;
}

/** Reads `fuse_fallocate_in` at byte `at` of `view`; DataCorruptionError when the bytes are short. */
export function decodeFallocateIn(view: DataView, at: number): FallocateIn {
  need(view, at, FALLOCATE_IN_SIZE, 'fuse_fallocate_in');
  return {
    fh: u64(view, at + FALLOCATE_IN.fh, 'fuse_fallocate_in.fh'),
    offset: u64(view, at + FALLOCATE_IN.offset, 'fuse_fallocate_in.offset'),
    length: u64(view, at + FALLOCATE_IN.length, 'fuse_fallocate_in.length'),
    mode: view.getUint32(at + FALLOCATE_IN.mode, true),
  };
}

/** Writes `fuse_fallocate_in` at byte `at` of `view` (throws DataCorruptionError when it does not fit). */
export function encodeFallocateIn(view: DataView, at: number, f: FallocateIn): void {
  need(view, at, FALLOCATE_IN_SIZE, 'fuse_fallocate_in');
  putU64(view, at + FALLOCATE_IN.fh, f.fh);
  putU64(view, at + FALLOCATE_IN.offset, f.offset);
  putU64(view, at + FALLOCATE_IN.length, f.length);
  view.setUint32(at + FALLOCATE_IN.mode, f.mode, true);
  view.setUint32(at + FALLOCATE_IN.mode + 4, 0, true);
}

/** `fuse_kstatfs` (the body of `fuse_statfs_out`). */
export interface Kstatfs {
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  bsize: number;
  namelen: number;
  frsize: number;
}

/** Writes `fuse_kstatfs` at byte `at` of `view` (throws DataCorruptionError when it does not fit). */
export function encodeKstatfs(view: DataView, at: number, s: Kstatfs): void {
  need(view, at, STATFS_OUT_SIZE, 'fuse_kstatfs');
  new Uint8Array(view.buffer, view.byteOffset + at, STATFS_OUT_SIZE).fill(0);
  putU64(view, at + KSTATFS.blocks, s.blocks);
  putU64(view, at + KSTATFS.bfree, s.bfree);
  putU64(view, at + KSTATFS.bavail, s.bavail);
  putU64(view, at + KSTATFS.files, s.files);
  putU64(view, at + KSTATFS.ffree, s.ffree);
  view.setUint32(at + KSTATFS.bsize, s.bsize, true);
  view.setUint32(at + KSTATFS.namelen, s.namelen, true);
  view.setUint32(at + KSTATFS.frsize, s.frsize, true);
}

/** Reads `fuse_kstatfs` at byte `at` of `view`; DataCorruptionError when the bytes are short. */
export function decodeKstatfs(view: DataView, at: number): Kstatfs {
  need(view, at, STATFS_OUT_SIZE, 'fuse_kstatfs');
  return {
    blocks: u64(view, at + KSTATFS.blocks, 'blocks'),
    bfree: u64(view, at + KSTATFS.bfree, 'bfree'),
    bavail: u64(view, at + KSTATFS.bavail, 'bavail'),
    files: u64(view, at + KSTATFS.files, 'files'),
    ffree: u64(view, at + KSTATFS.ffree, 'ffree'),
    bsize: view.getUint32(at + KSTATFS.bsize, true),
    namelen: view.getUint32(at + KSTATFS.namelen, true),
    frsize: view.getUint32(at + KSTATFS.frsize, true),
  };
}

/** One directory entry (`fuse_dirent`); `off` is the READDIR offset of the entry after it. */
export interface Dirent {
  ino: number;
  off: number;
  type: number;
  name: Uint8Array;
}

/** Bytes a `fuse_dirent` with an `n`-byte name takes, padded to 8 (FUSE_DIRENT_SIZE). */
export function direntSize(nameLength: number): number {
  return (DIRENT_HEADER_SIZE + nameLength + 7) & ~7;
}

/** Writes a `fuse_dirent` (zero padding included) and returns its size. */
export function encodeDirent(view: DataView, at: number, d: Dirent): number {
  const size = direntSize(d.name.length);
  need(view, at, size, 'fuse_dirent');
  putU64(view, at + DIRENT.ino, d.ino);
  putU64(view, at + DIRENT.off, d.off);
  view.setUint32(at + DIRENT.namelen, d.name.length, true);
  view.setUint32(at + DIRENT.type, d.type, true);
  const bytes = new Uint8Array(view.buffer, view.byteOffset + at, size);
  bytes.set(d.name, DIRENT.name);
  bytes.fill(0, DIRENT.name + d.name.length);
  return size;
}

/** Decodes the `fuse_dirent` at `at`; returns it and the offset of the next one. */
export function decodeDirent(view: DataView, at: number): { dirent: Dirent; next: number } {
  need(view, at, DIRENT_HEADER_SIZE, 'fuse_dirent');
  const namelen = view.getUint32(at + DIRENT.namelen, true);
  need(view, at, DIRENT_HEADER_SIZE + namelen, 'fuse_dirent name');
  const name = new Uint8Array(view.buffer, view.byteOffset + at + DIRENT.name, namelen).slice();
  return {
    dirent: {
      ino: u64(view, at + DIRENT.ino, 'fuse_dirent.ino'),
      off: u64(view, at + DIRENT.off, 'fuse_dirent.off'),
      type: view.getUint32(at + DIRENT.type, true),
      name,
    },
    next: at + direntSize(namelen),
  };
}

/** Encodes the FUSE_NOTIFY_RESEND notification (a bare header; kernel ≥ 6.9). */
export function encodeNotifyResend(view: DataView): number {
  encodeOutHeader(view, OUT_HEADER_SIZE, NotifyCode.RESEND, 0n);
  return OUT_HEADER_SIZE;
}
