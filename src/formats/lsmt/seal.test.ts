import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MemorySink } from '../../io/byte-sink.ts';
import { FailedPreconditionError } from '../../io/errors.ts';
import { openFileReader } from '../../io/file-reader.ts';
import { fill, pat, xs } from '../../../test/support/generators.ts';
import { sha256, vector } from '../../../test/support/shared.ts';
import { commitSealedLayer } from './commit.ts';
import { decodeHeaderTrailer, HEADER_TRAILER_SIZE } from './header-trailer.ts';
import type { WritableLayer } from './layer.ts';
import { sealInPlace } from './seal.ts';
import { decodeSegments, INVALID_OFFSET, type Segment } from './segment.ts';
import { createWritableLayer } from './writable-layer.ts';

const GIB = 1 << 30;
const U1 = '00000000-0000-4000-8000-0000000000a1';
const L1_COMMIT_SHA = '881ff75f5fc4b1c854cd9ac50057d4735fa28d83b3f8a8b6de5897574bf3fb51';

async function tempDir(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'obd-seal-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

async function replayL1(layer: WritableLayer): Promise<void> {
  await layer.write(pat(65536, 0), 0);
  await layer.write(xs(4096, 1), 1048576);
  await layer.write(fill(1536, 0x5a), 8389120);
  await layer.write(fill(8192, 0xab), 16384);
  await layer.write(pat(131072, 7), 2097152);
  await layer.trim(2129920, 16384);
}

/** Reads a sealed file's trailer and index directly (the RO layer lives elsewhere). */
function parseSealed(file: Uint8Array): { segments: Segment[]; trailerBytes: Uint8Array } {
  const trailerBytes = file.subarray(file.length - HEADER_TRAILER_SIZE);
  const trailer = decodeHeaderTrailer(trailerBytes);
  const raw = file.subarray(trailer.indexOffset, trailer.indexOffset + trailer.indexSize * 16);
  const segments = decodeSegments(raw)
    .filter((s) => s.offset !== INVALID_OFFSET)
    .map((s) => ({ ...s, tag: 0 }));
  return { segments, trailerBytes };
}

test('sealInPlace() of replayed L1 writes matches L1.sealed except uuid and padding bytes (lsmt.md §14)', async (t) => {
  const dir = await tempDir(t);
  const paths = { data: join(dir, 'd'), index: join(dir, 'i') };
  const layer = await createWritableLayer({ ...paths, virtualSize: GIB });
  await replayL1(layer);
  await layer.close();
  const headerBefore = new Uint8Array(await readFile(paths.data)).subarray(0, HEADER_TRAILER_SIZE);

  assert.deepEqual(await sealInPlace(paths), { indexOffset: 214528, indexSize: 8 });
  const ours = new Uint8Array(await readFile(paths.data));
  const theirs = new Uint8Array(await readFile(vector('lsmt', 'L1.sealed')));
  assert.equal(ours.length, 219136);
  assert.equal(theirs.length, 219136);
  assert.deepEqual(ours.subarray(0, HEADER_TRAILER_SIZE), headerBefore, 'header unchanged');
  assert.equal(decodeHeaderTrailer(ours).flags, 0x03);
  assert.deepEqual(ours.subarray(4096, 214528), theirs.subarray(4096, 214528), 'data');
  assert.deepEqual(ours.subarray(214528, 214528 + 128), theirs.subarray(214528, 214528 + 128), 'index entries');
  assert.deepEqual(ours.subarray(214528 + 128, 215040), new Uint8Array(512 - 128), 'zero padding');

  const ourTrailer = decodeHeaderTrailer(ours.subarray(215040));
  const theirTrailer = decodeHeaderTrailer(theirs.subarray(215040));
  assert.equal(ourTrailer.flags, 0x06);
  assert.equal(ourTrailer.uuid, decodeHeaderTrailer(headerBefore).uuid);
  assert.deepEqual({ ...ourTrailer, uuid: '' }, { ...theirTrailer, uuid: '' });
  assert.equal(ourTrailer.indexOffset, 214528);
  assert.equal(ourTrailer.indexSize, 8);
  assert.equal(ourTrailer.userTag.length, 0);
});

test('a sealed L1 (ours and the upstream vector) commits again to L1.commit (--commit_sealed)', async (t) => {
  const dir = await tempDir(t);
  const paths = { data: join(dir, 'd'), index: join(dir, 'i') };
  const layer = await createWritableLayer({ ...paths, virtualSize: GIB });
  await replayL1(layer);
  await layer.close();
  await sealInPlace(paths);
  for (const file of [paths.data, vector('lsmt', 'L1.sealed')]) {
    const { segments } = parseSealed(new Uint8Array(await readFile(file)));
    const blob = await openFileReader(file);
    try {
      const sink = new MemorySink();
      await commitSealedLayer({ segments, blob }, sink, { uuid: U1, userTag: 'oracle-L1' });
      assert.equal(sha256(sink.bytes()), L1_COMMIT_SHA, file);
    } finally {
      await blob.close();
    }
  }
});

test('sealInPlace() refuses a data file it already sealed', async (t) => {
  const dir = await tempDir(t);
  const paths = { data: join(dir, 'd'), index: join(dir, 'i') };
  const layer = await createWritableLayer({ ...paths, virtualSize: GIB });
  await layer.write(fill(8192, 3), 0);
  await layer.close();
  await sealInPlace(paths);
  const size = (await stat(paths.data)).size;
  await assert.rejects(sealInPlace(paths), FailedPreconditionError);
  assert.equal((await stat(paths.data)).size, size);
});

test('sealInPlace() of an empty layer appends only a trailer', async (t) => {
  const dir = await tempDir(t);
  const paths = { data: join(dir, 'd'), index: join(dir, 'i') };
  await (await createWritableLayer({ ...paths, virtualSize: GIB, parentUuid: U1 })).close();
  assert.deepEqual(await sealInPlace(paths), { indexOffset: 4096, indexSize: 0 });
  const file = await readFile(paths.data);
  assert.equal(file.length, 8192);
  const trailer = decodeHeaderTrailer(file.subarray(4096));
  assert.equal(trailer.flags, 0x06);
  assert.equal(trailer.parentUuid, '00000000-0000-4000-8000-0000000000A1');
});

test('sealInPlace() of a sparse layer sets 0x16 and appends after the virtual_size + 4096 region', async (t) => {
  const dir = await tempDir(t);
  const paths = { data: join(dir, 'd'), index: join(dir, 'i') };
  const layer = await createWritableLayer({ ...paths, virtualSize: 1 << 20, sparse: true });
  await layer.write(fill(4096, 9), 8192);
  await layer.close();
  const result = await sealInPlace(paths);
  assert.deepEqual(result, { indexOffset: (1 << 20) + 4096, indexSize: 1 });
  const file = new Uint8Array(await readFile(paths.data));
  assert.equal(file.length, (1 << 20) + 4096 + 512 + 4096);
  const { segments, trailerBytes } = parseSealed(file);
  assert.equal(decodeHeaderTrailer(trailerBytes).flags, 0x16);
  assert.equal(decodeHeaderTrailer(file).flags, 0x13);
  assert.deepEqual(segments, [{ offset: 16, length: 8, moffset: 24, zeroed: false, tag: 0 }]);
});
