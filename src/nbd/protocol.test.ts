import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DataCorruptionError, FailedPreconditionError, InvalidArgumentError, NotFoundError, UnavailableError, UnsupportedError } from '../io/errors.ts';
import { nbdErrnoOf } from './errno.ts';
import { BufferPool } from './_buffer-pool.ts';
import { encodeGoData } from './_test-client.ts';
import {
  CMD,
  ERRNO,
  INFO,
  MAGIC,
  OFFSET_DATA_START,
  REPLY_FLAG,
  REPLY_TYPE,
  decodeInfoRequest,
  decodeMetaContextRequest,
  decodeRequestHeader,
  decodeString,
  encodeErrorChunk,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeOptionReply,
  encodeRequestHeader,
  encodeServerReplyData,
  encodeSimpleReply,
  encodeString,
  writeOffsetDataHeader,
} from './protocol.ts';

test('encodeGreeting() is NBDMAGIC, IHAVEOPT, flags', () => {
  assert.equal(Buffer.from(encodeGreeting(3)).toString('hex'), '4e42444d41474943' + '49484156454f5054' + '0003');
});

test('decodeRequestHeader() reads what encodeRequestHeader() wrote, big-endian', () => {
  const h = { flags: 0x0101, type: CMD.WRITE, cookie: 0x0102030405060708n, offset: 2 ** 40 + 512, length: 0x10000 };
  const b = encodeRequestHeader(h);
  assert.equal(Buffer.from(b).toString('hex'), '25609513' + '0101' + '0001' + '0102030405060708' + '0000010000000200' + '00010000');
  assert.deepEqual(decodeRequestHeader(b), { magic: MAGIC.REQUEST, ...h });
  assert.throws(() => decodeRequestHeader(b.subarray(0, 27)), RangeError);
  // Offsets beyond 2^53 stay beyond any export size.
  const huge = encodeRequestHeader({ ...h, offset: 0 });
  new DataView(huge.buffer).setBigUint64(16, 0xffffffffffffffffn);
  assert.ok(decodeRequestHeader(huge).offset > Number.MAX_SAFE_INTEGER);
});

test('reply encoders lay out simple replies, OFFSET_DATA and ERROR chunks', () => {
  assert.equal(encodeSimpleReply(7n, ERRNO.EPERM).toString('hex'), '67446698' + '00000001' + '0000000000000007');
  const data = Buffer.alloc(OFFSET_DATA_START + 4);
  writeOffsetDataHeader(data, 9n, { offset: 4096, length: 4 });
  assert.equal(data.subarray(0, OFFSET_DATA_START).toString('hex'), '668e33ef' + '0001' + '0001' + '0000000000000009' + '0000000c' + '0000000000001000');
  const err = encodeErrorChunk(9n, ERRNO.EIO, 'bad');
  assert.equal(err.readUInt16BE(4), REPLY_FLAG.DONE);
  assert.equal(err.readUInt16BE(6), REPLY_TYPE.ERROR);
  assert.equal(err.readUInt32BE(16), 9);
  assert.equal(err.subarray(20).toString('hex'), '00000005' + '0003' + Buffer.from('bad').toString('hex'));
});

test('option encoders: reply header, NBD_REP_SERVER, NBD_INFO_*, export-name reply', () => {
  assert.equal(Buffer.from(encodeOptionReply(3, 1)).toString('hex'), '0003e889045565a9' + '00000003' + '00000001' + '00000000');
  assert.equal(Buffer.from(encodeServerReplyData('ab', 'x')).toString('hex'), '00000002' + '6162' + '78');
  assert.equal(Buffer.from(encodeInfoExport(1 << 20, 0x0103)).toString('hex'), '0000' + '0000000000100000' + '0103');
  assert.equal(
    Buffer.from(encodeInfoBlockSize({ minimum: 512, preferred: 4096, maximum: 1 << 25 })).toString('hex'),
    '0003' + '00000200' + '00001000' + '02000000',
  );
  assert.equal(encodeExportNameReply(4096, 1, true).length, 10);
  const full = encodeExportNameReply(4096, 1, false);
  assert.equal(full.length, 134);
  assert.ok(full.subarray(10).every((x) => x === 0));
});

test('decodeInfoRequest() accepts exactly name + count + types and rejects any inconsistency', () => {
  assert.deepEqual(decodeInfoRequest(encodeGoData('disk', [INFO.NAME, INFO.BLOCK_SIZE])), { name: 'disk', requests: [1, 3] });
  assert.deepEqual(decodeInfoRequest(encodeGoData('')), { name: '', requests: [] });
  const good = encodeGoData('disk', [INFO.NAME]);
  assert.equal(decodeInfoRequest(good.subarray(0, good.length - 1)), undefined, 'truncated');
  assert.equal(decodeInfoRequest(Buffer.concat([good, Buffer.alloc(2)])), undefined, 'trailing bytes');
  const longName = Buffer.from(good);
  longName.writeUInt32BE(1000, 0);
  assert.equal(decodeInfoRequest(longName), undefined, 'name longer than the data');
  assert.equal(decodeInfoRequest(encodeGoData('a\0b')), undefined, 'NUL in name');
  assert.equal(decodeInfoRequest(Buffer.from([0, 0, 0, 2, 0xc3, 0x28, 0, 0])), undefined, 'invalid UTF-8');
  assert.equal(decodeInfoRequest(Buffer.alloc(5)), undefined);
});

test('decodeMetaContextRequest() walks the queries and rejects overruns', () => {
  const q = Buffer.from('base:allocation');
  const b = Buffer.alloc(4 + 1 + 4 + 4 + q.length);
  b.writeUInt32BE(1, 0);
  b.write('d', 4);
  b.writeUInt32BE(1, 5);
  b.writeUInt32BE(q.length, 9);
  q.copy(b, 13);
  assert.deepEqual(decodeMetaContextRequest(b), { name: 'd', queries: ['base:allocation'] });
  const many = Buffer.from(b);
  many.writeUInt32BE(0xffffffff, 5);
  assert.equal(decodeMetaContextRequest(many), undefined, 'more queries than data');
  assert.equal(decodeMetaContextRequest(b.subarray(0, b.length - 1)), undefined);
});

test('encodeString() cuts at a character boundary; decodeString() enforces the string rules', () => {
  const s = 'é'.repeat(3000); // 6000 bytes
  const e = encodeString(s);
  assert.ok(e.length <= 4096);
  assert.equal(new TextDecoder('utf-8', { fatal: true }).decode(e), 'é'.repeat(2048));
  assert.equal(decodeString(Buffer.from('ok')), 'ok');
  assert.equal(decodeString(Buffer.alloc(4097, 0x61)), undefined);
});

test('nbdErrnoOf() maps the domain error codes and system errors to NBD errno', () => {
  const cases: [unknown, number][] = [
    [new InvalidArgumentError('x'), ERRNO.EINVAL],
    [new FailedPreconditionError('x'), ERRNO.EPERM],
    [new UnsupportedError('x'), ERRNO.ENOTSUP],
    [new DataCorruptionError('x'), ERRNO.EIO],
    [new UnavailableError('x'), ERRNO.EIO],
    [new NotFoundError('x'), ERRNO.EIO],
    [Object.assign(new Error('x'), { code: 'EDQUOT' }), ERRNO.ENOSPC],
    [Object.assign(new Error('x'), { code: 'EROFS' }), ERRNO.EPERM],
    [Object.assign(new Error('x'), { code: 'ENOMEM' }), ERRNO.ENOMEM],
    [Object.assign(new Error('x'), { code: 'ECONNRESET' }), ERRNO.EIO],
    [new RangeError('x'), ERRNO.EIO],
    ['a string', ERRNO.EIO],
    [null, ERRNO.EIO],
  ];
  for (const [e, errno] of cases) assert.equal(nbdErrnoOf(e), errno, String(e));
});

test('BufferPool reuses released buffers, never hands one out twice, and caps what it keeps', () => {
  const pool = new BufferPool({ maxPooledBytes: 3 * (65536 + 64), maxBufferBytes: 1 << 20 });
  const a = pool.acquire(65536 + 28);
  assert.equal(a.length, 65536 + 28);
  pool.release(a);
  pool.release(a); // repeated release is ignored
  assert.equal(pool.pooledBytes, 65536 + 64);
  const b = pool.acquire(40000);
  const c = pool.acquire(65536);
  assert.equal(b.buffer, a.buffer, 'same size class reused');
  assert.notEqual(c.buffer, b.buffer, 'one buffer handed out twice');
  const big = pool.acquire(2 << 20);
  pool.release(big);
  pool.release(Buffer.alloc(100)); // not from the pool
  assert.equal(pool.pooledBytes, 0);
  for (const x of [b, c, pool.acquire(65536), pool.acquire(65536)]) pool.release(x);
  assert.equal(pool.pooledBytes, 3 * (65536 + 64), 'kept more than maxPooledBytes');
});
