import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';
import { join } from 'node:path';
import type { BlobReader } from '../../io/blob-reader.ts';
import { DataCorruptionError } from '../../io/errors.ts';
import { MemoryReader } from '../../io/memory-reader.ts';
import { openFileReader } from '../../io/file-reader.ts';
import { encodeHeaderTrailer, newHeaderTrailer, NIL_UUID } from './header-trailer.ts';
import { openRoLayer, type RoLayer } from './ro-layer.ts';
import { encodeSegments, INVALID_SEGMENT, type Segment } from './segment.ts';
import { FIXTURES, vector } from '../../../test/support/shared.ts';

const seg = (offset: number, length: number, moffset: number): Segment => ({ offset, length, moffset, zeroed: false, tag: 0 });
const zseg = (offset: number, length: number, moffset: number): Segment => ({ ...seg(offset, length, moffset), zeroed: true });
const tagged = (s: Segment, tag: number): Segment => ({ ...s, tag });
const tuples = (list: readonly Segment[]): (number | boolean)[][] =>
  list.map((s) => [s.offset, s.length, s.moffset, s.zeroed]);

/** A committed-style blob (lsmt.md §6.1) built from raw entries, with knobs to break it. */
function sealedBlob(options: {
  entries: Segment[];
  dataSectors: number;
  headerFlags?: number;
  trailerFlags?: number;
  indexSize?: number;
  indexOffset?: number;
  trailing?: Uint8Array;
}): Uint8Array {
  const index = encodeSegments(options.entries);
  const dataEnd = 4096 + options.dataSectors * 512;
  const data = new Uint8Array(options.dataSectors * 512).map((_, i) => (i * 7) % 251);
  const header = encodeHeaderTrailer(newHeaderTrailer({ flags: options.headerFlags ?? 0x07, virtualSize: 1 << 30 }));
  const trailer = encodeHeaderTrailer(
    newHeaderTrailer({
      flags: options.trailerFlags ?? 0x06,
      indexOffset: options.indexOffset ?? dataEnd,
      indexSize: options.indexSize ?? options.entries.length,
      virtualSize: 1 << 30,
      uuid: '00000000-0000-4000-8000-0000000000c1',
    }),
  );
  const trailing = options.trailing ?? new Uint8Array(0);
  const out = new Uint8Array(dataEnd + index.length + trailing.length + 4096);
  out.set(header, 0);
  out.set(data, 4096);
  out.set(index, dataEnd);
  out.set(trailing, dataEnd + index.length);
  out.set(trailer, out.length - 4096);
  return out;
}

async function open(bytes: Uint8Array): Promise<RoLayer> {
  return openRoLayer(new MemoryReader(bytes));
}

async function rejects(bytes: Uint8Array, message: RegExp): Promise<void> {
  await assert.rejects(open(bytes), (e: unknown) => {
    assert.ok(e instanceof DataCorruptionError, `expected DataCorruptionError, got ${String(e)}`);
    assert.match(e.message, message);
    return true;
  });
}

test('openRoLayer() reads L1.commit as lsmt vectors §3 describe', async () => {
  const layer = await openRoLayer(await openFileReader(vector('lsmt', 'L1.commit')));
  try {
    assert.deepEqual(tuples(layer.segments), [
      [0, 128, 8, false],
      [2048, 8, 136, false],
      [4096, 64, 144, false],
      [4160, 32, 208, true],
      [4192, 160, 208, false],
      [16385, 3, 368, false],
    ]);
    assert.ok(layer.segments.every((s) => s.tag === 0));
    assert.equal(layer.indexEntries, 256);
    assert.equal(layer.header.flags, 0x07);
    assert.equal(layer.trailer.flags, 0x06);
    assert.equal(layer.trailer.indexOffset, 371 * 512);
    assert.equal(layer.virtualSize, 1 << 30);
    assert.equal(layer.uuid, '00000000-0000-4000-8000-0000000000A1');
    assert.equal(layer.parentUuid, NIL_UUID);
    assert.equal(new TextDecoder().decode(layer.trailer.userTag), 'oracle-L1');
    assert.equal(layer.dataSectors, 128 + 8 + 64 + 160 + 3);
    const found: Segment[] = [];
    layer.lookup(4100, 100, found);
    assert.deepEqual(found, [seg(4100, 60, 148), zseg(4160, 32, 208), seg(4192, 8, 208)]);
  } finally {
    await layer.close();
  }
});

test('openRoLayer() reads L2.commit as lsmt vectors §3 describe', async () => {
  const layer = await openRoLayer(await openFileReader(vector('lsmt', 'L2.commit')));
  try {
    assert.deepEqual(tuples(layer.segments), [
      [8, 8, 8, false],
      [2052, 2, 16, false],
      [16384, 8, 18, true],
      [131072, 32, 18, false],
    ]);
    assert.equal(layer.indexEntries, 256);
    assert.equal(layer.uuid, '00000000-0000-4000-8000-0000000000A2');
    assert.equal(layer.parentUuid, '00000000-0000-4000-8000-0000000000A1');
  } finally {
    await layer.close();
  }
});

test('openRoLayer() opens the seal-in-place file L1.sealed (header 0x03, exact index_size, garbage kept)', async () => {
  const layer = await openRoLayer(await openFileReader(vector('lsmt', 'L1.sealed')));
  try {
    assert.equal(layer.header.flags, 0x03);
    assert.equal(layer.trailer.flags, 0x06);
    assert.equal(layer.trailer.indexOffset, 214528);
    assert.equal(layer.indexEntries, 8);
    assert.equal(layer.segments.length, 8);
    assert.equal(layer.virtualSize, 1 << 30);
    for (let i = 1; i < layer.segments.length; i++) {
      const p = layer.segments[i - 1] as Segment;
      assert.ok(p.offset + p.length <= (layer.segments[i] as Segment).offset);
    }
    assert.equal(layer.dataSectors, 128 + 8 + 64 + 160 + 3);
  } finally {
    await layer.close();
  }
});

test('openRoLayer() resets non-zero tags and drops padding entries anywhere', async () => {
  const bytes = sealedBlob({
    entries: [tagged(seg(0, 8, 8), 3), INVALID_SEGMENT, tagged(seg(8, 8, 16), 200), INVALID_SEGMENT],
    dataSectors: 16,
  });
  const layer = await open(bytes);
  assert.deepEqual(layer.segments, [seg(0, 8, 8), seg(8, 8, 16)]);
  assert.equal(layer.indexEntries, 4);
});

test('openRoLayer() accepts old-writer indexes: 16383-sector entries and zeroed entries', async () => {
  const layer = await open(
    sealedBlob({
      entries: [seg(0, 16383, 8), zseg(16383, 120, 16391), seg(16503, 8, 16391), seg(20000, 1, 16399)],
      dataSectors: 16392,
    }),
  );
  assert.equal(layer.segments.length, 4);
  assert.equal(layer.dataSectors, 16383 + 8 + 1);
});

test('openRoLayer() accepts a zeroed entry at the end of data and an empty index', async () => {
  const layer = await open(sealedBlob({ entries: [seg(0, 8, 8), zseg(8, 100, 16)], dataSectors: 8 }));
  assert.equal(layer.segments.length, 2);
  const empty = await open(sealedBlob({ entries: [], dataSectors: 0 }));
  assert.deepEqual(empty.segments, []);
});

test('openRoLayer() rejects unsorted and overlapping entries naming them', async () => {
  await rejects(
    sealedBlob({ entries: [seg(100, 8, 8), INVALID_SEGMENT, seg(50, 8, 16)], dataSectors: 16 }),
    /^Cannot open LSMT layer: index entry 2 is out of order after entry 0/,
  );
  await rejects(
    sealedBlob({ entries: [seg(0, 8, 8), seg(7, 8, 16)], dataSectors: 16 }),
    /^Cannot open LSMT layer: index entry 1 overlaps entry 0/,
  );
});

test('openRoLayer() rejects entries mapping outside the data area', async () => {
  await rejects(
    sealedBlob({ entries: [seg(0, 8, 8), seg(8, 8, 12)], dataSectors: 8 }),
    /index entry 1 maps sectors \[12, 20\) outside the data area \[8, 16\)/,
  );
  await rejects(sealedBlob({ entries: [seg(0, 8, 4)], dataSectors: 8 }), /index entry 0 maps sectors \[4, 12\)/);
  await rejects(sealedBlob({ entries: [seg(0, 8, 99)], dataSectors: 8 }), /index entry 0 maps/);
  await rejects(
    sealedBlob({ entries: [zseg(0, 8, 17)], dataSectors: 8 }),
    /index zeroed entry 0 has moffset 17 outside the data area \[8, 16\]/,
  );
  await rejects(sealedBlob({ entries: [zseg(0, 8, 7)], dataSectors: 8 }), /index zeroed entry 0 has moffset 7/);
});

test('openRoLayer() rejects a bad index size or offset', async () => {
  await rejects(
    sealedBlob({ entries: [seg(0, 8, 8)], dataSectors: 8, indexSize: 1_000_001 }),
    /index has 1000001 entries, at most 1000000/,
  );
  await rejects(
    sealedBlob({ entries: [seg(0, 8, 8)], dataSectors: 8, indexSize: 2 }),
    /index of 2 entries at byte 8192 does not fit before the trailer at byte 8208/,
  );
  await rejects(
    sealedBlob({ entries: [seg(0, 8, 8)], dataSectors: 8, indexOffset: 2 ** 40 }),
    /does not fit before the trailer/,
  );
});

test('openRoLayer() rejects wrong header and trailer flags', async () => {
  const entries = [seg(0, 8, 8)];
  await rejects(sealedBlob({ entries, dataSectors: 8, trailerFlags: 0x02 }), /LSMT layer trailer: sealed flag is clear/);
  await rejects(sealedBlob({ entries, dataSectors: 8, trailerFlags: 0x07 }), /LSMT layer trailer: header flag is set/);
  await rejects(sealedBlob({ entries, dataSectors: 8, trailerFlags: 0x04 }), /LSMT layer trailer: data-file flag is clear/);
  await rejects(sealedBlob({ entries, dataSectors: 8, headerFlags: 0x06 }), /LSMT layer header: header flag is clear/);
  await rejects(sealedBlob({ entries, dataSectors: 8, headerFlags: 0x01 }), /LSMT layer header: data-file flag is clear/);
});

test('openRoLayer() rejects truncated blobs', async () => {
  const file = new Uint8Array(readFileSync(vector('lsmt', 'L1.commit')));
  await rejects(file.subarray(0, 8191), /blob is 8191 bytes, smaller than a header and a trailer \(8192\)/);
  await rejects(new Uint8Array(0), /blob is 0 bytes/);
  await rejects(file.subarray(0, file.length - 512), /LSMT layer trailer: bad LSMT magic/);
  const noHeader = file.slice();
  noHeader[0] = 0;
  await rejects(noHeader, /LSMT layer header: bad LSMT magic/);
});

test('openRoLayer() names the blob with options.what', async () => {
  await assert.rejects(openRoLayer(new MemoryReader(new Uint8Array(10)), { what: 'layer 3' }), /^DataCorruptionError: Cannot open layer 3: blob is 10 bytes/);
});

// --- through openLayerBlob (tar / ZFile), owned by the zfile engineer -------------------

type OpenLayerBlob = (blob: BlobReader) => Promise<{ reader: BlobReader }>;
async function loadOpenLayerBlob(): Promise<OpenLayerBlob | string> {
  const path = '../open-layer-blob.ts';
  try {
    const mod = (await import(path)) as { openLayerBlob?: OpenLayerBlob };
    return mod.openLayerBlob ?? 'src/formats/open-layer-blob.ts does not export openLayerBlob';
  } catch (e) {
    return `src/formats/open-layer-blob.ts is not usable yet (${e instanceof Error ? e.message : String(e)})`;
  }
}
const openLayerBlob = await loadOpenLayerBlob();
const skipNoBlob = typeof openLayerBlob === 'string' ? openLayerBlob : false;

async function openWrapped(blob: BlobReader): Promise<RoLayer> {
  if (typeof openLayerBlob === 'string') throw new Error(openLayerBlob);
  const { reader } = await openLayerBlob(blob);
  return openRoLayer(reader);
}

test('openRoLayer() reads the hello-world layer as lsmt.md §19.6 describes', { skip: skipNoBlob }, async () => {
  const blob = join(FIXTURES, 'hello-world-converted', 'blobs', 'sha256', '022231c3f1af70e0cc42f0c3781eabf174cff608210585bf93fc83e16d33672d');
  const layer = await openWrapped(await openFileReader(blob));
  try {
    assert.equal(layer.blob.size, 71528448);
    assert.equal(layer.header.flags, 0x07);
    assert.equal(layer.trailer.flags, 0x06);
    assert.equal(layer.virtualSize, 68719476736);
    assert.equal(layer.uuid, '01BB4FCE-3EB1-B56B-05AD-F99504DAFD31');
    assert.equal(layer.parentUuid, NIL_UUID);
    assert.equal(layer.trailer.version, 1);
    assert.equal(layer.trailer.subVersion, 1);
    assert.equal(layer.trailer.indexOffset, 71512064);
    assert.equal(layer.indexEntries, 768);
    assert.equal(layer.segments.length, 515);
    assert.deepEqual(layer.segments.slice(0, 2), [seg(0, 8448, 8), seg(12288, 256, 8456)]);
    assert.ok(layer.segments.every((s) => s.tag === 0 && !s.zeroed));
  } finally {
    await layer.close();
  }
});

test('openRoLayer() reads the merged vector, whose tags are non-zero on disk', { skip: skipNoBlob }, async () => {
  const layer = await openWrapped(await openFileReader(vector('stack', 'L1L2.merged.lz4')));
  try {
    assert.equal(layer.blob.size, 212992);
    assert.deepEqual(tuples(layer.segments), [
      [0, 8, 8, false],
      [8, 8, 16, false],
      [16, 112, 24, false],
      [2048, 4, 136, false],
      [2052, 2, 140, false],
      [2054, 2, 142, false],
      [4096, 64, 144, false],
      [4160, 32, 208, true],
      [4192, 160, 208, false],
      [16384, 8, 368, true],
      [131072, 32, 368, false],
    ]);
    assert.ok(layer.segments.every((s) => s.tag === 0));
    assert.equal(layer.uuid, NIL_UUID);
  } finally {
    await layer.close();
  }
});

/** Extracts the single file `ext4_64` from the gzip'd tar of vectors §5. */
function ext4_64(): Uint8Array {
  const tar = gunzipSync(readFileSync(vector('apply', 'ext4_64.tar.gz')));
  const size = parseInt(tar.subarray(124, 136).toString('latin1').replace(/\0.*$/s, '').trim(), 8);
  return new Uint8Array(tar.subarray(512, 512 + size));
}

test('openRoLayer() reads the old-writer base layer ext4_64 as lsmt.md §19.7 describes', { skip: skipNoBlob }, async () => {
  const layer = await openWrapped(new MemoryReader(ext4_64()));
  try {
    assert.equal(layer.blob.size, 541937664);
    assert.equal(layer.uuid, 'C02FB491-B4D4-4904-8684-A014D032AF78');
    assert.equal(layer.parentUuid, NIL_UUID);
    assert.equal(layer.virtualSize, 64 * 2 ** 30);
    assert.equal(layer.trailer.indexOffset, 541798400);
    assert.equal(layer.indexEntries, 8448);
    assert.equal(layer.segments.length, 8323);
    assert.equal(layer.segments.filter((s) => s.zeroed).length, 8209);
    assert.ok(layer.segments.some((s) => s.length === 16383));
    assert.deepEqual(layer.segments.slice(0, 3), [seg(0, 8272, 8), zseg(8272, 120, 8280), seg(8392, 8, 8280)]);
  } finally {
    await layer.close();
  }
});
