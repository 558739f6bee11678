import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MemorySink } from '../../io/byte-sink.ts';
import { MemoryReader } from '../../io/memory-reader.ts';
import { FileSink } from '../../io/file-sink.ts';
import { FailedPreconditionError, InvalidArgumentError } from '../../io/errors.ts';
import { FIXTURES, sha256, vector } from '../../../test/support/shared.ts';
import { xs, zf1, zf768, zfOdd } from '../../../test/support/generators.ts';
import { TarWrapSink } from '../tar/wrapper.ts';
import { decodeZFileHeader } from './header.ts';
import { ZFileReader } from './reader.ts';
import { ZFileWriter } from './writer.ts';
import type { ZFileWriterOptions } from './writer.ts';

const HELLO = `${FIXTURES}/hello-world-converted/blobs/sha256/022231c3f1af70e0cc42f0c3781eabf174cff608210585bf93fc83e16d33672d`;

function file(path: string): Uint8Array {
  return new Uint8Array(readFileSync(path));
}

async function compress(
  data: Uint8Array,
  options: ZFileWriterOptions & { tar?: boolean; chunk?: number },
): Promise<Uint8Array> {
  const sink = new MemorySink();
  const target = options.tar === true ? await TarWrapSink.create(sink) : sink;
  const { tar: _tar, chunk, ...zopts } = options;
  const w = await ZFileWriter.create(target, zopts);
  const step = chunk ?? data.length;
  if (data.length === 0) await w.write(data);
  for (let off = 0; off < data.length; off += step) await w.write(data.subarray(off, off + step));
  await w.close();
  return sink.bytes();
}

/** The documented inputs and options of vectors/README.md §2. */
const VECTORS: [string, () => Uint8Array, ZFileWriterOptions & { tar?: boolean }][] = [
  ['zf_lz4_bs4_crc.zfile', zf1, { algorithm: 'lz4', blockSize: 4096 }],
  ['zf_lz4_bs16_crc.zfile', zf1, { algorithm: 'lz4', blockSize: 16384 }],
  ['zf_lz4_bs32_crc.zfile', zf1, { algorithm: 'lz4', blockSize: 32768 }],
  ['zf_zstd_bs4_crc.zfile', zf1, { algorithm: 'zstd', blockSize: 4096 }],
  ['zf_zstd_bs16_crc.zfile', zf1, { algorithm: 'zstd', blockSize: 16384 }],
  ['zf_zstd_bs32_crc.zfile', zf1, { algorithm: 'zstd', blockSize: 32768 }],
  ['zf_lz4_bs4_nocrc.zfile', zf1, { algorithm: 'lz4', blockSize: 4096, verify: false }],
  ['zf_lz4_bs32_nocrc.zfile', zf1, { algorithm: 'lz4', blockSize: 32768, verify: false }],
  ['zf_zstd_bs4_nocrc.zfile', zf1, { algorithm: 'zstd', blockSize: 4096, verify: false }],
  ['zf_zstd_bs32_nocrc.zfile', zf1, { algorithm: 'zstd', blockSize: 32768, verify: false }],
  ['zf_lz4_bs4_crc.zfile.tar', zf1, { algorithm: 'lz4', blockSize: 4096, tar: true }],
  ['zf_odd_lz4_bs4_crc.zfile', zfOdd, { algorithm: 'lz4', blockSize: 4096 }],
  ['zf_odd_zstd_bs16_crc.zfile', zfOdd, { algorithm: 'zstd', blockSize: 16384 }],
  ['zf_768k_lz4_bs64_crc.zfile', zf768, { algorithm: 'lz4', blockSize: 65536 }],
  ['zf_lz4_bs64_crc_UNREADABLE.zfile', zf1, { algorithm: 'lz4', blockSize: 65536 }],
];

test('ZFileWriter reproduces every zfile vector byte for byte', async () => {
  for (const [name, input, options] of VECTORS) {
    const out = await compress(input(), options);
    assert.equal(sha256(out), sha256(file(vector('zfile', name))), name);
  }
});

test('ZFileWriter output does not depend on how the input is split into writes', async () => {
  const want = file(vector('zfile', 'zf_odd_zstd_bs16_crc.zfile'));
  for (const chunk of [1, 1000, 4095, 16384, 16385, 100000]) {
    const input = chunk === 1 ? zfOdd().subarray(0, 300001) : zfOdd();
    if (chunk === 1) {
      // Byte-by-byte writes across the first blocks, then the rest at once.
      const sink = new MemorySink();
      const w = await ZFileWriter.create(sink, { algorithm: 'zstd', blockSize: 16384 });
      for (let i = 0; i < 40000; i++) await w.write(input.subarray(i, i + 1));
      await w.write(input.subarray(40000));
      await w.close();
      assert.equal(sha256(sink.bytes()), sha256(want), 'byte writes');
      continue;
    }
    assert.equal(sha256(await compress(input, { algorithm: 'zstd', blockSize: 16384, chunk })), sha256(want), `chunk ${chunk}`);
  }
});

test('ZFileWriter with rewriteHeader reproduces the overlaybd-commit -z layers', async () => {
  const l1 = file(vector('lsmt', 'L1.commit'));
  const l2 = file(vector('lsmt', 'L2.commit'));
  const cases: [string, Uint8Array, ZFileWriterOptions & { tar?: boolean }][] = [
    ['lsmt/L1.lz4.commit', l1, { rewriteHeader: true }],
    ['lsmt/L1.zstd.commit', l1, { algorithm: 'zstd', rewriteHeader: true }],
    ['lsmt/L1.lz4.bs32.commit', l1, { blockSize: 32768, rewriteHeader: true }],
    ['lsmt/L2.lz4.commit', l2, { rewriteHeader: true }],
    ['lsmt/L1.lz4.commit.tar', l1, { rewriteHeader: true, tar: true }],
  ];
  for (const [name, input, options] of cases) {
    assert.equal(sha256(await compress(input, options)), sha256(file(vector(name))), name);
  }
  // Compressed references whose inputs are not stored: decode, re-encode, compare.
  for (const [name, rewriteHeader] of [
    ['apply/A1.lz4.commit', true],
    ['apply/A2.lz4.commit', true],
    ['stack/L1L2.merged.lz4', false],
  ] as const) {
    const ref = file(vector(name));
    const r = await ZFileReader.open(new MemoryReader(ref));
    const plain = new Uint8Array(r.size);
    await r.readAt(plain, 0);
    assert.equal(sha256(await compress(plain, { rewriteHeader })), sha256(ref), name);
  }
});

test('ZFileWriter re-encodes the hello-world layer into the identical tar(ZFile) blob', async () => {
  const blob = file(HELLO);
  const r = await ZFileReader.open(new MemoryReader(blob.subarray(1536, 1536 + 639491)));
  const plain = new Uint8Array(r.size);
  await r.readAt(plain, 0);
  const out = await compress(plain, { rewriteHeader: true, tar: true, chunk: 1 << 20 });
  assert.equal(sha256(out), '022231c3f1af70e0cc42f0c3781eabf174cff608210585bf93fc83e16d33672d');
});

test('ZFileWriter writes an empty input as header, empty jump table and trailer', async () => {
  const out = await compress(new Uint8Array(0), {});
  assert.equal(out.length, 1024);
  const t = decodeZFileHeader(out.subarray(512));
  assert.deepEqual([t.flags, t.indexOffset, t.indexSize, t.originalFileSize, t.indexCrc], [0x16, 512, 0, 0, 0]);
  const r = await ZFileReader.open(new MemoryReader(out));
  assert.equal(r.size, 0);
  assert.equal(await r.verifyAll(), 0);
});

test('ZFileWriter writes through a FileSink and exposes position and trailer', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'zfile-writer-'));
  try {
    const path = join(dir, 'out.zfile');
    const w = await ZFileWriter.create(await FileSink.create(path), { algorithm: 'zstd', blockSize: 8192, rewriteHeader: true });
    const data = xs(3 << 20, 99);
    await w.write(data.subarray(0, 12345));
    assert.equal(w.position, 12345);
    assert.equal(w.trailer === null, true);
    await w.write(data.subarray(12345));
    await w.close();
    const bytes = new Uint8Array(await readFile(path));
    assert.equal(w.trailer?.originalFileSize, data.length);
    assert.equal(w.trailer?.indexSize, 384);
    assert.equal(bytes.length, (w.trailer?.indexOffset ?? 0) + 4 * 384 + 512);
    assert.equal(decodeZFileHeader(bytes.subarray(0, 512)).flags, 0x1b);
    const r = await ZFileReader.open(new MemoryReader(bytes));
    const back = new Uint8Array(r.size);
    await r.readAt(back, 0);
    assert.equal(sha256(back), sha256(data));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('ZFileWriter.writeAt() patches only bytes not yet handed to the encoder', async () => {
  const sink = new MemorySink();
  const w = await ZFileWriter.create(sink, { blockSize: 4096 });
  const MiB = 1 << 20; // one encoder batch
  await w.write(new Uint8Array(MiB + 5000));
  await w.writeAt(Uint8Array.of(1, 2, 3), MiB + 4096);
  await assert.rejects(w.writeAt(Uint8Array.of(1), 100), FailedPreconditionError);
  await assert.rejects(w.writeAt(Uint8Array.of(1), MiB - 1), FailedPreconditionError);
  await assert.rejects(w.writeAt(Uint8Array.of(1, 2), MiB + 4999), FailedPreconditionError);
  await w.close();
  const r = await ZFileReader.open(new MemoryReader(sink.bytes()));
  const buf = new Uint8Array(4);
  await r.readAt(buf, MiB + 4095);
  assert.deepEqual([...buf], [0, 1, 2, 3]);
  await assert.rejects(w.write(new Uint8Array(1)), /writer is closed/);
  await w.close(); // idempotent
});

test('ZFileWriter.create() rejects bad options and non-empty sinks', async () => {
  await assert.rejects(ZFileWriter.create(new MemorySink(), { blockSize: 131072 }), InvalidArgumentError);
  await assert.rejects(ZFileWriter.create(new MemorySink(), { blockSize: 5000 }), InvalidArgumentError);
  await assert.rejects(ZFileWriter.create(new MemorySink(), { blockSize: 256 }), InvalidArgumentError);
  await assert.rejects(
    ZFileWriter.create(new MemorySink(), { algorithm: 'lzo' as unknown as 'lz4' }),
    InvalidArgumentError,
  );
  const used = new MemorySink();
  await used.write(new Uint8Array(1));
  await assert.rejects(ZFileWriter.create(used), /position 1/);
});

test('ZFileWriter output does not depend on how the writes cut the data', async () => {
  // Compressible and random stretches, 3.3 MiB, a short last block.
  const data = new Uint8Array((3 << 20) + 300_000 + 77);
  let x = 12345;
  for (let i = 0; i < data.length; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    data[i] = (i >> 16) % 3 === 0 ? x >>> 24 : (i >> 9) & 0xff;
  }
  for (const algorithm of ['lz4', 'zstd'] as const) {
    const whole = new MemorySink();
    const w1 = await ZFileWriter.create(whole, { algorithm, blockSize: 4096 });
    await w1.write(data);
    await w1.close();
    const pieces = new MemorySink();
    const w2 = await ZFileWriter.create(pieces, { algorithm, blockSize: 4096 });
    for (let at = 0, step = 1; at < data.length; step = (step * 7 + 3) % 400_000) {
      const n = Math.min(step + 1, data.length - at);
      await w2.write(data.subarray(at, at + n));
      at += n;
    }
    await w2.close();
    assert.equal(sha256(pieces.bytes()), sha256(whole.bytes()), `${algorithm}: same bytes`);
    const r = await ZFileReader.open(new MemoryReader(whole.bytes()));
    const back = new Uint8Array(data.length);
    await r.readAt(back, 0);
    assert.equal(sha256(back), sha256(data), `${algorithm}: decodes to the input`);
  }
});
