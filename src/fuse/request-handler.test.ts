import { test } from 'node:test';
import assert from 'node:assert/strict';
import { constants } from 'node:os';
import {
  DirentType,
  FUSE_UNIQUE_RESEND,
  FallocateMode,
  IN_HEADER_SIZE,
  InitFlag,
  InitFlag2,
  OUT_HEADER_SIZE,
  OpenFlag,
  Opcode,
  SetattrValid,
  decodeAttrOut,
  decodeDirent,
  decodeEntryOut,
  decodeInitOut,
  decodeKstatfs,
  decodeOpenOut,
  decodeOutHeader,
  encodeFallocateIn,
  encodeInHeader,
  encodeInitIn,
  encodeOpenIn,
  encodeReadWriteIn,
  encodeSetattrIn,
  viewOf,
} from './protocol.ts';
import { DeviceOpCode, FILE_NODE_ID, FuseRequestHandler, READ_DATA_AT, WRITE_DATA_AT } from './request-handler.ts';
import type { DeviceRequest, FuseFileConfig, HandlerAction } from './request-handler.ts';

const E = constants.errno;
const SIZE = 1 << 20;
const CONFIG: FuseFileConfig = { name: 'block', size: SIZE, readOnly: false, directIo: true, uid: 7, gid: 8, time: 1000 };

let nextUnique = 10n;

type Arg = number | [size: number, fill: (v: DataView) => void];

/** Builds a request: header + an argument of `size` bytes written by `fill` at offset 40. */
function request(opcode: number, nodeid: number, arg: Arg): Uint8Array {
  const [argSize, fill] = typeof arg === 'number' ? [arg, undefined] : arg;
  const b = new Uint8Array(IN_HEADER_SIZE + argSize);
  encodeInHeader(viewOf(b), { len: b.length, opcode, unique: nextUnique++, nodeid, uid: 0, gid: 0, pid: 1, totalExtlen: 0 });
  fill?.(viewOf(b));
  return b;
}

function handle(h: FuseRequestHandler, req: Uint8Array): HandlerAction {
  return h.handle(req, req.length);
}

/** The reply bytes, or throws when the action is not a reply. */
function reply(action: HandlerAction): { error: number; unique: bigint; body: Uint8Array } {
  assert.equal(action.kind, 'reply');
  const bytes = (action as { bytes: Uint8Array }).bytes;
  const h = decodeOutHeader(viewOf(bytes));
  assert.equal(h.len, bytes.length, 'header length is the reply length');
  return { error: h.error, unique: h.unique, body: bytes.slice(OUT_HEADER_SIZE) };
}

function deviceRequest(action: HandlerAction): DeviceRequest {
  assert.equal(action.kind, 'device');
  return (action as { request: DeviceRequest }).request;
}

function initRequest(minor: number, flags: number, flags2 = 0): Uint8Array {
  return request(Opcode.INIT, 0, [64, (v) => encodeInitIn(v, IN_HEADER_SIZE, { major: 7, minor, maxReadahead: 131072, flags, flags2 })]);
}

function nameArg(name: string): [number, (v: DataView) => void] {
  const bytes = Buffer.from(`${name}\0`);
  return [bytes.length, (v) => new Uint8Array(v.buffer, v.byteOffset + IN_HEADER_SIZE).set(bytes)];
}

test('INIT negotiates 1 MiB requests and only flags the kernel offered', () => {
  const h = new FuseRequestHandler(CONFIG);
  const offered = 0x73fffffb | InitFlag.INIT_EXT; // what Linux 6.18 offers
  const r = reply(handle(h, initRequest(45, offered, 0x5fd)));
  assert.equal(r.error, 0);
  const out = decodeInitOut(viewOf(r.body), 0);
  assert.equal(out.major, 7);
  assert.equal(out.minor, 45);
  assert.equal(out.maxWrite, 1 << 20);
  assert.equal(out.maxPages, 256);
  assert.equal(out.maxReadahead, 131072);
  for (const f of [InitFlag.ASYNC_READ, InitFlag.BIG_WRITES, InitFlag.MAX_PAGES, InitFlag.PARALLEL_DIROPS, InitFlag.ASYNC_DIO]) {
    assert.ok(out.flags & f, `flag ${f} requested`);
  }
  assert.equal(out.flags & InitFlag.WRITEBACK_CACHE, 0, 'no writeback cache');
  assert.equal(out.flags & InitFlag.ATOMIC_O_TRUNC, 0);
  assert.equal(out.flags2, InitFlag2.DIRECT_IO_ALLOW_MMAP);
  assert.ok(out.flags & InitFlag.INIT_EXT, 'flags2 is announced');
  assert.deepEqual(h.negotiated, out);

  // An older kernel that offers little gets little, and no flags2.
  const old = decodeInitOut(viewOf(reply(handle(new FuseRequestHandler(CONFIG), initRequest(31, InitFlag.ASYNC_READ | InitFlag.WRITEBACK_CACHE))).body), 0);
  assert.equal(old.minor, 31);
  assert.equal(old.flags, InitFlag.ASYNC_READ);
  assert.equal(old.flags2, 0);
});

test('INIT refuses protocols older than 7.28 and answers a newer major with 7 only', () => {
  assert.equal(reply(handle(new FuseRequestHandler(CONFIG), initRequest(27, 0))).error, -E.EPROTO);
  const req = request(Opcode.INIT, 0, [64, (v) => encodeInitIn(v, IN_HEADER_SIZE, { major: 8, minor: 0, maxReadahead: 0, flags: 0, flags2: 0 })]);
  const r = reply(handle(new FuseRequestHandler(CONFIG), req));
  assert.equal(r.error, 0);
  assert.equal(decodeInitOut(viewOf(r.body), 0).major, 7);
});

test('LOOKUP finds the file in the root and nothing else', () => {
  const h = new FuseRequestHandler(CONFIG);
  const [n, arg] = nameArg('block');
  const found = reply(handle(h, request(Opcode.LOOKUP, 1, [n, arg])));
  assert.equal(found.error, 0);
  const e = decodeEntryOut(viewOf(found.body), 0);
  assert.equal(e.nodeid, FILE_NODE_ID);
  assert.equal(e.attr.size, SIZE);
  assert.equal(e.attr.mode, 0o100644);
  assert.deepEqual([e.attr.uid, e.attr.gid, e.attr.mtime], [7, 8, 1000]);
  assert.ok(e.entryValid.sec > 0 && e.attrValid.sec > 0, 'static entries are cacheable');

  const [n2, arg2] = nameArg('blocks');
  assert.equal(reply(handle(h, request(Opcode.LOOKUP, 1, [n2, arg2]))).error, -E.ENOENT);
  assert.equal(reply(handle(h, request(Opcode.LOOKUP, FILE_NODE_ID, [n, arg]))).error, -E.ENOTDIR);
});

test('GETATTR describes the root and the file; SETATTR refuses resizing', () => {
  const h = new FuseRequestHandler(CONFIG);
  const root = decodeAttrOut(viewOf(reply(handle(h, request(Opcode.GETATTR, 1, 16))).body), 0);
  assert.equal(root.attr.mode, 0o040755);
  const file = decodeAttrOut(viewOf(reply(handle(h, request(Opcode.GETATTR, FILE_NODE_ID, 16))).body), 0);
  assert.equal(file.attr.size, SIZE);
  assert.equal(file.attr.blocks, SIZE / 512);
  assert.equal(reply(handle(h, request(Opcode.GETATTR, 99, 16))).error, -E.ENOENT);

  const setattr = (valid: number, size: number): Uint8Array =>
    request(Opcode.SETATTR, FILE_NODE_ID, [88, (v) => encodeSetattrIn(v, IN_HEADER_SIZE, { valid, fh: 0, size, mode: 0, uid: 0, gid: 0 })]);
  assert.equal(reply(handle(h, setattr(SetattrValid.SIZE, 0))).error, -E.EPERM);
  assert.equal(reply(handle(h, setattr(SetattrValid.SIZE, SIZE + 512))).error, -E.EPERM);
  const same = reply(handle(h, setattr(SetattrValid.SIZE, SIZE)));
  assert.equal(same.error, 0);
  assert.equal(decodeAttrOut(viewOf(same.body), 0).attr.size, SIZE);
  assert.equal(reply(handle(h, setattr(SetattrValid.MTIME | SetattrValid.ATIME, 0))).error, 0, 'touch works');
  const ro = new FuseRequestHandler({ ...CONFIG, readOnly: true });
  assert.equal(reply(handle(ro, setattr(SetattrValid.SIZE, 0))).error, -E.EROFS);
});

test('OPEN sets FOPEN_DIRECT_IO as configured, always FOPEN_NOFLUSH, and refuses writers on a read-only device', () => {
  const open = (flags: number): Uint8Array => request(Opcode.OPEN, FILE_NODE_ID, [8, (v) => encodeOpenIn(v, IN_HEADER_SIZE, { flags, openFlags: 0 })]);
  const direct = decodeOpenOut(viewOf(reply(handle(new FuseRequestHandler(CONFIG), open(2))).body), 0);
  assert.equal(direct.openFlags, OpenFlag.DIRECT_IO | OpenFlag.PARALLEL_DIRECT_WRITES | OpenFlag.NOFLUSH);
  const cached = decodeOpenOut(viewOf(reply(handle(new FuseRequestHandler({ ...CONFIG, directIo: false }), open(0))).body), 0);
  assert.equal(cached.openFlags, OpenFlag.PARALLEL_DIRECT_WRITES | OpenFlag.NOFLUSH);
  const ro = new FuseRequestHandler({ ...CONFIG, readOnly: true });
  assert.equal(reply(handle(ro, open(2))).error, -E.EROFS); // O_RDWR
  assert.equal(reply(handle(ro, open(1))).error, -E.EROFS); // O_WRONLY
  assert.equal(reply(handle(ro, open(0))).error, 0);
  assert.equal(reply(handle(ro, request(Opcode.OPEN, 1, 8))).error, -E.EISDIR);
});

function readReq(offset: number, size: number): Uint8Array {
  return request(Opcode.READ, FILE_NODE_ID, [40, (v) => encodeReadWriteIn(v, IN_HEADER_SIZE, { fh: 0, offset, size, rwFlags: 0, flags: 0 })]);
}

function writeReq(offset: number, data: Uint8Array): Uint8Array {
  const b = request(Opcode.WRITE, FILE_NODE_ID, [40 + data.length, (v) =>
    encodeReadWriteIn(v, IN_HEADER_SIZE, { fh: 0, offset, size: data.length, rwFlags: 0, flags: 0 }),
  ]);
  b.set(data, WRITE_DATA_AT);
  return b;
}

test('READ becomes a device read clamped to the size, answered in place', () => {
  const h = new FuseRequestHandler(CONFIG);
  const buf = new Uint8Array(READ_DATA_AT + (1 << 20) + 4096);
  const req = readReq(4096, 8192);
  buf.set(req);
  const action = h.handle(buf, req.length);
  const d = deviceRequest(action);
  assert.deepEqual({ ...d, unique: undefined }, { code: DeviceOpCode.READ, offset: 4096, length: 8192, dataAt: READ_DATA_AT, unique: undefined });
  buf.fill(0x5a, READ_DATA_AT, READ_DATA_AT + 8192); // what the device would put there
  const out = h.complete(d, 8192, buf);
  assert.equal(out.buffer, buf.buffer, 'no copy: the reply is the request buffer');
  const head = decodeOutHeader(viewOf(out));
  assert.deepEqual(head, { len: 16 + 8192, error: 0, unique: d.unique });
  assert.ok(out.subarray(16).every((b) => b === 0x5a));

  assert.equal(deviceRequest(handle(h, readReq(SIZE - 512, 4096))).length, 512, 'clamped at the end');
  const eof = reply(handle(h, readReq(SIZE, 4096)));
  assert.deepEqual([eof.error, eof.body.length], [0, 0], 'EOF is an empty reply');
  assert.equal(reply({ kind: 'reply', bytes: h.complete(d, -E.EIO, buf) }).error, -E.EIO);
});

test('WRITE becomes a device write; read-only, past-the-end and short requests fail', () => {
  const h = new FuseRequestHandler(CONFIG);
  const data = new Uint8Array(4096).fill(7);
  const req = writeReq(8192, data);
  const d = deviceRequest(handle(h, req));
  assert.deepEqual([d.code, d.offset, d.length, d.dataAt], [DeviceOpCode.WRITE, 8192, 4096, WRITE_DATA_AT]);
  assert.ok(req.subarray(d.dataAt, d.dataAt + d.length).every((b) => b === 7));
  const done = reply({ kind: 'reply', bytes: h.complete(d, 4096, req) });
  assert.equal(done.error, 0);
  assert.equal(viewOf(done.body).getUint32(0, true), 4096);

  assert.equal(deviceRequest(handle(h, writeReq(SIZE - 1024, data))).length, 1024, 'shortened at the end');
  assert.equal(reply(handle(h, writeReq(SIZE, data))).error, -E.ENOSPC);
  assert.equal(reply(handle(new FuseRequestHandler({ ...CONFIG, readOnly: true }), writeReq(0, data))).error, -E.EROFS);
  const truncated = writeReq(0, data).subarray(0, WRITE_DATA_AT + 100);
  assert.equal(reply(handle(h, truncated)).error, -E.EINVAL);
});

test('FALLOCATE punch-hole and zero-range become trims; growing is refused', () => {
  const h = new FuseRequestHandler(CONFIG);
  const fallocate = (offset: number, length: number, mode: number): Uint8Array =>
    request(Opcode.FALLOCATE, FILE_NODE_ID, [32, (v) => encodeFallocateIn(v, IN_HEADER_SIZE, { fh: 0, offset, length, mode })]);
  const punch = FallocateMode.PUNCH_HOLE | FallocateMode.KEEP_SIZE;
  const d = deviceRequest(handle(h, fallocate(4096, 65536, punch)));
  assert.deepEqual([d.code, d.offset, d.length], [DeviceOpCode.TRIM, 4096, 65536]);
  assert.equal(deviceRequest(handle(h, fallocate(0, 512, FallocateMode.ZERO_RANGE | FallocateMode.KEEP_SIZE))).code, DeviceOpCode.TRIM);
  assert.equal(deviceRequest(handle(h, fallocate(SIZE - 512, 4096, punch))).length, 512, 'clamped');
  assert.equal(reply(handle(h, fallocate(0, SIZE, 0))).error, 0, 'preallocating existing bytes is a no-op');
  assert.equal(reply(handle(h, fallocate(0, SIZE + 1, 0))).error, -E.EOPNOTSUPP);
  assert.equal(reply(handle(h, fallocate(0, 512, 0x08))).error, -E.EOPNOTSUPP, 'COLLAPSE_RANGE');
  assert.equal(reply(handle(new FuseRequestHandler({ ...CONFIG, readOnly: true }), fallocate(0, 512, punch))).error, -E.EROFS);
  const done = reply({ kind: 'reply', bytes: h.complete(d, 0, new Uint8Array(64)) });
  assert.deepEqual([done.error, done.body.length], [0, 0]);
});

test('FSYNC flushes a writable device only', () => {
  assert.equal(deviceRequest(handle(new FuseRequestHandler(CONFIG), request(Opcode.FSYNC, FILE_NODE_ID, 16))).code, DeviceOpCode.FLUSH);
  assert.equal(reply(handle(new FuseRequestHandler({ ...CONFIG, readOnly: true }), request(Opcode.FSYNC, FILE_NODE_ID, 16))).error, 0);
});

function readdir(h: FuseRequestHandler, opcode: number, range: { offset: number; size: number }): Array<{ name: string; off: number; type: number; nodeid?: number }> {
  const body = reply(handle(h, request(opcode, 1, [40, (v) => encodeReadWriteIn(v, IN_HEADER_SIZE, { fh: 0, ...range, rwFlags: 0, flags: 0 })]))).body;
  const out: Array<{ name: string; off: number; type: number; nodeid?: number }> = [];
  for (let at = 0; at < body.length; ) {
    let nodeid: number | undefined;
    if (opcode === Opcode.READDIRPLUS) {
      nodeid = decodeEntryOut(viewOf(body), at).nodeid;
      at += 128;
    }
    const { dirent, next } = decodeDirent(viewOf(body), at);
    out.push({ name: Buffer.from(dirent.name).toString(), off: dirent.off, type: dirent.type, ...(nodeid === undefined ? {} : { nodeid }) });
    at = next;
  }
  return out;
}

test('READDIR lists ., .. and the file, resumable at any offset and bounded by size', () => {
  const h = new FuseRequestHandler(CONFIG);
  assert.deepEqual(readdir(h, Opcode.READDIR, { offset: 0, size: 4096 }), [
    { name: '.', off: 1, type: DirentType.DIR },
    { name: '..', off: 2, type: DirentType.DIR },
    { name: 'block', off: 3, type: DirentType.REG },
  ]);
  assert.deepEqual(readdir(h, Opcode.READDIR, { offset: 2, size: 4096 }), [{ name: 'block', off: 3, type: DirentType.REG }]);
  assert.deepEqual(readdir(h, Opcode.READDIR, { offset: 3, size: 4096 }), []);
  assert.deepEqual(readdir(h, Opcode.READDIR, { offset: 0, size: 64 }).map((e) => e.name), ['.', '..'], 'two 32-byte entries fit in 64');
  assert.deepEqual(readdir(h, Opcode.READDIRPLUS, { offset: 0, size: 4096 }).map((e) => [e.name, e.nodeid]), [['.', 0], ['..', 0], ['block', FILE_NODE_ID]]);
  assert.equal(reply(handle(h, request(Opcode.READDIR, FILE_NODE_ID, 40))).error, -E.ENOTDIR);
});

test('STATFS, ACCESS, FLUSH, RELEASE answer from static state; FORGET and INTERRUPT get no reply', () => {
  const h = new FuseRequestHandler(CONFIG);
  const st = decodeKstatfs(viewOf(reply(handle(h, request(Opcode.STATFS, 1, 0))).body), 0);
  assert.deepEqual([st.blocks, st.bsize, st.namelen], [SIZE / 4096, 4096, 255]);
  const access = (mask: number, readOnly: boolean): number =>
    reply(handle(new FuseRequestHandler({ ...CONFIG, readOnly }), request(Opcode.ACCESS, FILE_NODE_ID, [8, (v) => v.setUint32(IN_HEADER_SIZE, mask, true)]))).error;
  assert.equal(access(2, false), 0);
  assert.equal(access(2, true), -E.EROFS);
  assert.equal(access(4, true), 0);
  for (const op of [Opcode.FLUSH, Opcode.RELEASE, Opcode.RELEASEDIR, Opcode.DESTROY]) assert.equal(reply(handle(h, request(op, FILE_NODE_ID, 24))).error, 0);
  for (const op of [Opcode.FORGET, Opcode.BATCH_FORGET, Opcode.INTERRUPT]) assert.equal(handle(h, request(op, FILE_NODE_ID, 24)).kind, 'none');
});

test('unknown opcodes get ENOSYS, namespace changes EPERM, garbage EINVAL', () => {
  const h = new FuseRequestHandler(CONFIG);
  for (const op of [Opcode.IOCTL, Opcode.STATX, Opcode.LSEEK, Opcode.GETXATTR, 99, 4096]) {
    assert.equal(reply(handle(h, request(op, FILE_NODE_ID, 64))).error, -E.ENOSYS, `opcode ${op}`);
  }
  for (const op of [Opcode.CREATE, Opcode.MKDIR, Opcode.UNLINK, Opcode.RENAME]) assert.equal(reply(handle(h, request(op, 1, 16))).error, -E.EPERM);
  assert.equal(reply(handle(h, request(Opcode.READ, FILE_NODE_ID, 8))).error, -E.EINVAL, 'READ without fuse_read_in');
  assert.equal(handle(h, new Uint8Array(20)).kind, 'none', 'no header, no reply');
});

test('a resent request (unique bit 63) is answered with its unique unchanged', () => {
  const h = new FuseRequestHandler(CONFIG);
  const req = request(Opcode.GETATTR, 1, 16);
  viewOf(req).setBigUint64(8, FUSE_UNIQUE_RESEND | 1234n, true);
  assert.equal(reply(handle(h, req)).unique, FUSE_UNIQUE_RESEND | 1234n);
});

test('the constructor rejects request sizes the kernel cannot negotiate', () => {
  assert.throws(() => new FuseRequestHandler({ ...CONFIG, maxIo: 1000 }), RangeError);
  assert.equal(decodeInitOut(viewOf(reply(handle(new FuseRequestHandler({ ...CONFIG, maxIo: 128 * 1024 }), initRequest(45, 0))).body), 0).maxPages, 32);
});
