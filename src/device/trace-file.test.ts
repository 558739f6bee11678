import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { DataCorruptionError } from '../io/errors.ts';
import { TRACE_HEADER_SIZE, TRACE_MAGIC, decodeTrace, encodeTrace, hasTraceMagic, type TraceRecord } from './trace-file.ts';

/** Raw CRC-32C written out from zfile.md §4.0, independent of the native one. */
function rawCrc32c(data: Uint8Array, seed: number): number {
  let crc = seed >>> 0;
  for (const byte of data) {
    let x = (crc ^ byte) & 0xff;
    for (let k = 0; k < 8; k++) x = x & 1 ? (x >>> 1) ^ 0x82f63b78 : x >>> 1;
    crc = (x ^ (crc >>> 8)) >>> 0;
  }
  return crc;
}

/** Two records laid out by hand per runtime.md §8.2, padding bytes non-zero as upstream may leave them. */
function handMade(): Uint8Array {
  const hex =
    // header: magic, padding, data_size = 48, checksum (filled below), padding
    '2018efc2' + 'aaaaaaaa' + '3000000000000000' + '00000000' + 'bbbbbbbb' +
    // R, padding, layer 2, count 0x1000, offset 0x20000
    '52' + 'cccccc' + '02000000' + '0010000000000000' + '0000020000000000' +
    // R, padding, layer 0, count 512, offset 0x1_0000_0200
    '52' + '000000' + '00000000' + '0002000000000000' + '0002000001000000';
  const b = Uint8Array.from(Buffer.from(hex, 'hex'));
  let crc = 0;
  for (let i = TRACE_HEADER_SIZE; i < b.length; i += 24) crc = rawCrc32c(b.subarray(i, i + 24), crc);
  new DataView(b.buffer).setUint32(16, crc, true);
  return b;
}

test('the trace magic is the zlib CRC-32 of the format name', async () => {
  const { crc32 } = await import('node:zlib');
  assert.equal(crc32('Container Image Trace Format'), TRACE_MAGIC);
});

test('decodeTrace() reads a hand-made file, padding included in the checksum', () => {
  assert.deepEqual(decodeTrace(handMade()), [
    { op: 'R', layerIndex: 2, count: 0x1000, offset: 0x20000 },
    { op: 'R', layerIndex: 0, count: 512, offset: 0x1_0000_0200 },
  ]);
  assert.ok(hasTraceMagic(handMade()));
});

test('encodeTrace() writes the hand-made layout with zero padding', () => {
  const records = decodeTrace(handMade());
  const bytes = encodeTrace(records);
  const dv = new DataView(bytes.buffer);
  assert.equal(bytes.length, 24 + 48);
  assert.equal(dv.getUint32(0, true), TRACE_MAGIC);
  assert.equal(dv.getBigUint64(8, true), 48n);
  assert.equal(dv.getUint32(16, true), rawCrc32c(bytes.subarray(24), 0));
  const expected = handMade();
  for (const at of [24, 48]) {
    expected.fill(0, at + 1, at + 4);
  }
  expected.fill(0, 4, 8);
  expected.fill(0, 20, 24);
  new DataView(expected.buffer).setUint32(16, rawCrc32c(expected.subarray(24), 0), true);
  assert.deepEqual(bytes, expected);
});

test('an empty trace is a bare header with checksum 0', () => {
  const bytes = encodeTrace([]);
  assert.equal(bytes.length, 24);
  assert.equal(new DataView(bytes.buffer).getUint32(16, true), 0);
  assert.deepEqual(decodeTrace(bytes), []);
});

test('decodeTrace() rejects a short file, a wrong magic, a wrong size, a bad checksum and an unknown op', () => {
  const good = handMade();
  const cases: Array<[string, (b: Uint8Array) => Uint8Array, RegExp]> = [
    ['short', (b) => b.subarray(0, 20), /20 bytes, shorter than the 24-byte header/],
    ['magic', (b) => (b[0] = 0x21, b), /magic 0xc2ef1821, expected 0xc2ef1820/],
    ['truncated', (b) => b.subarray(0, 60), /data_size 48 but 36 bytes follow the header/],
    ['size', (b) => (new DataView(b.buffer).setBigUint64(8, 47n, true), b.subarray(0, 71)), /data_size 47 is not a multiple of 24/],
    ['checksum', (b) => (b[40] = 0x11, b), /checksum 0x[0-9a-f]+ but the records sum to 0x[0-9a-f]+/],
    ['op', (b) => {
      b[48] = 0x58;
      new DataView(b.buffer).setUint32(16, rawCrc32c(b.subarray(24), 0), true);
      return b;
    }, /record 1 has op 0x58/],
  ];
  for (const [name, mutate, re] of cases) {
    assert.throws(() => decodeTrace(mutate(good.slice()), { name: '/t' }), (e: unknown) => e instanceof DataCorruptionError && re.test(e.message) && e.message.includes('/t'), name);
  }
  assert.equal(hasTraceMagic(new Uint8Array([0x20, 0x18])), false);
});

test('decodeTrace(encodeTrace(x)) equals x', () => {
  const record = fc.record<TraceRecord>({
    op: fc.constantFrom('R', 'W'),
    layerIndex: fc.integer({ min: 0, max: 0xffffffff }),
    count: fc.maxSafeNat(),
    offset: fc.maxSafeInteger(),
  });
  fc.assert(
    fc.property(fc.array(record, { maxLength: 40 }), (generated) => {
      const records = generated.map((r) => ({ ...r }));
      const bytes = encodeTrace(records);
      assert.deepEqual(decodeTrace(bytes), records);
      assert.deepEqual(encodeTrace(decodeTrace(bytes)), bytes);
    }),
    { numRuns: 300 },
  );
});
