import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';
import fc from 'fast-check';
import { DataCorruptionError, UnsupportedError } from '../../io/errors.ts';
import { vector } from '../../../test/support/shared.ts';
import type { ZFileHeader } from './header.ts';
import {
  ZFILE_FLAGS_INITIAL_HEADER,
  ZFILE_FLAGS_TRAILER,
  ZFILE_HEADER_SIZE,
  decodeZFileHeader,
  emptyZFileHeader,
  encodeZFileHeader,
  hasZFileMagic,
  readZFileFlags,
  validateZFileHeader,
  zfileDigest,
} from './header.ts';

const headerArb: fc.Arbitrary<ZFileHeader> = fc.record({
  size: fc.constant(96),
  digest: fc.nat({ max: 0xffffffff }),
  flags: fc.nat({ max: 0x3f }),
  indexOffset: fc.nat({ max: Number.MAX_SAFE_INTEGER }),
  indexSize: fc.nat({ max: Number.MAX_SAFE_INTEGER }),
  originalFileSize: fc.nat({ max: Number.MAX_SAFE_INTEGER }),
  indexCrc: fc.nat({ max: 0xffffffff }),
  blockSize: fc.nat({ max: 0xffffffff }),
  algo: fc.nat({ max: 255 }),
  level: fc.nat({ max: 255 }),
  useDict: fc.nat({ max: 255 }),
  dictSize: fc.nat({ max: 0xffffffff }),
  verify: fc.boolean(),
});

test('decodeZFileHeader(encodeZFileHeader(h)) equals h (digest computed when bit 4)', () => {
  fc.assert(
    fc.property(headerArb, (arb) => {
      const h: ZFileHeader = { ...arb };
      const bytes = encodeZFileHeader(h);
      assert.equal(bytes.length, ZFILE_HEADER_SIZE);
      const back = decodeZFileHeader(bytes);
      const want = (h.flags & 0x10) !== 0 ? { ...h, digest: zfileDigest(bytes) } : h;
      assert.deepEqual(back, want);
      assert.deepEqual(encodeZFileHeader(back), bytes);
      if ((h.flags & 0x10) !== 0) assert.equal(back.digest, zfileDigest(bytes));
    }),
    { seed: 4207947, numRuns: 300 },
  );
});

test('encodeZFileHeader() re-emits every record of the zfile vectors byte for byte', () => {
  for (const name of ['zf_lz4_bs4_crc.zfile', 'zf_zstd_bs32_nocrc.zfile', 'zf_odd_zstd_bs16_crc.zfile']) {
    const f = new Uint8Array(readFileSync(vector('zfile', name)));
    const head = f.subarray(0, 512);
    const tail = f.subarray(f.length - 512);
    const h = decodeZFileHeader(head);
    const t = decodeZFileHeader(tail);
    assert.equal(h.flags, ZFILE_FLAGS_INITIAL_HEADER);
    assert.equal(t.flags, ZFILE_FLAGS_TRAILER);
    assert.equal(h.indexOffset, 0);
    assert.equal(h.indexSize, 0);
    assert.equal(h.digest, zfileDigest(head));
    assert.equal(t.digest, zfileDigest(tail));
    assert.deepEqual(encodeZFileHeader(h), head);
    assert.deepEqual(encodeZFileHeader(t), tail);
    validateZFileHeader(t);
  }
});

test('decodeZFileHeader() masks garbage flags and keeps garbage digests of the legacy ext4_64 layer', () => {
  const tar = gunzipSync(readFileSync(vector('apply', 'ext4_64.tar.gz')));
  const file = tar.subarray(512, 512 + 4737695);
  const h = decodeZFileHeader(file.subarray(0, 512));
  const t = decodeZFileHeader(file.subarray(file.length - 512));
  assert.equal(h.flags, 0x03);
  assert.equal(t.flags, 0x06);
  assert.equal(readZFileFlags(file.subarray(0, 512)), 0x03);
  assert.notEqual(h.digest, zfileDigest(file.subarray(0, 512)));
  assert.equal(t.indexOffset, 4207947);
  assert.equal(t.indexSize, 132309);
  assert.equal(t.originalFileSize, 541937664);
  assert.equal(t.blockSize, 4096);
  assert.equal(t.algo, 1);
  assert.equal(t.verify, true);
  validateZFileHeader(t);
});

test('decodeZFileHeader() rejects short records, bad magic and 64-bit values above 2^53', () => {
  const ok = encodeZFileHeader(emptyZFileHeader({ blockSize: 4096, algo: 1, verify: true }));
  assert.throws(() => decodeZFileHeader(ok.subarray(0, 511)), DataCorruptionError);
  const bad = ok.slice();
  bad[9]! ^= 1;
  assert.equal(hasZFileMagic(bad), false);
  assert.throws(() => decodeZFileHeader(bad), /bad magic/);
  const big = ok.slice();
  new DataView(big.buffer).setBigUint64(56, 1n << 60n, true);
  assert.throws(() => decodeZFileHeader(big), /original_file_size/);
});

test('encodeZFileHeader() rejects unknown flag bits and out-of-range fields', () => {
  const h = emptyZFileHeader({ blockSize: 4096, algo: 1, verify: true });
  assert.throws(() => encodeZFileHeader({ ...h, flags: 0x40 }), RangeError);
  assert.throws(() => encodeZFileHeader({ ...h, blockSize: 2 ** 32 }), RangeError);
  assert.throws(() => encodeZFileHeader({ ...h, algo: 256 }), RangeError);
  assert.throws(() => encodeZFileHeader({ ...h, indexOffset: -1 }), RangeError);
});

test('validateZFileHeader() enforces algorithm, block size and index limits (§11.7)', () => {
  const base: ZFileHeader = { ...emptyZFileHeader({ blockSize: 4096, algo: 1, verify: true }), flags: 0x16 };
  validateZFileHeader(base);
  validateZFileHeader({ ...base, blockSize: 512 });
  validateZFileHeader({ ...base, blockSize: 65536, originalFileSize: 65537, indexSize: 2 });
  assert.throws(() => validateZFileHeader({ ...base, blockSize: 131072 }), UnsupportedError);
  assert.throws(() => validateZFileHeader({ ...base, blockSize: 256 }), UnsupportedError);
  assert.throws(() => validateZFileHeader({ ...base, blockSize: 3000 }), DataCorruptionError);
  assert.throws(() => validateZFileHeader({ ...base, blockSize: 0 }), DataCorruptionError);
  assert.throws(() => validateZFileHeader({ ...base, algo: 0 }), /mini-LZO/);
  assert.throws(() => validateZFileHeader({ ...base, algo: 3 }), UnsupportedError);
  assert.throws(() => validateZFileHeader({ ...base, flags: 0x36 }), UnsupportedError);
  assert.throws(
    () => validateZFileHeader({ ...base, indexSize: 1_000_000_001, originalFileSize: 1_000_000_001 * 4096 }),
    /exceeds 1000000000/,
  );
  assert.throws(() => validateZFileHeader({ ...base, indexSize: 3, originalFileSize: 4096 }), /does not match/);
});
