import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { gunzipSync } from 'node:zlib';
import fc from 'fast-check';
import type { BlobReader, Evictable } from '../../io/blob-reader.ts';
import { MemoryReader } from '../../io/memory-reader.ts';
import { SliceReader } from '../../io/slice-reader.ts';
import { MemorySink } from '../../io/byte-sink.ts';
import { DataCorruptionError, FailedPreconditionError, ObdError, UnsupportedError } from '../../io/errors.ts';
import { crc32c } from '../../native/index.ts';
import { FIXTURES, sha256, vector } from '../../../test/support/shared.ts';
import { concat, pat, xs, zf1, zf768, zfOdd } from '../../../test/support/generators.ts';
import { decodeZFileHeader, encodeZFileHeader, zfileDigest } from './header.ts';
import { ZFileReader, isZFile } from './reader.ts';
import { ZFileWriter } from './writer.ts';
import type { ZFileWriterOptions } from './writer.ts';

const HELLO = `${FIXTURES}/hello-world-converted/blobs/sha256/022231c3f1af70e0cc42f0c3781eabf174cff608210585bf93fc83e16d33672d`;
const LSMT_MAGIC0 = [0x4c, 0x53, 0x4d, 0x54, 0x00, 0x01, 0x02, 0x00];

/** A reader that fails the test when asked for bytes outside the blob. */
class StrictReader implements BlobReader {
  readonly #bytes: Uint8Array;
  readonly size: number;
  reads = 0;
  closed = false;
  constructor(bytes: Uint8Array) {
    this.#bytes = bytes;
    this.size = bytes.length;
  }
  async readAt(buf: Uint8Array, offset: number): Promise<number> {
    this.reads++;
    assert.ok(offset >= 0 && offset + buf.length <= this.size, `read [${offset}, +${buf.length}) outside ${this.size}`);
    buf.set(this.#bytes.subarray(offset, offset + buf.length));
    return buf.length;
  }
  async close(): Promise<void> {
    this.closed = true;
  }
}

/**
 * Regression model of a cache that served a corrupted copy of a block: the first
 * `badReads` reads touching `target` return it with one byte flipped; `evict` records
 * what the ZFile reader asked to drop.
 */
class FlakyReader extends StrictReader implements Evictable {
  readonly #target: number;
  badReads: number;
  evictions: [number, number][] = [];
  constructor(bytes: Uint8Array, target: number, badReads: number) {
    super(bytes);
    this.#target = target;
    this.badReads = badReads;
  }
  override async readAt(buf: Uint8Array, offset: number): Promise<number> {
    const n = await super.readAt(buf, offset);
    if (this.badReads > 0 && this.#target >= offset && this.#target < offset + n) {
      this.badReads--;
      buf[this.#target - offset]! ^= 0x40;
    }
    return n;
  }
  async evict(offset: number, length: number): Promise<void> {
    this.evictions.push([offset, length]);
  }
}

function file(path: string): Uint8Array {
  return new Uint8Array(readFileSync(path));
}

async function readAll(r: BlobReader): Promise<Uint8Array> {
  const out = new Uint8Array(r.size);
  assert.equal(await r.readAt(out, 0), r.size);
  return out;
}

/** Hashes a reader's content in 4 MiB reads without holding it in memory. */
async function hashReader(r: BlobReader, chunk = 4 << 20): Promise<string> {
  const h = createHash('sha256');
  const buf = new Uint8Array(chunk);
  for (let off = 0; off < r.size; off += chunk) {
    const n = await r.readAt(buf, off);
    h.update(buf.subarray(0, n));
  }
  return h.digest('hex');
}

async function compress(data: Uint8Array, options: ZFileWriterOptions): Promise<Uint8Array> {
  const sink = new MemorySink();
  const w = await ZFileWriter.create(sink, options);
  await w.write(data);
  await w.close();
  return sink.bytes();
}

/** Compressible and incompressible runs mixed: zeros, a pattern and xorshift noise. */
function mixed(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  const noise = xs(Math.ceil(n / 4) * 4, seed || 1);
  for (let i = 0; i < n; i += 3000) {
    const kind = (i / 3000) % 3;
    const end = Math.min(n, i + 3000);
    if (kind === 1) out.set(pat(end - i, i % 251), i);
    else if (kind === 2) out.set(noise.subarray(i, end), i);
  }
  return out;
}

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function ext4Zfile(): Uint8Array {
  // ext4_64.tar.gz holds one GNU-tar member `ext4_64` (payload at 512, octal size at 124).
  const tar = gunzipSync(readFileSync(vector('apply', 'ext4_64.tar.gz')));
  const size = parseInt(new TextDecoder().decode(tar.subarray(124, 135)), 8);
  assert.equal(size, 4737695);
  return new Uint8Array(tar.buffer, tar.byteOffset + 512, size);
}

const VECTORS: [string, () => Uint8Array][] = [
  ['zf_lz4_bs4_crc.zfile', zf1],
  ['zf_lz4_bs16_crc.zfile', zf1],
  ['zf_lz4_bs32_crc.zfile', zf1],
  ['zf_zstd_bs4_crc.zfile', zf1],
  ['zf_zstd_bs16_crc.zfile', zf1],
  ['zf_zstd_bs32_crc.zfile', zf1],
  ['zf_lz4_bs4_nocrc.zfile', zf1],
  ['zf_lz4_bs32_nocrc.zfile', zf1],
  ['zf_zstd_bs4_nocrc.zfile', zf1],
  ['zf_zstd_bs32_nocrc.zfile', zf1],
  ['zf_odd_lz4_bs4_crc.zfile', zfOdd],
  ['zf_odd_zstd_bs16_crc.zfile', zfOdd],
  ['zf_768k_lz4_bs64_crc.zfile', zf768],
  ['zf_lz4_bs64_crc_UNREADABLE.zfile', zf1],
];

test('ZFileReader decodes every zfile vector to its documented input', async () => {
  for (const [name, input] of VECTORS) {
    const want = input();
    const r = await ZFileReader.open(new StrictReader(file(vector('zfile', name))), { name });
    assert.equal(r.size, want.length, name);
    assert.equal(sha256(await readAll(r)), sha256(want), name);
    assert.equal(r.info.source, 'trailer', name);
    assert.equal(r.info.header?.flags, 0x13, name);
    assert.equal(r.info.trailer?.flags, 0x16, name);
    assert.equal(r.info.verify, !name.includes('nocrc'), name);
    if (r.info.verify) assert.equal(await r.verifyAll(), r.blockCount, name);
    await r.close();
  }
});

test('ZFileReader reads the 64 KiB-block file upstream refuses (stored block of 65798 bytes)', async () => {
  const r = await ZFileReader.open(new MemoryReader(file(vector('zfile', 'zf_lz4_bs64_crc_UNREADABLE.zfile'))));
  assert.equal(r.info.blockSize, 65536);
  assert.equal(r.info.maxBlockLength, 65798);
  const want = zf1();
  const buf = new Uint8Array(70000);
  assert.equal(await r.readAt(buf, 786432 - 1000), 70000);
  assert.deepEqual(buf, want.subarray(786432 - 1000, 786432 + 69000));
});

test('ZFileReader decompresses the LSMT commit vectors to the uncompressed commits', async () => {
  const cases: [string, string][] = [
    ['lsmt/L1.lz4.commit', 'lsmt/L1.commit'],
    ['lsmt/L1.zstd.commit', 'lsmt/L1.commit'],
    ['lsmt/L1.lz4.bs32.commit', 'lsmt/L1.commit'],
    ['lsmt/L2.lz4.commit', 'lsmt/L2.commit'],
  ];
  for (const [zf, plain] of cases) {
    const r = await ZFileReader.open(new StrictReader(file(vector(zf))));
    assert.equal(r.info.source, 'header', zf);
    assert.equal(r.info.header?.flags, 0x1b, zf);
    assert.equal(sha256(await readAll(r)), sha256(file(vector(plain))), zf);
    assert.equal(await r.verifyAll(), r.blockCount);
  }
  const merged = await ZFileReader.open(new MemoryReader(file(vector('stack', 'L1L2.merged.lz4'))));
  assert.equal(merged.info.header?.flags, 0x13);
  assert.equal(sha256(await readAll(merged)), '4a8a4a5084db23943eb85ef7fff8cc89195fa685fab770fce56247ff5237ba55');
  const a1 = await ZFileReader.open(new MemoryReader(file(vector('apply', 'A1.lz4.commit'))));
  assert.equal(await hashReader(a1), '53f4c283fd66106bbeaef745d08d3c93924ec7a722971d59c60b8a6c8b5ac11d');
  const a2 = await ZFileReader.open(new MemoryReader(file(vector('apply', 'A2.lz4.commit'))));
  assert.equal(await hashReader(a2), 'd9c3529b15b8d0a459eee246162f1800a4595d07920eaa32353e86baf783e2a2');
});

test('ZFileReader opens the converted hello-world layer with the values of zfile.md §11.2', async () => {
  const blob = file(HELLO);
  assert.equal(sha256(blob), '022231c3f1af70e0cc42f0c3781eabf174cff608210585bf93fc83e16d33672d');
  const payload = new SliceReader(new StrictReader(blob), { start: 1536, size: 639491 });
  const r = await ZFileReader.open(payload);
  const h = r.info.header;
  assert.ok(h !== null);
  assert.equal(r.info.source, 'header');
  assert.equal(h.flags, 0x1b);
  assert.equal(h.digest, 0x0f1f3445);
  assert.equal(h.digest, zfileDigest(blob.subarray(1536, 2048)));
  assert.equal(h.indexOffset, 569127);
  assert.equal(h.indexSize, 17463);
  assert.equal(h.originalFileSize, 71528448);
  assert.equal(h.indexCrc, 0x6dba55b0);
  assert.equal(h.blockSize, 4096);
  assert.equal(h.algo, 1);
  assert.equal(h.verify, true);
  const trailerBytes = blob.subarray(1536 + 639491 - 512, 1536 + 639491);
  const t = decodeZFileHeader(trailerBytes);
  assert.equal(t.flags, 0x16);
  assert.equal(t.digest, 0xffdfe161);
  assert.equal(zfileDigest(trailerBytes), 0xffdfe161);
  assert.equal(r.size, 71528448);
  assert.equal(r.blockCount, 17463);
  assert.deepEqual(r.blockExtent(0), { offset: 512, length: 129 });
  assert.equal(r.info.minBlockLength, 30);
  assert.equal(r.info.maxBlockLength, 4118);
  assert.equal(await r.verifyAll(), 17463);
  const head = new Uint8Array(4096);
  assert.equal(await r.readAt(head, 0), 4096);
  assert.deepEqual([...head.subarray(0, 8)], LSMT_MAGIC0);
  const tail = new Uint8Array(8192);
  assert.equal(await r.readAt(tail, r.size - 100), 100);
});

test('ZFileReader reads the legacy ext4_64 base layer with garbage header fields (zfile.md §11.3)', async () => {
  const zf = ext4Zfile();
  assert.equal(sha256(zf), 'c3a417552a6cf9ffa959b541850bab7d7f08f4255425bf8b48c85f7b36b378d9');
  assert.equal(await isZFile(new MemoryReader(zf)), true);
  const r = await ZFileReader.open(new StrictReader(zf), { name: 'ext4_64' });
  assert.equal(r.info.source, 'trailer');
  assert.equal(r.info.header?.flags, 0x03);
  assert.equal(r.info.trailer?.flags, 0x06);
  assert.equal(r.info.indexOffset, 4207947);
  assert.equal(r.info.indexSize, 132309);
  assert.equal(r.info.originalFileSize, 541937664);
  assert.equal(r.info.blockSize, 4096);
  assert.equal(r.info.algorithm, 'lz4');
  assert.equal(r.info.verify, true);
  assert.equal(await r.verifyAll(), 132309);
  assert.equal(await hashReader(r), '799dbd74cbcfbd7f37611057130b20fda0e1e671280df97cc3a05d73620d5ac7');
});

test('ZFileReader round-trips sizes 0..1 MiB+1 for every block size and both algorithms (§11.4)', async () => {
  const sizes = [0, 1, 4095, 4096, 4097, (1 << 20) + 1];
  const rand = rng(11);
  for (const algorithm of ['lz4', 'zstd'] as const) {
    for (const blockSize of [4096, 8192, 16384, 32768, 65536]) {
      for (const n of sizes) {
        const data = mixed(n, n + blockSize);
        const z = await compress(data, { algorithm, blockSize });
        const r = await ZFileReader.open(new StrictReader(z));
        const label = `${algorithm} bs ${blockSize} n ${n}`;
        assert.equal(r.size, n, label);
        assert.equal(r.blockCount, Math.ceil(n / blockSize), label);
        assert.deepEqual(await readAll(r), data, label);
        for (let k = 0; k < 40; k++) {
          const off = Math.floor(rand() * (n + 2 * blockSize));
          const len = Math.floor(rand() * 3 * blockSize);
          const buf = new Uint8Array(len);
          const got = await r.readAt(buf, off);
          const want = data.subarray(Math.min(off, n), Math.min(off + len, n));
          assert.equal(got, want.length, `${label} read [${off}, +${len})`);
          assert.deepEqual(buf.subarray(0, got), want, `${label} read [${off}, +${len})`);
        }
        // Block-boundary crossings.
        if (n >= blockSize + 5) {
          const buf = new Uint8Array(10);
          assert.equal(await r.readAt(buf, blockSize - 5), 10);
          assert.deepEqual(buf, data.subarray(blockSize - 5, blockSize + 5));
        }
        assert.equal(await r.readAt(new Uint8Array(10), n), 0, label);
        assert.equal(await r.readAt(new Uint8Array(0), 0), 0, label);
      }
    }
  }
});

test('ZFileReader serves concurrent reads correctly', async () => {
  const data = mixed(3 << 20, 7);
  const r = await ZFileReader.open(new MemoryReader(await compress(data, { algorithm: 'zstd', blockSize: 16384 })));
  const rand = rng(5);
  const jobs = Array.from({ length: 64 }, () => {
    const off = Math.floor(rand() * data.length);
    const buf = new Uint8Array(Math.floor(rand() * (2 << 20)));
    return r.readAt(buf, off).then((n) => assert.deepEqual(buf.subarray(0, n), data.subarray(off, off + n)));
  });
  await Promise.all(jobs);
});

test('ZFileReader opens a header-rewritten file without its trailer, and needs the trailer otherwise (§11.5)', async () => {
  const data = mixed(100000, 3);
  const rewritten = await compress(data, { rewriteHeader: true });
  const head = decodeZFileHeader(rewritten.subarray(0, 512));
  assert.equal(head.flags, 0x1b);
  assert.equal(head.originalFileSize, 100000);
  const cut = new StrictReader(rewritten.subarray(0, rewritten.length - 512));
  const r = await ZFileReader.open(cut);
  assert.equal(r.info.source, 'header');
  assert.equal(r.info.trailer, null);
  assert.deepEqual(await readAll(r), data);

  const plain = await compress(data, {});
  const h = decodeZFileHeader(plain.subarray(0, 512));
  assert.equal(h.flags, 0x13);
  assert.deepEqual([h.indexOffset, h.indexSize, h.originalFileSize, h.indexCrc], [0, 0, 0, 0]);
  const ok = await ZFileReader.open(new StrictReader(plain));
  assert.equal(ok.info.source, 'trailer');
  assert.deepEqual(await readAll(ok), data);
  await assert.rejects(ZFileReader.open(new StrictReader(plain.subarray(0, plain.length - 512))), DataCorruptionError);
  await assert.rejects(ZFileReader.open(new StrictReader(plain.subarray(0, plain.length - 1))), DataCorruptionError);
});

test('ZFileReader reports a corrupted block by index and offset, after retries (§11.6)', async () => {
  const data = mixed(40000, 9);
  const z = await compress(data, {});
  const clean = await ZFileReader.open(new MemoryReader(z));
  const { offset, length } = clean.blockExtent(3);
  const bad = z.slice();
  bad[offset + Math.floor(length / 2)]! ^= 0x01;
  const r = await ZFileReader.open(new StrictReader(bad));
  await assert.rejects(
    r.readAt(new Uint8Array(100), 3 * 4096 + 10),
    (e: unknown) =>
      e instanceof DataCorruptionError &&
      e.message === `Cannot read ZFile block 3 at offset ${offset}: CRC mismatch after 3 retries`,
  );
  const other = new Uint8Array(4096);
  assert.equal(await r.readAt(other, 0), 4096);
  assert.deepEqual(other, data.subarray(0, 4096));
  await assert.rejects(r.verifyAll(), /block 3 at offset/);
});

test('ZFileReader refuses a flipped jump-table, header or trailer byte (§11.6)', async () => {
  const z = await compress(mixed(40000, 9), {});
  const t = decodeZFileHeader(z.subarray(z.length - 512));
  const table = z.slice();
  table[t.indexOffset + 5]! ^= 0x10;
  await assert.rejects(ZFileReader.open(new MemoryReader(table)), /jump table CRC/);
  const header = z.slice();
  header[60]! ^= 0x01;
  await assert.rejects(ZFileReader.open(new MemoryReader(header)), /header: digest/);
  await assert.rejects(isZFile(new MemoryReader(header)), DataCorruptionError);
  const unused = z.slice();
  unused[300]! ^= 0x01; // bytes 96..511 are covered by the digest too
  await assert.rejects(ZFileReader.open(new MemoryReader(unused)), /digest/);
  const trailer = z.slice();
  trailer[z.length - 512 + 70]! ^= 0x01;
  await assert.rejects(ZFileReader.open(new MemoryReader(trailer)), /trailer: digest/);
});

/** Rewrites the trailer of `z` through `edit` (digest recomputed) and optionally the jump table. */
function patchTrailer(z: Uint8Array, edit: (h: ReturnType<typeof decodeZFileHeader>) => void): Uint8Array {
  const out = z.slice();
  const h = decodeZFileHeader(out.subarray(out.length - 512));
  edit(h);
  out.set(encodeZFileHeader(h), out.length - 512);
  return out;
}

test('ZFileReader enforces the limits of §11.7 and bounds every offset', async () => {
  const z = await compress(mixed(20000, 1), { blockSize: 65536 });
  await assert.rejects(
    ZFileReader.open(new MemoryReader(patchTrailer(z, (h) => (h.blockSize = 131072)))),
    UnsupportedError,
  );
  await assert.rejects(
    ZFileReader.open(new MemoryReader(patchTrailer(z, (h) => {
      h.indexSize = 1_000_000_001;
      h.originalFileSize = 1_000_000_001 * 65536;
    }))),
    /index_size 1000000001 exceeds/,
  );
  await assert.rejects(
    ZFileReader.open(new MemoryReader(patchTrailer(z, (h) => (h.algo = 0)))),
    UnsupportedError,
  );
  await assert.rejects(
    ZFileReader.open(new MemoryReader(patchTrailer(z, (h) => (h.indexOffset = z.length)))),
    /lies outside the data area/,
  );

  // A jump-table entry of 4 with verify = 1 (index CRC fixed up so only the length check fires).
  const small = await compress(mixed(20000, 1), {});
  const t = decodeZFileHeader(small.subarray(small.length - 512));
  const four = small.slice();
  new DataView(four.buffer).setUint32(t.indexOffset + 4, 4, true);
  const fixed = patchTrailer(four, (h) => (h.indexCrc = crc32c(four.subarray(t.indexOffset, t.indexOffset + 4 * t.indexSize))));
  await assert.rejects(ZFileReader.open(new MemoryReader(fixed)), /entry 1 has length 4, outside 5\.\./);
  // Entries that add up past the jump table.
  const long = small.slice();
  new DataView(long.buffer).setUint32(t.indexOffset, 5000, true);
  const fixed2 = patchTrailer(long, (h) => (h.indexCrc = crc32c(long.subarray(t.indexOffset, t.indexOffset + 4 * t.indexSize))));
  await assert.rejects(ZFileReader.open(new MemoryReader(fixed2)), /past the jump table/);
});

test('ZFileReader never reads outside the blob and throws only domain errors on mutated input', async () => {
  const bases = [
    await compress(mixed(30000, 2), { blockSize: 4096 }),
    await compress(mixed(30000, 2), { algorithm: 'zstd', verify: false, rewriteHeader: true }),
  ];
  await fc.assert(
    fc.asyncProperty(
      fc.nat({ max: 1 }),
      fc.array(fc.tuple(fc.nat(), fc.nat({ max: 255 })), { minLength: 1, maxLength: 4 }),
      fc.boolean(),
      async (which, flips, fixDigests) => {
        const z = bases[which]!.slice();
        for (const [at, v] of flips) z[at % z.length] = v;
        if (fixDigests) {
          // Keep records self-consistent so the mutation reaches the deeper checks.
          for (const at of [0, z.length - 512]) {
            new DataView(z.buffer).setUint32(at + 28, zfileDigest(z.subarray(at, at + 512)), true);
          }
        }
        try {
          const r = await ZFileReader.open(new StrictReader(z));
          await readAll(r);
        } catch (e) {
          assert.ok(e instanceof ObdError, `unexpected ${String(e)}`);
        }
      },
    ),
    { seed: 77, numRuns: 400 },
  );
});

test('ZFileReader retries a CRC mismatch through Evictable and then succeeds', async () => {
  const data = mixed(20000, 4);
  const z = await compress(data, {});
  const { offset, length } = (await ZFileReader.open(new MemoryReader(z))).blockExtent(2);
  const flaky = new FlakyReader(z, offset + 7, 2);
  const r = await ZFileReader.open(flaky);
  assert.deepEqual(await readAll(r), data);
  assert.deepEqual(flaky.evictions, [
    [offset, length],
    [offset, length],
  ]);
});

test('ZFileReader gives up after 3 retries when the block stays corrupt', async () => {
  const z = await compress(mixed(20000, 4), {});
  const { offset, length } = (await ZFileReader.open(new MemoryReader(z))).blockExtent(2);
  const flaky = new FlakyReader(z, offset + 7, Infinity);
  const r = await ZFileReader.open(flaky);
  const before = flaky.reads;
  await assert.rejects(readAll(r), new RegExp(`block 2 at offset ${offset}: CRC mismatch after 3 retries`));
  assert.equal(flaky.reads - before, 4);
  assert.equal(flaky.evictions.length, 3);
  assert.deepEqual(flaky.evictions[0], [offset, length]);
});

test('ZFileReader.open rereads a jump table that fails its CRC through Evictable, and gives up after 3 retries', async () => {
  const data = mixed(20000, 4);
  const z = await compress(data, {});
  // A byte of the jump table: right before the 512-byte trailer.
  const inTable = z.length - 512 - 3;
  const flaky = new FlakyReader(z, inTable, 1);
  const r = await ZFileReader.open(flaky);
  assert.deepEqual(await readAll(r), data);
  assert.deepEqual(flaky.evictions, [[0, z.length]]);
  const broken = new FlakyReader(z, inTable, Infinity);
  await assert.rejects(ZFileReader.open(broken), /jump table CRC/);
  assert.equal(broken.evictions.length, 3);
});

test('ZFileReader.prefetch reads exactly the stored blocks of a range, without checking or decoding them', async () => {
  const data = mixed(20000, 4);
  const z = await compress(data, {});
  const probe = await ZFileReader.open(new MemoryReader(z));
  const first = probe.blockExtent(1);
  const last = probe.blockExtent(3);
  // Block 2 is corrupt: prefetch does not look, a read would.
  const flaky = new FlakyReader(z, probe.blockExtent(2).offset + 3, Infinity);
  const r = await ZFileReader.open(flaky);
  const seen: Array<[number, number]> = [];
  const inner = flaky.readAt.bind(flaky);
  flaky.readAt = async (buf, offset) => {
    seen.push([offset, buf.length]);
    return inner(buf, offset);
  };
  await r.prefetch(4096 + 100, 3 * 4096 - 200);
  assert.deepEqual(seen, [[first.offset, last.offset + last.length - first.offset]]);
  assert.deepEqual(flaky.evictions, []);
  await r.prefetch(data.length + 10, 5);
  assert.equal(seen.length, 1, 'nothing past the end');
  await assert.rejects(r.readAt(new Uint8Array(4096), 2 * 4096), /CRC mismatch/);
});

test('isZFile() tells ZFiles from plain blobs', async () => {
  assert.equal(await isZFile(new MemoryReader(new Uint8Array(100))), false);
  assert.equal(await isZFile(new MemoryReader(file(vector('lsmt', 'L1.commit')))), false);
  assert.equal(await isZFile(new MemoryReader(file(vector('lsmt', 'L1.lz4.commit')))), true);
  const trailerOnly = file(vector('zfile', 'zf_lz4_bs4_crc.zfile'));
  assert.equal(await isZFile(new MemoryReader(trailerOnly.subarray(trailerOnly.length - 512))), false);
  await assert.rejects(ZFileReader.open(new MemoryReader(new Uint8Array(100))), /shorter than a ZFile header/);
  await assert.rejects(ZFileReader.open(new MemoryReader(new Uint8Array(4096))), /not a ZFile/);
});

test('ZFileReader rejects reads after close and closes its source once', async () => {
  const src = new StrictReader(await compress(concat(pat(5000, 1)), {}));
  const r = await ZFileReader.open(src);
  await r.close();
  await r.close();
  assert.equal(src.closed, true);
  await assert.rejects(r.readAt(new Uint8Array(1), 0), FailedPreconditionError);
  const nocrc = await ZFileReader.open(new MemoryReader(await compress(pat(10, 0), { verify: false })));
  await assert.rejects(nocrc.verifyAll(), FailedPreconditionError);
});
