import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFile, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MemorySink } from '../../io/byte-sink.ts';
import { FailedPreconditionError, InvalidArgumentError } from '../../io/errors.ts';
import { FileSink } from '../../io/file-sink.ts';
import { MemoryReader } from '../../io/memory-reader.ts';
import { fill, pat, xs } from '../../../test/support/generators.ts';
import { sha256, vector } from '../../../test/support/shared.ts';
import { coalesceSegments, commitLayer, commitWritableLayer, compactIndex } from './commit.ts';
import { decodeHeaderTrailer, HEADER_TRAILER_SIZE } from './header-trailer.ts';
import type { WritableLayer } from './layer.ts';
import { decodeSegments, INVALID_OFFSET, type Segment } from './segment.ts';
import { createWritableLayer, openWritableLayer } from './writable-layer.ts';

const GIB = 1 << 30;
const U1 = '00000000-0000-4000-8000-0000000000a1';
const U2 = '00000000-0000-4000-8000-0000000000a2';
const L1_COMMIT_SHA = '881ff75f5fc4b1c854cd9ac50057d4735fa28d83b3f8a8b6de5897574bf3fb51';
const L2_COMMIT_SHA = '8d1466b2284cea908ef65116ba1a96a6c40d90a9e324dcf237d5211649a691d0';

const seg = (offset: number, length: number, moffset: number): Segment => ({ offset, length, moffset, zeroed: false, tag: 0 });
const quads = (list: Segment[]): Array<[number, number, number, boolean]> =>
  list.map((s) => [s.offset, s.length, s.moffset, s.zeroed]);

async function tempDir(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'obd-commit-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Parses a committed blob: trailer, valid index entries, and a reader of its content. */
function parseBlob(blob: Uint8Array): { segments: Segment[]; read: (offset: number, length: number) => Uint8Array } {
  const trailer = decodeHeaderTrailer(blob.subarray(blob.length - HEADER_TRAILER_SIZE));
  const raw = blob.subarray(trailer.indexOffset, trailer.indexOffset + trailer.indexSize * 16);
  const segments = decodeSegments(raw).filter((s) => s.offset !== INVALID_OFFSET);
  const read = (offset: number, length: number): Uint8Array => {
    const out = new Uint8Array(length);
    for (const s of segments) {
      const b = Math.max(s.offset * 512, offset);
      const e = Math.min((s.offset + s.length) * 512, offset + length);
      if (b >= e || s.zeroed) continue;
      out.set(blob.subarray(s.moffset * 512 + b - s.offset * 512, s.moffset * 512 + e - s.offset * 512), b - offset);
    }
    return out;
  };
  return { segments, read };
}

async function replayL1(layer: WritableLayer): Promise<void> {
  await layer.write(pat(65536, 0), 0);
  await layer.write(xs(4096, 1), 1048576);
  await layer.write(fill(1536, 0x5a), 8389120);
  await layer.write(fill(8192, 0xab), 16384);
  await layer.write(pat(131072, 7), 2097152);
  await layer.trim(2129920, 16384);
}

async function replayL2(layer: WritableLayer): Promise<void> {
  await layer.write(fill(4096, 0xcd), 4096);
  await layer.write(xs(1024, 2), 1050624);
  await layer.trim(8388608, 4096);
  await layer.write(pat(16384, 3), 67108864);
}

test('coalesceSegments() merges as lsmt.md §19.4 says', () => {
  assert.deepEqual(quads(coalesceSegments([seg(5, 5, 0), seg(10, 10, 5), seg(100, 10, 20)])), [
    [5, 15, 0, false],
    [100, 10, 20, false],
  ]);
  assert.deepEqual(
    quads(coalesceSegments([seg(5, 5, 0), { ...seg(10, 10, 5), tag: 1 }, seg(20, 5, 15)])),
    [
      [5, 5, 0, false],
      [10, 10, 5, false],
      [20, 5, 15, false],
    ],
  );
  // lengths summing to exactly 16383 stay apart; 16382 merges
  assert.equal(coalesceSegments([seg(0, 16000, 8), seg(16000, 383, 16008)]).length, 2);
  assert.equal(coalesceSegments([seg(0, 16000, 8), seg(16000, 382, 16008)]).length, 1);
  // zeroed entries: the map end is moffset itself
  assert.deepEqual(quads(coalesceSegments([{ ...seg(0, 4, 9), zeroed: true }, { ...seg(4, 4, 9), zeroed: true }])), [
    [0, 8, 9, true],
  ]);
  assert.equal(coalesceSegments([{ ...seg(0, 4, 9), zeroed: true }, seg(4, 4, 9)]).length, 2);
});

test('compactIndex() applies the 64-sector piece rule of lsmt.md §19.5', () => {
  const one = compactIndex([seg(0, 16383, 1000)]);
  assert.deepEqual(quads(one.entries), [
    [0, 16320, 8, false],
    [16320, 63, 16328, false],
  ]);
  assert.equal(one.dataSectors, 16383);
  const two = compactIndex([seg(0, 16383, 1000), seg(16383, 100, 90000)]);
  assert.deepEqual(quads(two.entries), [
    [0, 16320, 8, false],
    [16320, 163, 16328, false],
  ]);
  const long = compactIndex([seg(0, 16383, 8), seg(16383, 16383, 16391), seg(32766, 16383, 32774)]);
  assert.ok(long.entries.every((e) => e.length < 16383));
  // 31 + 31 + 255 pieces of 64 = 16382: odd-sized pieces meet into the longest possible run
  assert.deepEqual(quads(compactIndex([seg(0, 31, 8), seg(31, 31, 99), seg(62, 16383, 500)]).entries), [
    [0, 16382, 8, false],
    [16382, 63, 16390, false],
  ]);
  // zeroed entries point at the cursor (the next data position)
  assert.deepEqual(quads(compactIndex([seg(0, 10, 50), { ...seg(10, 5, 99), zeroed: true }, seg(20, 3, 70)]).entries), [
    [0, 10, 8, false],
    [10, 5, 18, true],
    [20, 3, 18, false],
  ]);
});

test('commitLayer() pads the index to a multiple of 256 entries, none when already a multiple', async () => {
  const data = new MemoryReader(xs(300 * 1024, 5));
  for (const [count, padded] of [
    [0, 0],
    [1, 256],
    [256, 256],
    [257, 512],
  ] as const) {
    const segments = Array.from({ length: count }, (_, i) => seg(i * 2, 1, 8 + i));
    const sink = new MemorySink();
    const result = await commitLayer({ segments, sources: [data], header: { virtualSize: GIB } }, sink);
    const blob = sink.bytes();
    const header = decodeHeaderTrailer(blob);
    const trailer = decodeHeaderTrailer(blob.subarray(blob.length - HEADER_TRAILER_SIZE));
    assert.equal(header.flags, 0x07);
    assert.equal(header.indexOffset, 0);
    assert.equal(header.indexSize, 0);
    assert.equal(trailer.flags, 0x06);
    assert.equal(trailer.indexSize, padded);
    assert.equal(trailer.indexOffset, 4096 + count * 512);
    assert.deepEqual(result, { indexOffset: 4096 + count * 512, indexSize: padded });
    assert.equal(blob.length, trailer.indexOffset + 16 * padded + 4096);
    assert.equal(parseBlob(blob).segments.length, count);
  }
});

test('commitLayer() streams data from several sources in order and keeps tags as produced', async () => {
  const a = xs(12 << 20, 11);
  const b = xs(12 << 20, 12);
  const segments: Segment[] = [];
  // many small non-contiguous reads, a long contiguous run, zeroed entries, two tags
  for (let i = 0; i < 2000; i++) segments.push({ ...seg(i * 4, 3, 8 + ((i * 7919) % 20000)), tag: i % 2 });
  segments.push({ ...seg(10000, 9000, 100), zeroed: true, tag: 1 });
  segments.push(seg(20000, 16383, 8000));
  segments.push({ ...seg(36383, 5000, 500), tag: 1 });
  const sink = new MemorySink();
  const sources = [new MemoryReader(a), new MemoryReader(b)];
  await commitLayer({ segments, sources, header: { virtualSize: GIB, userTag: 'streamed' } }, sink);
  const blob = sink.bytes();
  const parsed = parseBlob(blob);
  assert.ok(parsed.segments.some((s) => s.tag === 1));
  for (const s of [segments[0], segments[1], segments[1999], segments[2001], segments[2002]] as Segment[]) {
    const src = s.tag === 0 ? a : b;
    assert.deepEqual(parsed.read(s.offset * 512, s.length * 512), src.subarray(s.moffset * 512, (s.moffset + s.length) * 512));
  }
  assert.deepEqual(parsed.read(10000 * 512, 9000 * 512), new Uint8Array(9000 * 512));
  const trailer = decodeHeaderTrailer(blob.subarray(blob.length - HEADER_TRAILER_SIZE));
  assert.equal(new TextDecoder().decode(trailer.userTag), 'streamed');
});

test('commitLayer() rejects unsorted segments, unknown tags and long messages', async () => {
  const sources = [new MemoryReader(new Uint8Array(1 << 20))];
  const header = { virtualSize: GIB };
  await assert.rejects(commitLayer({ segments: [seg(10, 5, 8), seg(12, 5, 8)], sources, header }, new MemorySink()), InvalidArgumentError);
  await assert.rejects(commitLayer({ segments: [{ ...seg(10, 5, 8), tag: 3 }], sources, header }, new MemorySink()), InvalidArgumentError);
  await assert.rejects(
    commitLayer({ segments: [], sources, header: { virtualSize: GIB, userTag: 'x'.repeat(257) } }, new MemorySink()),
    InvalidArgumentError,
  );
  const exact = new MemorySink();
  await commitLayer({ segments: [], sources, header: { virtualSize: GIB, userTag: 'x'.repeat(256) } }, exact);
  assert.equal(decodeHeaderTrailer(exact.bytes()).userTag.length, 256);
});

test('replayed L1 writes commit byte-identical to L1.commit (vectors §3)', async (t) => {
  const dir = await tempDir(t);
  const layer = await createWritableLayer({ data: join(dir, 'd'), index: join(dir, 'i'), virtualSize: GIB });
  t.after(() => layer.close());
  await replayL1(layer);
  const sink = new MemorySink();
  await commitWritableLayer(layer, sink, { uuid: U1, userTag: 'oracle-L1' });
  assert.equal(sha256(sink.bytes()), L1_COMMIT_SHA);
  assert.deepEqual(sink.bytes(), new Uint8Array(await readFile(vector('lsmt', 'L1.commit'))));
});

test('replayed L2 writes commit byte-identical to L2.commit (vectors §3)', async (t) => {
  const dir = await tempDir(t);
  const layer = await createWritableLayer({
    data: join(dir, 'd'),
    index: join(dir, 'i'),
    virtualSize: GIB,
    parentUuid: U1,
  });
  t.after(() => layer.close());
  await replayL2(layer);
  const sink = new MemorySink();
  await commitWritableLayer(layer, sink, { uuid: U2, parentUuid: U1 });
  assert.equal(sha256(sink.bytes()), L2_COMMIT_SHA);
  // the parent also comes from the data-file header when not given
  const again = new MemorySink();
  await commitWritableLayer(layer, again, { uuid: U2 });
  assert.equal(sha256(again.bytes()), L2_COMMIT_SHA);
});

test('the upstream L1.rw pair, reopened, commits byte-identical to L1.commit; also through a FileSink', async (t) => {
  const dir = await tempDir(t);
  const paths = { data: join(dir, 'd'), index: join(dir, 'i') };
  await copyFile(vector('lsmt', 'L1.rw.data'), paths.data);
  await copyFile(vector('lsmt', 'L1.rw.index'), paths.index);
  const layer = await openWritableLayer(paths);
  t.after(() => layer.close());
  const out = join(dir, 'out.commit');
  const sink = await FileSink.create(out);
  await commitWritableLayer(layer, sink, { uuid: U1, userTag: 'oracle-L1', close: true });
  assert.equal(sha256(await readFile(out)), L1_COMMIT_SHA);
});

test('commitWritableLayer() takes virtual_size from the data-file header, not in-memory growth (§13.1)', async (t) => {
  const dir = await tempDir(t);
  const layer = await createWritableLayer({ data: join(dir, 'd'), index: join(dir, 'i'), virtualSize: 1 << 20 });
  t.after(() => layer.close());
  await layer.write(fill(4096, 7), 8 << 20);
  assert.equal(layer.virtualSize, (8 << 20) + 4096);
  const sink = new MemorySink();
  await commitWritableLayer(layer, sink, { uuid: 'not-a-uuid', parentUuid: 'also-not' });
  const blob = sink.bytes();
  const trailer = decodeHeaderTrailer(blob.subarray(blob.length - HEADER_TRAILER_SIZE));
  assert.equal(trailer.virtualSize, 1 << 20);
  assert.equal(trailer.uuid, '00000000-0000-0000-0000-000000000000');
  assert.equal(trailer.parentUuid, '00000000-0000-0000-0000-000000000000');
  assert.deepEqual(parseBlob(blob).read(8 << 20, 4096), fill(4096, 7));
});

test('a read-only open of the shared L1.rw pair commits in place and refuses writes', async (t) => {
  const layer = await openWritableLayer({
    data: vector('lsmt', 'L1.rw.data'),
    index: vector('lsmt', 'L1.rw.index'),
    readOnly: true,
  });
  t.after(() => layer.close());
  await assert.rejects(layer.write(new Uint8Array(512), 0), FailedPreconditionError);
  await assert.rejects(layer.trim(0, 512), FailedPreconditionError);
  const sink = new MemorySink();
  await commitWritableLayer(layer, sink, { uuid: U1, userTag: 'oracle-L1' });
  assert.equal(sha256(sink.bytes()), L1_COMMIT_SHA);
});

