import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  ATTR_OUT_SIZE,
  ATTR_SIZE,
  DIRENT_HEADER_SIZE,
  ENTRY_OUT_SIZE,
  FUSE_UNIQUE_RESEND,
  IN_HEADER_SIZE,
  INIT_OUT_SIZE,
  InitFlag,
  InitFlag2,
  NotifyCode,
  OPEN_OUT_SIZE,
  Opcode,
  STATFS_OUT_SIZE,
  decodeAttr,
  decodeAttrOut,
  decodeDirent,
  decodeEntryOut,
  decodeFallocateIn,
  decodeInHeader,
  decodeInitIn,
  decodeInitOut,
  decodeKstatfs,
  decodeOpenIn,
  decodeOpenOut,
  decodeOutHeader,
  decodeReadWriteIn,
  decodeSetattrIn,
  direntSize,
  encodeAttr,
  encodeAttrOut,
  encodeDirent,
  encodeEntryOut,
  encodeFallocateIn,
  encodeInHeader,
  encodeInitIn,
  encodeInitOut,
  encodeKstatfs,
  encodeNotifyResend,
  encodeOpenIn,
  encodeOpenOut,
  encodeReadWriteIn,
  encodeSetattrIn,
  opcodeName,
  viewOf,
} from './protocol.ts';
import type { Attr } from './protocol.ts';
import { DataCorruptionError } from '../io/errors.ts';

/**
 * Requests captured from Linux 6.18.44 (FUSE 7.45) by a raw server reading /dev/fuse
 * while `dd if=MNT/block iflag=direct bs=4096 skip=3 count=1` ran (scratch capture
 * script; the kernel, not this code, produced these bytes).
 */
const CAPTURED = {
  init: '680000001a0000000200000000000000000000000000000000000000000000000000000000000000070000002d00000000000200fbffff73fd0500000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000',
  lookup: '2e00000001000000060000000000000001000000000000000000000000000000f36f000000000000626c6f636b00',
  open: '300000000e000000080000000000000002000000000000000000000000000000f36f00000000000000c0000000000000',
  read: '500000000f0000000c0000000000000002000000000000000000000000000000f36f000000000000000000000000000000300000000000000010000002000000e3e101d75784169f00c0000000000000',
};

const hex = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'hex'));

test('decodeInHeader() and the argument decoders read captured kernel requests', () => {
  const init = viewOf(hex(CAPTURED.init));
  const h = decodeInHeader(init);
  assert.deepEqual(h, { len: 104, opcode: Opcode.INIT, unique: 2n, nodeid: 0, uid: 0, gid: 0, pid: 0, totalExtlen: 0 });
  const i = decodeInitIn(init, IN_HEADER_SIZE);
  assert.equal(i.major, 7);
  assert.equal(i.minor, 45);
  assert.equal(i.maxReadahead, 128 * 1024);
  assert.ok(i.flags & InitFlag.ASYNC_DIO && i.flags & InitFlag.MAX_PAGES && i.flags & InitFlag.INIT_EXT);
  assert.ok(i.flags2 & InitFlag2.HAS_RESEND, 'kernel 6.18 announces FUSE_NOTIFY_RESEND');

  const lookup = hex(CAPTURED.lookup);
  const lh = decodeInHeader(viewOf(lookup));
  assert.equal(lh.opcode, Opcode.LOOKUP);
  assert.equal(lh.nodeid, 1);
  assert.equal(lh.pid, 0x6ff3);
  assert.equal(Buffer.from(lookup.subarray(IN_HEADER_SIZE, lh.len - 1)).toString(), 'block');

  const open = viewOf(hex(CAPTURED.open));
  assert.equal(decodeInHeader(open).opcode, Opcode.OPEN);
  assert.equal(decodeOpenIn(open, IN_HEADER_SIZE).flags, 0o140000); // O_RDONLY|O_DIRECT|O_LARGEFILE

  const read = viewOf(hex(CAPTURED.read));
  assert.equal(decodeInHeader(read).opcode, Opcode.READ);
  const r = decodeReadWriteIn(read, IN_HEADER_SIZE);
  assert.deepEqual([r.offset, r.size], [3 * 4096, 4096]);
});

test('decoders reject requests shorter than the structure', () => {
  assert.throws(() => decodeInHeader(viewOf(new Uint8Array(39))), DataCorruptionError);
  assert.throws(() => decodeReadWriteIn(viewOf(new Uint8Array(IN_HEADER_SIZE + 39)), IN_HEADER_SIZE), DataCorruptionError);
  assert.throws(() => decodeSetattrIn(viewOf(new Uint8Array(IN_HEADER_SIZE + 87)), IN_HEADER_SIZE), DataCorruptionError);
});

test('64-bit fields beyond 2^53 are rejected, unique is kept exactly', () => {
  const b = new Uint8Array(IN_HEADER_SIZE);
  const v = viewOf(b);
  v.setBigUint64(8, FUSE_UNIQUE_RESEND | 77n, true);
  assert.equal(decodeInHeader(v).unique, FUSE_UNIQUE_RESEND | 77n);
  v.setBigUint64(16, 1n << 60n, true);
  assert.throws(() => decodeInHeader(v), DataCorruptionError);
});

test('reply structures have the kernel sizes', () => {
  // Encoding into a buffer one byte short of the size must fail, into the size must fit.
  const attr = sampleAttr();
  const cases: Array<[number, (v: DataView) => void]> = [
    [ATTR_SIZE, (v) => encodeAttr(v, 0, attr)],
    [ENTRY_OUT_SIZE, (v) => encodeEntryOut(v, 0, { nodeid: 2, generation: 0, entryValid: { sec: 1, nsec: 0 }, attrValid: { sec: 1, nsec: 0 }, attr })],
    [ATTR_OUT_SIZE, (v) => encodeAttrOut(v, 0, { attrValid: { sec: 1, nsec: 0 }, attr })],
    [INIT_OUT_SIZE, (v) => encodeInitOut(v, 0, { major: 7, minor: 45, maxReadahead: 0, flags: 0, maxBackground: 0, congestionThreshold: 0, maxWrite: 0, timeGran: 0, maxPages: 0, flags2: 0 })],
    [OPEN_OUT_SIZE, (v) => encodeOpenOut(v, 0, { fh: 0, openFlags: 0 })],
    [STATFS_OUT_SIZE, (v) => encodeKstatfs(v, 0, { blocks: 0, bfree: 0, bavail: 0, files: 0, ffree: 0, bsize: 0, namelen: 0, frsize: 0 })],
  ];
  for (const [size, encode] of cases) {
    encode(viewOf(new Uint8Array(size)));
    assert.throws(() => encode(viewOf(new Uint8Array(size - 1))), DataCorruptionError, `size ${size}`);
  }
});

test('fuse_attr field offsets match the kernel layout', () => {
  const b = new Uint8Array(ATTR_SIZE);
  encodeAttr(viewOf(b), 0, { ...sampleAttr(), mode: 0o100644, blksize: 4096, size: 0x1_0000_0000 });
  const v = viewOf(b);
  assert.equal(v.getBigUint64(8, true), 0x1_0000_0000n); // size
  assert.equal(v.getUint32(60, true), 0o100644); // mode
  assert.equal(v.getUint32(80, true), 4096); // blksize
});

test('direntSize() pads to 8 bytes and encodeDirent() zeroes the padding', () => {
  assert.equal(direntSize(1), 32);
  assert.equal(direntSize(8), 32);
  assert.equal(direntSize(9), 40);
  const b = new Uint8Array(64).fill(0xff);
  const n = encodeDirent(viewOf(b), 0, { ino: 2, off: 3, type: 8, name: new TextEncoder().encode('block') });
  assert.equal(n, 32);
  assert.deepEqual([...b.subarray(DIRENT_HEADER_SIZE + 5, 32)], [0, 0, 0]);
  assert.equal(b[32], 0xff, 'nothing written past the entry');
  const { dirent, next } = decodeDirent(viewOf(b), 0);
  assert.equal(next, 32);
  assert.equal(Buffer.from(dirent.name).toString(), 'block');
});

test('encodeNotifyResend() is a bare header with code 7 and unique 0', () => {
  const b = new Uint8Array(16).fill(0xaa);
  assert.equal(encodeNotifyResend(viewOf(b)), 16);
  assert.deepEqual(decodeOutHeader(viewOf(b)), { len: 16, error: NotifyCode.RESEND, unique: 0n });
});

test('opcodeName() names known opcodes and numbers the rest', () => {
  assert.equal(opcodeName(Opcode.READDIRPLUS), 'READDIRPLUS');
  assert.equal(opcodeName(4096), 'OPCODE_4096');
});

/** Plain-prototype records (fast-check may otherwise make null-prototype objects). */
const rec = <T>(model: { [K in keyof T]: fc.Arbitrary<T[K]> }): fc.Arbitrary<T> => fc.record(model, { noNullPrototype: true }) as fc.Arbitrary<T>;
const u32 = fc.integer({ min: 0, max: 0xffffffff });
const u53 = fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER });
const arbAttr = rec({
  ino: u53,
  size: u53,
  blocks: u53,
  atime: u53,
  mtime: u53,
  ctime: u53,
  atimensec: u32,
  mtimensec: u32,
  ctimensec: u32,
  mode: u32,
  nlink: u32,
  uid: u32,
  gid: u32,
  rdev: u32,
  blksize: u32,
  flags: u32,
});
const validity = rec({ sec: u53, nsec: u32 });

test('every structure round-trips through encode and decode', () => {
  fc.assert(
    fc.property(
      rec({
        attr: arbAttr,
        entry: rec({ nodeid: u53, generation: u53, entryValid: validity, attrValid: validity, attr: arbAttr }),
        attrValid: validity,
        header: rec({
          len: u32,
          opcode: u32,
          unique: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
          nodeid: u53,
          uid: u32,
          gid: u32,
          pid: u32,
          totalExtlen: fc.integer({ min: 0, max: 0xffff }),
        }),
        init: rec({ major: u32, minor: u32, maxReadahead: u32, flags: u32, flags2: u32 }),
        initOut: rec({
          major: u32,
          minor: u32,
          maxReadahead: u32,
          flags: u32,
          maxBackground: fc.integer({ min: 0, max: 0xffff }),
          congestionThreshold: fc.integer({ min: 0, max: 0xffff }),
          maxWrite: u32,
          timeGran: u32,
          maxPages: fc.integer({ min: 0, max: 0xffff }),
          flags2: u32,
        }),
        rw: rec({ fh: u53, offset: u53, size: u32, rwFlags: u32, flags: u32 }),
        setattr: rec({ valid: u32, fh: u53, size: u53, mode: u32, uid: u32, gid: u32 }),
        open: rec({ flags: u32, openFlags: u32 }),
        openOut: rec({ fh: u53, openFlags: u32 }),
        fallocate: rec({ fh: u53, offset: u53, length: u53, mode: u32 }),
        statfs: rec({ blocks: u53, bfree: u53, bavail: u53, files: u53, ffree: u53, bsize: u32, namelen: u32, frsize: u32 }),
        name: fc.uint8Array({ minLength: 1, maxLength: 255 }),
      }),
      (x) => {
        const v = viewOf(new Uint8Array(512));
        encodeAttr(v, 8, x.attr);
        assert.deepEqual(decodeAttr(v, 8), x.attr);
        encodeEntryOut(v, 0, x.entry);
        assert.deepEqual(decodeEntryOut(v, 0), x.entry);
        encodeAttrOut(v, 0, { attrValid: x.attrValid, attr: x.attr });
        assert.deepEqual(decodeAttrOut(v, 0), { attrValid: x.attrValid, attr: x.attr });
        encodeInHeader(v, x.header);
        assert.deepEqual(decodeInHeader(v), x.header);
        const init = { ...x.init, flags: x.init.flags | InitFlag.INIT_EXT };
        encodeInitIn(v, 40, init);
        assert.deepEqual(decodeInitIn(v, 40), { ...init, flags: init.flags >>> 0 });
        encodeInitOut(v, 16, x.initOut);
        assert.deepEqual(decodeInitOut(v, 16), x.initOut);
        encodeReadWriteIn(v, 40, x.rw);
        assert.deepEqual(decodeReadWriteIn(v, 40), x.rw);
        encodeSetattrIn(v, 40, x.setattr);
        assert.deepEqual(decodeSetattrIn(v, 40), x.setattr);
        encodeOpenIn(v, 40, x.open);
        assert.deepEqual(decodeOpenIn(v, 40), x.open);
        encodeOpenOut(v, 16, x.openOut);
        assert.deepEqual(decodeOpenOut(v, 16), x.openOut);
        encodeFallocateIn(v, 40, x.fallocate);
        assert.deepEqual(decodeFallocateIn(v, 40), x.fallocate);
        encodeKstatfs(v, 16, x.statfs);
        assert.deepEqual(decodeKstatfs(v, 16), x.statfs);
        const d = { ino: x.attr.ino, off: x.attr.size, type: 8, name: x.name };
        const n = encodeDirent(v, 0, d);
        assert.deepEqual(decodeDirent(v, 0), { dirent: d, next: n });
      },
    ),
    { numRuns: 200 },
  );
});

function sampleAttr(): Attr {
  return {
    ino: 2,
    size: 1 << 20,
    blocks: 2048,
    atime: 1,
    mtime: 2,
    ctime: 3,
    atimensec: 4,
    mtimensec: 5,
    ctimensec: 6,
    mode: 0o100644,
    nlink: 1,
    uid: 0,
    gid: 0,
    rdev: 0,
    blksize: 4096,
    flags: 0,
  };
}
