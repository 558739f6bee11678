import { test } from 'node:test';
import assert from 'node:assert/strict';
import { appendFile, mkdtemp, open, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readBytes } from '../io/blob-reader.ts';
import { DataCorruptionError, FailedPreconditionError, InvalidArgumentError, UnavailableError } from '../io/errors.ts';
import { MemoryReader } from '../io/memory-reader.ts';
import { BlockCache, type BlockCacheOptions } from './block-cache.ts';
import { CachedBlobReader } from './cached-blob-reader.ts';
import { JOURNAL_HEADER_SIZE, replayJournal } from './unit-journal.ts';
import { blobBytes, CountingReader } from './_counting-reader.ts';

const KIB = 1024;
const UNIT = 64 * KIB;
const DIGEST = `sha256:${'ab'.repeat(32)}`;
const DIGEST2 = `sha256:${'cd'.repeat(32)}`;

type T = { after: (fn: () => Promise<void>) => void };

async function tempDir(t: T): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'obd-cache-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

async function openCache(t: T, options: Partial<BlockCacheOptions> & { dir: string }): Promise<BlockCache> {
  const cache = await BlockCache.open({ refillSize: UNIT, ...options });
  t.after(() => cache.close());
  return cache;
}

/** A cache, a source of `size` bytes and a reader over both. */
async function setup(t: T, size = 16 * UNIT + 1000, options: Partial<BlockCacheOptions> = {}) {
  const dir = options.dir ?? (await tempDir(t));
  const cache = await openCache(t, { ...options, dir });
  const data = blobBytes(size, 42);
  const source = new CountingReader(data);
  const reader = await CachedBlobReader.open(cache, source, { digest: DIGEST });
  t.after(() => reader.close());
  return { dir, cache, data, source, reader };
}

test('a cold read fetches its refill units in one source read; a warm read makes none', async (t) => {
  const { reader, source, data } = await setup(t);
  const got = await readBytes(reader, 100, 300 * KIB);
  assert.deepEqual(got, data.subarray(100, 100 + 300 * KIB));
  assert.deepEqual(source.calls, [[0, 5 * UNIT]], 'units 0..4 in one read');
  assert.deepEqual(reader.stats, { hitBytes: 0, missBytes: 300 * KIB, sourceReads: 1, sourceBytes: 5 * UNIT, bypassedBytes: 0 });

  const again = await readBytes(reader, 100, 300 * KIB);
  assert.deepEqual(again, got);
  assert.equal(source.reads, 1, 'warm read: zero source reads');
  assert.equal(reader.stats.hitBytes, 300 * KIB);

  // The whole blob: units 0..4 come from the file, 5..16 (the last one short) in one read.
  const all = await readBytes(reader, 0, reader.size);
  assert.deepEqual(all, data);
  assert.deepEqual(source.calls[1], [5 * UNIT, data.length - 5 * UNIT]);
  assert.equal(source.reads, 2);
  assert.equal(reader.stats.hitBytes, 300 * KIB + 5 * UNIT);
  assert.ok(reader.isCached(0, reader.size));
});

test('reads at and past the end are clipped like any BlobReader', async (t) => {
  const { reader, data } = await setup(t);
  const tail = new Uint8Array(5000);
  assert.equal(await reader.readAt(tail, data.length - 1000), 1000);
  assert.deepEqual(tail.subarray(0, 1000), data.subarray(data.length - 1000));
  assert.equal(await reader.readAt(new Uint8Array(10), data.length), 0);
  assert.equal(await reader.readAt(new Uint8Array(0), 0), 0);
  await assert.rejects(reader.readAt(new Uint8Array(1), -1), RangeError);
});

test('a missing run longer than maxFetchBytes is split into several source reads', async (t) => {
  const { reader, source } = await setup(t, 16 * UNIT, { maxFetchBytes: 4 * UNIT });
  await readBytes(reader, 0, 16 * UNIT);
  assert.deepEqual(source.calls.map(([o, l]) => [o / UNIT, l / UNIT]), [[0, 4], [4, 4], [8, 4], [12, 4]]);
});

test('concurrent overlapping reads from two readers fetch each unit exactly once', async (t) => {
  const size = 40 * UNIT + 123;
  const { cache, reader, source, data } = await setup(t, size);
  source.delayMs = 5;
  const source2 = new CountingReader(data);
  source2.delayMs = 5;
  const reader2 = await CachedBlobReader.open(cache, source2, { digest: DIGEST });
  t.after(() => reader2.close());
  let x = 12345;
  const rnd = (n: number): number => ((x = (Math.imul(x, 1103515245) + 12345) >>> 0) % n);
  const wave = (count: number) =>
    Promise.all(
      Array.from({ length: count }, async (_, i) => {
        const offset = rnd(size);
        const length = 1 + rnd(3 * UNIT);
        const r = i % 2 === 0 ? reader : reader2;
        const buf = new Uint8Array(length);
        const n = await r.readAt(buf, offset);
        assert.equal(n, Math.min(length, size - offset));
        assert.deepEqual(buf.subarray(0, n), data.subarray(offset, offset + n));
      }),
    );
  await wave(100); // all concurrent: misses, many served by other readers' fills
  await wave(100); // again: hits for what the first wave stored, fills for the rest
  const calls = [...source.calls, ...source2.calls].sort((a, b) => a[0] - b[0]);
  for (let i = 1; i < calls.length; i++) {
    const [po, pl] = calls[i - 1] as [number, number];
    assert.ok(po + pl <= (calls[i] as [number, number])[0], `source reads overlap: ${String(calls[i - 1])} and ${String(calls[i])}`);
  }
  const fetched = source.bytes + source2.bytes;
  assert.ok(fetched <= size, `fetched ${fetched} bytes of a ${size}-byte blob`);
  const s1 = reader.stats;
  const s2 = reader2.stats;
  assert.equal(s1.sourceBytes + s2.sourceBytes, fetched);
  assert.ok(s1.hitBytes + s2.hitBytes > 0 && s1.missBytes + s2.missBytes > 0);
});

test('evict() drops the units, punches the hole and the next read fetches only them', async (t) => {
  const { dir, cache, reader, source, data } = await setup(t, 16 * UNIT);
  await readBytes(reader, 0, reader.size);
  await reader.flush();
  const used = cache.stats.usedBytes;
  const blocks = (await stat(join(dir, DIGEST))).blocks;
  await reader.evict(UNIT + 10, 2); // inside unit 1
  await reader.evict(5 * UNIT - 1, 2); // spans units 4 and 5
  assert.equal(reader.isCached(UNIT, 1), false);
  assert.equal(reader.isCached(4 * UNIT, 2 * UNIT), false);
  assert.equal(reader.isCached(2 * UNIT, 2 * UNIT), true);
  assert.equal(cache.stats.usedBytes, used - 3 * UNIT);
  assert.ok((await stat(join(dir, DIGEST))).blocks <= blocks - (3 * UNIT) / 512, 'hole punched');
  source.calls = [];
  assert.deepEqual(await readBytes(reader, 0, reader.size), data);
  assert.deepEqual(source.calls, [[UNIT, UNIT], [4 * UNIT, 2 * UNIT]]);
  // Evicting nothing present, or outside the blob, is harmless.
  await reader.evict(100 * UNIT, UNIT);
  await reader.evict(0, 0);
});

test('an eviction is durable: after a reopen the evicted units are fetched again', async (t) => {
  const dir = await tempDir(t);
  const data = blobBytes(6 * UNIT, 8);
  {
    const cache = await BlockCache.open({ dir, refillSize: UNIT });
    const reader = await CachedBlobReader.open(cache, new MemoryReader(data), { digest: DIGEST });
    await readBytes(reader, 0, data.length);
    await reader.evict(2 * UNIT, 2 * UNIT);
    await reader.close();
    await cache.close();
  }
  const cache = await openCache(t, { dir });
  assert.equal(cache.stats.usedBytes, 4 * UNIT);
  const source = new CountingReader(data);
  const reader = await CachedBlobReader.open(cache, source, { digest: DIGEST });
  t.after(() => reader.close());
  assert.deepEqual(await readBytes(reader, 0, data.length), data);
  assert.deepEqual(source.calls, [[2 * UNIT, 2 * UNIT]]);
});

test('evict() during a fill of the same unit waits for it and leaves the unit absent', async (t) => {
  const { reader, source, data } = await setup(t, 4 * UNIT);
  source.delayMs = 30;
  const read = readBytes(reader, 0, 2 * UNIT);
  await new Promise((r) => setImmediate(r));
  const evict = reader.evict(UNIT, 1);
  assert.deepEqual(await read, data.subarray(0, 2 * UNIT));
  await evict;
  assert.equal(reader.isCached(0, UNIT), true);
  assert.equal(reader.isCached(UNIT, UNIT), false);
  source.delayMs = 0;
  assert.deepEqual(await readBytes(reader, 0, 4 * UNIT), data);
});

test('reads racing evictions of the same units always return the blob bytes', async (t) => {
  const { reader, data } = await setup(t, 8 * UNIT);
  const work: Array<Promise<unknown>> = [];
  for (let i = 0; i < 200; i++) {
    const off = (i * 7919) % (8 * UNIT - 3000);
    if (i % 3 === 0) work.push(reader.evict(off, 2000));
    work.push(readBytes(reader, off, 3000).then((b) => assert.deepEqual(b, data.subarray(off, off + 3000))));
  }
  await Promise.all(work);
  const { hitBytes, missBytes } = reader.stats;
  assert.equal(hitBytes + missBytes, 200 * 3000, 'bytes of restarted rounds are not counted twice');
});

test('the journal records exactly the stored units, and a reopen serves them with zero source reads', async (t) => {
  const dir = await tempDir(t);
  const data = blobBytes(10 * UNIT, 7);
  {
    const cache = await BlockCache.open({ dir, refillSize: UNIT });
    const reader = await CachedBlobReader.open(cache, new MemoryReader(data), { digest: DIGEST });
    await readBytes(reader, 2 * UNIT, 3 * UNIT);
    await readBytes(reader, 8 * UNIT, 10);
    await reader.close();
    await cache.close();
  }
  const replay = replayJournal(await readFile(join(dir, `${DIGEST}.units`)));
  assert.deepEqual([...replay.present.runs()], [[2, 3], [8, 1]]);
  // A torn tail (half a record) is ignored and cut off.
  await appendFile(join(dir, `${DIGEST}.units`), new Uint8Array(7).fill(0xee));
  // Bytes written to the cache file without a record are not trusted.
  const fh = await open(join(dir, DIGEST), 'r+');
  await fh.write(new Uint8Array(UNIT).fill(0x55), 0, UNIT, 0);
  await fh.close();

  const cache = await openCache(t, { dir });
  assert.equal(cache.stats.usedBytes, 4 * UNIT);
  const source = new CountingReader(data);
  const reader = await CachedBlobReader.open(cache, source, { digest: DIGEST });
  t.after(() => reader.close());
  assert.deepEqual(await readBytes(reader, 2 * UNIT, 3 * UNIT), data.subarray(2 * UNIT, 5 * UNIT));
  assert.equal(source.reads, 0);
  assert.deepEqual(await readBytes(reader, 0, UNIT), data.subarray(0, UNIT), 'unrecorded unit is fetched again');
  assert.equal(source.reads, 1);
  await reader.flush();
  assert.equal((await stat(join(dir, `${DIGEST}.units`))).size % 16, 0, 'torn tail truncated before appending');
});

test('a corrupt journal header or a changed refill size discards the cached bytes', async (t) => {
  const dir = await tempDir(t);
  const data = blobBytes(4 * UNIT, 9);
  const fill = async (refillSize: number): Promise<number> => {
    const cache = await BlockCache.open({ dir, refillSize });
    const source = new CountingReader(data);
    const reader = await CachedBlobReader.open(cache, source, { digest: DIGEST });
    assert.deepEqual(await readBytes(reader, 0, data.length), data);
    await reader.close();
    await cache.close();
    return source.reads;
  };
  assert.equal(await fill(UNIT), 1);
  assert.equal(await fill(UNIT), 0);
  assert.equal(await fill(2 * UNIT), 1, 'other refill size: refetched');
  const journal = join(dir, `${DIGEST}.units`);
  const bytes = await readFile(journal);
  bytes[3] = (bytes[3] as number) ^ 0xff;
  await writeFile(journal, bytes);
  assert.equal(await fill(2 * UNIT), 1, 'corrupt header: refetched');
  assert.equal((await readFile(journal)).length > JOURNAL_HEADER_SIZE, true);
});

test('a failing source fails the read, stores nothing, and a later read retries', async (t) => {
  const { reader, source, data, cache } = await setup(t, 4 * UNIT);
  source.failNext = 1;
  await assert.rejects(readBytes(reader, 0, 10), UnavailableError);
  assert.equal(reader.isCached(0, 10), false);
  assert.equal(cache.stats.usedBytes, 0);
  assert.deepEqual(await readBytes(reader, 0, 10), data.subarray(0, 10));
  assert.equal(cache.stats.usedBytes, UNIT);
});

test('a source that ends early is reported as corruption', async (t) => {
  const dir = await tempDir(t);
  const cache = await openCache(t, { dir });
  const short = new MemoryReader(new Uint8Array(1000));
  const liar = { size: 5000, readAt: (b: Uint8Array, o: number) => short.readAt(b, o), close: () => short.close() };
  const reader = await CachedBlobReader.open(cache, liar, { digest: DIGEST });
  t.after(() => reader.close());
  await assert.rejects(readBytes(reader, 0, 5000), (e: unknown) => e instanceof DataCorruptionError && /source ended there/.test(e.message));
});

test('the journal is compacted as it grows and stays correct', async (t) => {
  const dir = await tempDir(t);
  const data = blobBytes(64 * UNIT, 3);
  const cache = await BlockCache.open({ dir, refillSize: UNIT, compactAfterRecords: 8 });
  const reader = await CachedBlobReader.open(cache, new MemoryReader(data), { digest: DIGEST });
  // Every other unit, one at a time and each recorded separately, then the gaps.
  for (const u of [...Array(32).keys()].map((i) => 2 * i).concat([...Array(32).keys()].map((i) => 2 * i + 1))) {
    await readBytes(reader, u * UNIT, 1);
    await reader.flush();
  }
  const records = ((await stat(join(dir, `${DIGEST}.units`))).size - JOURNAL_HEADER_SIZE) / 16;
  assert.ok(records < 40, `journal holds ${records} records after 64 single-unit appends`);
  await reader.close();
  await cache.close();
  const again = await openCache(t, { dir, compactAfterRecords: 8 });
  const source = new CountingReader(data);
  const r2 = await CachedBlobReader.open(again, source, { digest: DIGEST });
  t.after(() => r2.close());
  assert.deepEqual(await readBytes(r2, 0, data.length), data);
  assert.equal(source.reads, 0);
});

test('closed readers and readers of a closed cache reject reads', async (t) => {
  const { reader, cache, data } = await setup(t, 2 * UNIT);
  const other = await CachedBlobReader.open(cache, new MemoryReader(data), { digest: DIGEST });
  await readBytes(other, 0, 1);
  await other.close();
  await other.close();
  await assert.rejects(other.readAt(new Uint8Array(1), 0), FailedPreconditionError);
  assert.deepEqual(await readBytes(reader, 0, 1), data.subarray(0, 1), 'the shared entry stays open for the other reader');
  await cache.close();
  await assert.rejects(reader.readAt(new Uint8Array(1), 0), FailedPreconditionError);
  await assert.rejects(CachedBlobReader.open(cache, new MemoryReader(data), { digest: DIGEST2 }), FailedPreconditionError);
});

test('open() rejects bad digests, sizes that disagree and bad options', async (t) => {
  const { cache } = await setup(t, 2 * UNIT);
  await assert.rejects(CachedBlobReader.open(cache, new MemoryReader(new Uint8Array(1)), { digest: 'sha256:xyz' }), InvalidArgumentError);
  await assert.rejects(CachedBlobReader.open(cache, new MemoryReader(new Uint8Array(1)), { digest: '../etc:0123456789abcdef0123456789abcdef' }), InvalidArgumentError);
  await assert.rejects(CachedBlobReader.open(cache, new MemoryReader(new Uint8Array(5)), { digest: DIGEST }), /open as 131072 bytes/);
  const dir = await tempDir(t);
  await assert.rejects(BlockCache.open({ dir, refillSize: 3 * 4096 }), InvalidArgumentError);
  await assert.rejects(BlockCache.open({ dir, capacityBytes: 100, lowWaterBytes: 200 }), InvalidArgumentError);
});
