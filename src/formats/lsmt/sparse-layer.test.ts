import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, open, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readFully } from '../../io/blob-reader.ts';
import { MemorySink } from '../../io/byte-sink.ts';
import { AlreadyExistsError, DataCorruptionError, InvalidArgumentError } from '../../io/errors.ts';
import { fill, pat, xs } from '../../../test/support/generators.ts';
import { sha256 } from '../../../test/support/shared.ts';
import { commitWritableLayer } from './commit.ts';
import { decodeHeaderTrailer } from './header-trailer.ts';
import type { WritableLayer } from './layer.ts';
import type { Segment } from './segment.ts';
import { createSparseLayer, openSparseLayer, scanNonZeroExtents, seekDataExtents, type Extent } from './sparse-layer.ts';
import { createWritableLayer, openWritableLayer } from './writable-layer.ts';

const MIB = 1 << 20;
const GIB = 1 << 30;

async function tempDir(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'obd-sparse-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

async function readLayer(layer: WritableLayer, offset: number, length: number): Promise<Uint8Array> {
  const out = new Uint8Array(length);
  const segments: Segment[] = [];
  layer.lookup(offset / 512, length / 512, segments);
  for (const s of segments) {
    if (s.zeroed) continue;
    const at = s.offset * 512 - offset;
    await readFully(layer.data, out.subarray(at, at + s.length * 512), s.moffset * 512);
  }
  return out;
}

/** The first 4096 bytes of a (large, sparse) file. */
async function readHead(path: string): Promise<Uint8Array> {
  const fh = await open(path, 'r');
  try {
    const head = new Uint8Array(4096);
    await fh.read(head, 0, 4096, 0);
    return head;
  } finally {
    await fh.close();
  }
}

const mapped = (layer: WritableLayer): Array<[number, number, number, boolean]> =>
  layer.segments().map((s) => [s.offset, s.length, s.moffset, s.zeroed]);

test('createWritableLayer({ sparse }) makes a 0x13 data file of virtual_size + 4096 and an empty index (lsmt.md §9)', async (t) => {
  const dir = await tempDir(t);
  const paths = { data: join(dir, 'd'), index: join(dir, 'i') };
  const layer = await createWritableLayer({ ...paths, virtualSize: GIB, sparse: true });
  await layer.close();
  assert.equal(layer.sparse, true);
  const header = decodeHeaderTrailer(await readHead(paths.data));
  assert.equal(header.flags, 0x13);
  assert.equal(header.virtualSize, GIB);
  assert.equal((await stat(paths.data)).size, GIB + 4096);
  assert.ok((await stat(paths.data)).blocks * 512 < 1 * MIB, 'the file is sparse');
  assert.equal((await stat(paths.index)).size, 0);
  await assert.rejects(createSparseLayer({ ...paths, virtualSize: GIB }), AlreadyExistsError);
});

test('sparse writes land in place at 4096 + offset and read back, also after reopen', async (t) => {
  const dir = await tempDir(t);
  const paths = { data: join(dir, 'd'), index: join(dir, 'i') };
  const layer = await createWritableLayer({ ...paths, virtualSize: 64 * MIB, sparse: true });
  const big = xs(9 * MIB, 3);
  await layer.write(big, 8 * MIB);
  await layer.write(fill(4096, 0x11), 8192);
  assert.deepEqual(mapped(layer), [
    [16, 8, 24, false],
    [16384, 8192, 16392, false],
    [24576, 8192, 24584, false],
    [32768, 2048, 32776, false],
  ]);
  const fh = await open(paths.data, 'r');
  const raw = new Uint8Array(4096);
  await fh.read(raw, 0, 4096, 4096 + 8192);
  await fh.close();
  assert.deepEqual(raw, fill(4096, 0x11));
  await layer.close();

  const again = await openWritableLayer(paths);
  t.after(() => again.close());
  assert.equal(again.sparse, true);
  assert.equal(again.virtualSize, 64 * MIB);
  assert.deepEqual(mapped(again), [
    [16, 8, 24, false],
    [16384, 16383, 16392, false],
    [32767, 2049, 32775, false],
  ]);
  assert.deepEqual(await readLayer(again, 8 * MIB, 9 * MIB), big);
  assert.deepEqual(await readLayer(again, 0, 16384), new Uint8Array([...fill(8192, 0), ...fill(4096, 0x11), ...fill(4096, 0)]));
});

test('a sparse trim reads zero until reopen, then falls through (unmapped) as upstream', async (t) => {
  const dir = await tempDir(t);
  const paths = { data: join(dir, 'd'), index: join(dir, 'i') };
  const layer = await createWritableLayer({ ...paths, virtualSize: 64 * MIB, sparse: true });
  await layer.write(pat(65536, 0), 0);
  await layer.trim(16384, 16384);
  await layer.trim(32 * MIB, 16 * MIB); // unmapped range: nothing to zero, 2 zeroed entries
  assert.deepEqual(mapped(layer), [
    [0, 32, 8, false],
    [32, 32, 40, true],
    [64, 64, 72, false],
    [65536, 16383, 65544, true],
    [81919, 16383, 81927, true],
    [98302, 2, 98310, true],
  ]);
  const expected = pat(65536, 0);
  expected.fill(0, 16384, 32768);
  assert.deepEqual(await readLayer(layer, 0, 65536), expected);
  await layer.close();

  const again = await openSparseLayer(paths);
  t.after(() => again.close());
  // After reopen the trimmed range is a hole: no segment, so lower layers show through.
  assert.deepEqual(mapped(again), [
    [0, 32, 8, false],
    [64, 64, 72, false],
  ]);
  assert.deepEqual(await readLayer(again, 0, 65536), expected);
});

test('a sparse trim punches a hole; explicitly written zeros stay mapped after reopen (SEEK_DATA)', async (t) => {
  const dir = await tempDir(t);
  const paths = { data: join(dir, 'd'), index: join(dir, 'i') };
  const layer = await createSparseLayer({ ...paths, virtualSize: 64 * MIB });
  await layer.write(xs(4 * MIB, 9), 0);
  await layer.write(new Uint8Array(8192), 8 * MIB);
  await layer.flush();
  const before = (await stat(paths.data)).blocks;
  await layer.trim(0, 2 * MIB);
  await layer.flush();
  assert.ok((await stat(paths.data)).blocks <= before - (2 * MIB) / 512, 'the trimmed range is deallocated');
  await layer.close();
  const again = await openSparseLayer(paths);
  t.after(() => again.close());
  assert.deepEqual(mapped(again), [
    [4096, 4096, 4104, false],
    [16384, 16, 16392, false],
  ]);
  // The zero-scan alternative unmaps the explicit zeros.
  const fh = await open(paths.data, 'r');
  t.after(() => fh.close());
  const size = (await stat(paths.data)).size;
  assert.deepEqual(await scanNonZeroExtents(fh, 4096, size), [[4096 + 2 * MIB, 4096 + 4 * MIB]]);
  assert.deepEqual(await seekDataExtents(fh, 4096, size), [
    [4096 + 2 * MIB, 4096 + 4 * MIB],
    [4096 + 8 * MIB, 4096 + 8 * MIB + 8192],
  ]);
});

test('replayed L1 writes in a sparse layer commit to the same blob as the append-mode layer', async (t) => {
  const dir = await tempDir(t);
  const layer = await createSparseLayer({ data: join(dir, 'd'), index: join(dir, 'i'), virtualSize: GIB });
  t.after(() => layer.close());
  await layer.write(pat(65536, 0), 0);
  await layer.write(xs(4096, 1), 1048576);
  await layer.write(fill(1536, 0x5a), 8389120);
  await layer.write(fill(8192, 0xab), 16384);
  await layer.write(pat(131072, 7), 2097152);
  await layer.trim(2129920, 16384);
  const sink = new MemorySink();
  await commitWritableLayer(layer, sink, { uuid: '00000000-0000-4000-8000-0000000000a1', userTag: 'oracle-L1' });
  assert.equal(sha256(sink.bytes()), '881ff75f5fc4b1c854cd9ac50057d4735fa28d83b3f8a8b6de5897574bf3fb51');
});

test('sparse hooks replace the extent scan and the hole punch', async (t) => {
  const dir = await tempDir(t);
  const paths = { data: join(dir, 'd'), index: join(dir, 'i') };
  const punched: Array<[number, number]> = [];
  const hooks = {
    punchHole: async (_fh: unknown, offset: number, length: number): Promise<void> => {
      punched.push([offset, length]);
    },
    findExtents: async (): Promise<Extent[]> => [
      [4096, 8192],
      [4096 + 16 * MIB, 4096 + 16 * MIB + 20 * MIB],
    ],
  };
  const layer = await createSparseLayer({ ...paths, virtualSize: 64 * MIB, hooks });
  await layer.trim(4096, 8192);
  assert.deepEqual(punched, [[8192, 8192]]);
  await layer.close();
  const again = await openWritableLayer({ ...paths, sparseHooks: hooks });
  t.after(() => again.close());
  assert.deepEqual(mapped(again), [
    [0, 8, 8, false],
    [32768, 16383, 32776, false],
    [49151, 16383, 49159, false],
    [65534, 8194, 65542, false],
  ]);
});

test('a sparse trim without hole punching zeros only the mapped data', async (t) => {
  const dir = await tempDir(t);
  const paths = { data: join(dir, 'd'), index: join(dir, 'i') };
  const hooks = { punchHole: async (): Promise<boolean> => false, findExtents: scanNonZeroExtents };
  const layer = await createSparseLayer({ ...paths, virtualSize: 64 * MIB, hooks });
  await layer.write(fill(8192, 0x77), 4096);
  await layer.trim(0, 8 * MIB);
  assert.deepEqual(mapped(layer), [
    [0, 16383, 8, true],
    [16383, 1, 16391, true],
  ]);
  assert.deepEqual(await readLayer(layer, 0, 16384), new Uint8Array(16384));
  await layer.close();
  const fh = await open(paths.data, 'r');
  const raw = new Uint8Array(8192);
  await fh.read(raw, 0, 8192, 8192);
  await fh.close();
  assert.deepEqual(raw, new Uint8Array(8192), 'zeros written in place');
  const again = await openSparseLayer({ ...paths, hooks });
  t.after(() => again.close());
  assert.deepEqual(mapped(again), []);
});

test('scanNonZeroExtents() reports 4 KiB blocks holding a non-zero byte', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'f');
  const bytes = new Uint8Array(40 * 4096 + 1000);
  bytes[4096 + 5] = 1; // block 1
  bytes.fill(7, 3 * 4096, 5 * 4096); // blocks 3-4
  bytes[40 * 4096 + 999] = 2; // short last block
  bytes.fill(9, 0, 4096); // block 0, before the scan start
  await writeFile(file, bytes);
  const fh = await open(file, 'r');
  t.after(() => fh.close());
  assert.deepEqual(await scanNonZeroExtents(fh, 4096, bytes.length), [
    [4096, 8192],
    [3 * 4096, 5 * 4096],
    [40 * 4096, 40 * 4096 + 1000],
  ]);
  assert.deepEqual(await scanNonZeroExtents(fh, 0, 4096 * 2), [[0, 8192]]);
});

test('sparse layers check alignment, the sparse flag, and resize by truncating', async (t) => {
  const dir = await tempDir(t);
  const paths = { data: join(dir, 'd'), index: join(dir, 'i') };
  const layer = await createSparseLayer({ ...paths, virtualSize: 64 * MIB });
  await assert.rejects(layer.write(new Uint8Array(512), 100), InvalidArgumentError);
  await assert.rejects(layer.trim(0, 100), InvalidArgumentError);
  await layer.write(fill(512, 1), 0);
  await layer.setVirtualSize(128 * MIB);
  assert.equal((await stat(paths.data)).size, 128 * MIB + 4096);
  await layer.flush();
  await layer.close();
  assert.equal(decodeHeaderTrailer(await readHead(paths.data)).virtualSize, 128 * MIB);
  const append = { data: join(dir, 'ad'), index: join(dir, 'ai') };
  await (await createWritableLayer({ ...append, virtualSize: MIB })).close();
  await assert.rejects(openSparseLayer(append), DataCorruptionError);
});
