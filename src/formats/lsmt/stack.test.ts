import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';
import type { BlobReader } from '../../io/blob-reader.ts';
import { clampRead } from '../../io/blob-reader.ts';
import { DataCorruptionError, FailedPreconditionError, InvalidArgumentError } from '../../io/errors.ts';
import { MemoryReader } from '../../io/memory-reader.ts';
import { openFileReader } from '../../io/file-reader.ts';
import { encodeHeaderTrailer, newHeaderTrailer, NIL_UUID } from './header-trailer.ts';
import type { ReadOnlyLayer, WritableLayer } from './layer.ts';
import { LookupResult } from './merged-index.ts';
import { openRoLayer } from './ro-layer.ts';
import { encodeSegments, type Segment } from './segment.ts';
import { LsmtStack, mergedSegments } from './stack.ts';
import { fill, pat, xs } from '../../../test/support/generators.ts';
import { vector } from '../../../test/support/shared.ts';

const MiB = 1 << 20;
const GiB = 1 << 30;
const HASH = {
  l1: { mb68: '9b263f35715b74f684a4b0dcf21383346b5b11f816dcd8d4fd9c6e1e222c1796', full: '23a4feeac9e77b3a407aa4f79d59ec521dbb22e2562abdb030830895462d40a9' },
  l1mb16: '326d07fc565aa356e5479a9e037ee1f94805b43622d9f1018df9b0350d141303',
  l2: { mb68: '0247e7227e39e394d73ecd453c310a4bab24005fbd50edf0b66bea1f956a4450', full: 'c968a019cc6127a12b94dbd09eaeffbd58458081d17058075c1c5a4ee634e319' },
  stack: { mb68: 'be0398b746e67a92a2a211f4b7bd61080239cf4c23eb6a09ffc6e9b7dbbc500f', full: '81b69c59494e5e9867133b8e6e9df488409b9f3a6c98610d42098572fd2ec650' },
};

/**
 * sha256 of the first `limit` bytes of `dev`, read in 4 MiB chunks; chunks that no
 * layer maps are hashed from a shared zero buffer without reading.
 */
async function hashDevice(dev: LsmtStack, limit = dev.size): Promise<string> {
  const CHUNK = 4 * MiB;
  const h = createHash('sha256');
  const zero = new Uint8Array(CHUNK);
  const buf = new Uint8Array(CHUNK);
  const probe = new LookupResult();
  for (let at = 0; at < limit; at += CHUNK) {
    const n = Math.min(CHUNK, limit - at);
    probe.clear();
    if (dev.upper === undefined && dev.index.lookup(at / 512, Math.ceil(n / 512), probe) === 0) {
      h.update(zero.subarray(0, n));
      continue;
    }
    const piece = buf.subarray(0, n);
    assert.equal(await dev.readAt(piece, at), n);
    h.update(piece);
  }
  return h.digest('hex');
}

async function openVector(...path: string[]): Promise<ReadOnlyLayer> {
  return openRoLayer(await openFileReader(vector(...path)), { what: path.join('/') });
}

async function stackOf(...paths: string[][]): Promise<LsmtStack> {
  const lowers = await Promise.all(paths.map((p) => openVector(...p)));
  return LsmtStack.create({ lowers });
}

async function read(dev: LsmtStack, offset: number, length: number): Promise<Uint8Array> {
  const buf = new Uint8Array(length).fill(0xee);
  assert.equal(await dev.readAt(buf, offset), length);
  return buf;
}

test('LsmtStack reads L1.commit to the documented hashes', async () => {
  const dev = await stackOf(['lsmt', 'L1.commit']);
  try {
    assert.equal(dev.size, GiB);
    assert.equal(dev.readOnly, true);
    assert.equal(await hashDevice(dev, 16 * MiB), HASH.l1mb16);
    assert.equal(await hashDevice(dev, 68 * MiB), HASH.l1.mb68);
    assert.equal(await hashDevice(dev), HASH.l1.full);
    assert.deepEqual(await read(dev, 16384, 8192), fill(8192, 0xab));
    assert.deepEqual(await read(dev, 2129920, 16384), fill(16384, 0), 'the trimmed range reads as zeros');
    assert.deepEqual(await read(dev, 1048576, 4096), xs(4096, 1));
  } finally {
    await dev.close();
  }
});

test('LsmtStack reads the seal-in-place L1.sealed like L1', async () => {
  const dev = await stackOf(['lsmt', 'L1.sealed']);
  try {
    assert.equal(await hashDevice(dev, 68 * MiB), HASH.l1.mb68);
    assert.equal(await hashDevice(dev), HASH.l1.full);
  } finally {
    await dev.close();
  }
});

test('LsmtStack reads L2.commit alone to the documented hashes', async () => {
  const dev = await stackOf(['lsmt', 'L2.commit']);
  try {
    assert.equal(await hashDevice(dev, 68 * MiB), HASH.l2.mb68);
    assert.equal(await hashDevice(dev), HASH.l2.full);
  } finally {
    await dev.close();
  }
});

test('LsmtStack of [L1.commit, L2.commit] reads to the documented hashes and regions', async () => {
  const dev = await stackOf(['lsmt', 'L1.commit'], ['lsmt', 'L2.commit']);
  try {
    assert.equal(dev.size, GiB);
    assert.equal(await hashDevice(dev, 68 * MiB), HASH.stack.mb68);
    assert.equal(await hashDevice(dev), HASH.stack.full);
    const p = pat(65536, 0);
    assert.deepEqual(await read(dev, 0, 16384), new Uint8Array([...p.subarray(0, 4096), ...fill(4096, 0xcd), ...p.subarray(8192, 16384)]));
    const x = xs(4096, 1);
    assert.deepEqual(await read(dev, 1048576, 4096), new Uint8Array([...x.subarray(0, 2048), ...xs(1024, 2), ...x.subarray(3072)]));
    assert.deepEqual(await read(dev, 8388608, 4096), fill(4096, 0), "L2's trim masks L1's 0x5A block");
    assert.deepEqual(await read(dev, 67108864, 16384), pat(16384, 3));
    // The merged index equals what overlaybd-merge wrote (vectors §4), tags = layer from the top.
    assert.deepEqual(
      mergedSegments(dev).map((s) => [s.offset, s.length, s.zeroed ? 1 : 0, s.tag]),
      [
        [0, 8, 0, 1], [8, 8, 0, 0], [16, 112, 0, 1], [2048, 4, 0, 1], [2052, 2, 0, 0], [2054, 2, 0, 1],
        [4096, 64, 0, 1], [4160, 32, 1, 1], [4192, 160, 0, 1], [16384, 8, 1, 0], [16385, 3, 0, 1], [131072, 32, 0, 0],
      ].filter((e) => e[0] !== 16385), // L1's 16385+3 lies under L2's trim
    );
    assert.deepEqual(dev.files(), [dev.lowers[1]?.blob, dev.lowers[0]?.blob]);
  } finally {
    await dev.close();
  }
});

test('LsmtStack checks alignment, clamps at the end and is read-only without an upper', async () => {
  const dev = await stackOf(['lsmt', 'L2.commit']);
  try {
    await assert.rejects(dev.readAt(new Uint8Array(512), 100), InvalidArgumentError);
    await assert.rejects(dev.readAt(new Uint8Array(100), 0), /Cannot read LSMT device: offset 0 and length 100 must be/);
    assert.equal(await dev.readAt(new Uint8Array(1024), GiB - 512), 512);
    assert.equal(await dev.readAt(new Uint8Array(512), GiB), 0);
    assert.equal(await dev.readAt(new Uint8Array(0), 0), 0);
    await assert.rejects(dev.writeAt(new Uint8Array(512), 0), (e: unknown) => {
      assert.ok(e instanceof FailedPreconditionError);
      assert.equal(e.message, 'Cannot write: device is read-only');
      return true;
    });
    await assert.rejects(dev.trim(0, 512), FailedPreconditionError);
    await assert.rejects(dev.flush(), FailedPreconditionError);
  } finally {
    await dev.close();
  }
  await assert.rejects(dev.readAt(new Uint8Array(512), 0), /Cannot read: LSMT device is closed/);
  await dev.close();
});

test('LsmtStack splits reads above 4 MiB and returns the same bytes as small reads', async () => {
  const dev = await stackOf(['lsmt', 'L1.commit'], ['lsmt', 'L2.commit']);
  try {
    const big = await read(dev, 0, 12 * MiB + 4096);
    for (let at = 0; at < big.length; at += 64 * 1024) {
      const n = Math.min(64 * 1024, big.length - at);
      assert.deepEqual(await read(dev, at, n), big.subarray(at, at + n), `at ${at}`);
    }
  } finally {
    await dev.close();
  }
});

// --- in-memory layers -------------------------------------------------------------------

/** A committed-style blob whose data sector k (file sector 8 + k) holds PAT(512, k). */
function memoryLayerBytes(entries: Segment[], dataSectors: number, virtualSize = 64 * MiB): Uint8Array {
  const dataEnd = 4096 + dataSectors * 512;
  const index = encodeSegments(entries);
  const out = new Uint8Array(dataEnd + index.length + 4096);
  out.set(encodeHeaderTrailer(newHeaderTrailer({ flags: 0x07, virtualSize })), 0);
  for (let k = 0; k < dataSectors; k++) out.set(pat(512, k), 4096 + k * 512);
  out.set(index, dataEnd);
  out.set(encodeHeaderTrailer(newHeaderTrailer({ flags: 0x06, virtualSize, indexOffset: dataEnd, indexSize: entries.length })), dataEnd + index.length);
  return out;
}

const seg = (offset: number, length: number, moffset: number): Segment => ({ offset, length, moffset, zeroed: false, tag: 0 });

/**
 * A minimal in-memory writable layer (the real one lives in writable-layer.ts): a per-sector
 * map of the latest write or trim; the data file is an append log after a 4096-byte header.
 */
class FakeUpper implements WritableLayer {
  virtualSize: number;
  readonly uuid = NIL_UUID;
  readonly parentUuid = NIL_UUID;
  readonly sparse = false;
  sizeUpdates: number[] = [];
  closed = false;
  flushed = 0;
  #log: Uint8Array[] = [new Uint8Array(4096)];
  #end = 4096;
  #map = new Map<number, { m: number; z: boolean }>();

  constructor(virtualSize: number) {
    this.virtualSize = virtualSize;
  }

  get data(): BlobReader {
    const bytes = new Uint8Array(this.#end);
    let at = 0;
    for (const c of this.#log) {
      bytes.set(c, at);
      at += c.length;
    }
    return new MemoryReader(bytes);
  }

  segments(): Segment[] {
    const keys = [...this.#map.keys()].sort((a, b) => a - b);
    const out: Segment[] = [];
    for (const k of keys) {
      const v = this.#map.get(k) as { m: number; z: boolean };
      const last = out[out.length - 1];
      if (last !== undefined && last.offset + last.length === k && last.zeroed === v.z && (v.z || last.moffset + last.length === v.m)) {
        last.length++;
      } else {
        out.push({ offset: k, length: 1, moffset: v.m, zeroed: v.z, tag: 0 });
      }
    }
    return out;
  }

  lookup(offset: number, length: number, out: Segment[]): void {
    for (const s of this.segments()) {
      const a = Math.max(offset, s.offset);
      const b = Math.min(offset + length, s.offset + s.length);
      if (a < b) out.push({ ...s, offset: a, length: b - a, moffset: s.zeroed ? s.moffset : s.moffset + a - s.offset });
    }
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    const m = this.#end / 512;
    this.#log.push(buf.slice());
    this.#end += buf.length;
    for (let i = 0; i < buf.length / 512; i++) this.#map.set(offset / 512 + i, { m: m + i, z: false });
  }

  async trim(offset: number, length: number): Promise<void> {
    for (let i = 0; i < length / 512; i++) this.#map.set(offset / 512 + i, { m: this.#end / 512, z: true });
  }

  async flush(): Promise<void> {
    this.flushed++;
  }

  async setVirtualSize(bytes: number): Promise<void> {
    this.sizeUpdates.push(bytes);
    this.virtualSize = bytes;
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}

test('LsmtStack reads the upper first, fills gaps from the lowers and masks with zeroed entries (§19.8)', async () => {
  const upper = new FakeUpper(0);
  const lowers = await Promise.all([['lsmt', 'L1.commit'], ['lsmt', 'L2.commit']].map((p) => openVector(...p)));
  const dev = await LsmtStack.create({ lowers, upper });
  try {
    assert.deepEqual(upper.sizeUpdates, [GiB], 'a zero-size upper inherits the stack size');
    assert.equal(dev.size, GiB);
    assert.equal(dev.readOnly, false);
    const plain = await stackOf(['lsmt', 'L1.commit'], ['lsmt', 'L2.commit']);
    assert.deepEqual(await read(dev, 0, 8 * MiB), await read(plain, 0, 8 * MiB), 'an empty upper changes nothing');
    await plain.close();

    await dev.writeAt(fill(2048, 0x11), 6144); // straddles L2's 0xCD block and L1's pattern
    await dev.trim(24576, 8192); // L1 pattern → zeros
    await dev.trim(1048576 + 2048, 512); // inside L2's XS block
    await dev.writeAt(fill(512, 0x22), 8388608 + 1024); // inside L2's trim
    const p = pat(65536, 0);
    const expected = new Uint8Array([...p.subarray(0, 4096), ...fill(2048, 0xcd), ...fill(2048, 0x11), ...p.subarray(8192, 16384), ...fill(8192, 0xab), ...fill(8192, 0), ...p.subarray(32768, 65536)]);
    assert.deepEqual(await read(dev, 0, 65536), expected);
    const x = xs(4096, 1);
    assert.deepEqual(await read(dev, 1048576, 4096), new Uint8Array([...x.subarray(0, 2048), ...fill(512, 0), ...xs(1024, 2).subarray(512), ...x.subarray(3072)]));
    assert.deepEqual(await read(dev, 8388608, 4096), new Uint8Array([...fill(1024, 0), ...fill(512, 0x22), ...fill(2560, 0)]));

    // Tags of the full index: upper = number of lowers (2), L2 = 0, L1 = 1.
    const tags = dev.segments().filter((s) => s.offset < 16).map((s) => [s.offset, s.length, s.tag]);
    assert.deepEqual(tags, [[0, 8, 1], [8, 4, 0], [12, 4, 2]]);
    assert.equal(dev.files().length, 3);

    await dev.flush();
    assert.equal(upper.flushed, 1);
    await assert.rejects(dev.writeAt(new Uint8Array(512), 1), InvalidArgumentError);
  } finally {
    await dev.close();
  }
  assert.equal(upper.closed, true);
});

test('LsmtStack keeps a non-zero upper size and serves an upper alone', async () => {
  const lower = await openRoLayer(new MemoryReader(memoryLayerBytes([seg(0, 8, 8)], 8)));
  const upper = new FakeUpper(2 * MiB);
  const dev = await LsmtStack.create({ lowers: [lower], upper });
  assert.deepEqual(upper.sizeUpdates, []);
  assert.equal(dev.size, 2 * MiB);
  await dev.close();

  const alone = new FakeUpper(MiB);
  const dev2 = await LsmtStack.create({ lowers: [], upper: alone });
  assert.equal(dev2.size, MiB);
  await dev2.writeAt(fill(512, 9), 512);
  assert.deepEqual(await read(dev2, 0, 1536), new Uint8Array([...fill(512, 0), ...fill(512, 9), ...fill(512, 0)]));
  await dev2.close();

  await assert.rejects(LsmtStack.create({ lowers: [] }), /Cannot stack LSMT layers: no layers given/);
});

test('LsmtStack takes the size of the topmost lower with a non-zero size', async () => {
  const a = await openRoLayer(new MemoryReader(memoryLayerBytes([], 0, 8 * MiB)));
  const b = await openRoLayer(new MemoryReader(memoryLayerBytes([], 0, 0)));
  const dev = await LsmtStack.create({ lowers: [a, b] });
  assert.equal(dev.size, 8 * MiB);
  await dev.close();
});

/** Wraps a reader: counts concurrent reads and can misbehave inside `[shortFrom, shortTo)`. */
class ProbeReader implements BlobReader {
  inFlight = 0;
  maxInFlight = 0;
  reads = 0;
  #inner: BlobReader;
  #shortFrom: number;
  #shortTo: number;
  #mode: 'eof' | 'partial';
  constructor(inner: BlobReader, options: { shortFrom?: number; shortTo?: number; mode?: 'eof' | 'partial' } = {}) {
    this.#inner = inner;
    this.#shortFrom = options.shortFrom ?? Infinity;
    this.#shortTo = options.shortTo ?? Infinity;
    this.#mode = options.mode ?? 'eof';
  }
  get size(): number {
    return this.#inner.size;
  }
  async readAt(buf: Uint8Array, offset: number): Promise<number> {
    this.reads++;
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    try {
      await new Promise((r) => setTimeout(r, 2));
      if (offset >= this.#shortFrom && offset < this.#shortTo) {
        return this.#mode === 'eof' ? 0 : Math.min(buf.length, 512);
      }
      const n = offset < this.#shortFrom ? clampRead(this.#shortFrom, offset, buf.length) : buf.length;
      return this.#inner.readAt(buf.subarray(0, n), offset);
    } finally {
      this.inFlight--;
    }
  }
  close(): Promise<void> {
    return this.#inner.close();
  }
}

test('LsmtStack issues the data reads of one request concurrently and coalesces adjacent ones', async () => {
  // Four 8-sector entries mapped out of order, plus two entries adjacent in both spaces.
  const entries = [seg(0, 8, 32), seg(16, 8, 8), seg(32, 8, 24), seg(48, 8, 16), seg(56, 8, 40), seg(64, 8, 48)];
  const probe = new ProbeReader(new MemoryReader(memoryLayerBytes(entries, 48)));
  const dev = await LsmtStack.create({ lowers: [await openRoLayer(probe)] });
  probe.reads = 0;
  probe.maxInFlight = 0;
  const buf = await read(dev, 0, 72 * 512);
  assert.equal(probe.reads, 5, 'the last two entries are read with one request');
  assert.ok(probe.maxInFlight >= 5, `max in flight ${probe.maxInFlight}`);
  for (const e of entries) {
    for (let k = 0; k < e.length; k++) {
      const at = (e.offset + k) * 512;
      assert.deepEqual(buf.subarray(at, at + 512), pat(512, e.moffset - 8 + k), `sector ${e.offset + k}`);
    }
  }
  assert.deepEqual(buf.subarray(8 * 512, 16 * 512), fill(8 * 512, 0));
  await dev.close();
});

test('LsmtStack zero-fills a read that hits the end of a lower and fails a short read that does not', async () => {
  const bytes = memoryLayerBytes([seg(0, 16, 8)], 16);
  const eof = new ProbeReader(new MemoryReader(bytes), { shortFrom: 4096 + 8 * 512, shortTo: 4096 + 16 * 512, mode: 'eof' });
  const dev = await LsmtStack.create({ lowers: [await openRoLayer(eof)] });
  // from data sector 8 on, the lower answers as if its end had been reached
  const got = await read(dev, 0, 16 * 512);
  for (let k = 0; k < 8; k++) assert.deepEqual(got.subarray(k * 512, k * 512 + 512), pat(512, k));
  assert.deepEqual(got.subarray(8 * 512), fill(8 * 512, 0));
  await dev.close();

  const partial = new ProbeReader(new MemoryReader(bytes), { shortFrom: 4096 + 8 * 512, shortTo: 4096 + 16 * 512, mode: 'partial' });
  const dev2 = await LsmtStack.create({ lowers: [await openRoLayer(partial)] });
  await assert.rejects(dev2.readAt(new Uint8Array(16 * 512), 0), DataCorruptionError);
  await dev2.close();
});

test('LsmtStack.close() closes every layer and reports a failure', async () => {
  const closed: string[] = [];
  const layer = (name: string, fail = false): ReadOnlyLayer => ({
    virtualSize: MiB,
    uuid: NIL_UUID,
    parentUuid: NIL_UUID,
    segments: [],
    blob: new MemoryReader(new Uint8Array(0)),
    lookup: () => {},
    close: async () => {
      closed.push(name);
      if (fail) throw new Error(`close ${name} failed`);
    },
  });
  const dev = await LsmtStack.create({ lowers: [layer('a'), layer('b', true), layer('c')] });
  await assert.rejects(dev.close(), /close b failed/);
  assert.deepEqual(closed.sort(), ['a', 'b', 'c']);
});

// --- ZFile / tar encodings, through openLayerBlob (owned by the zfile engineer) ---------

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

async function openWrapped(blob: BlobReader, what: string): Promise<ReadOnlyLayer> {
  if (typeof openLayerBlob === 'string') throw new Error(openLayerBlob);
  const { reader } = await openLayerBlob(blob);
  return openRoLayer(reader, { what });
}

async function wrappedStack(...paths: string[][]): Promise<LsmtStack> {
  const lowers = await Promise.all(paths.map(async (p) => openWrapped(await openFileReader(vector(...p)), p.join('/'))));
  return LsmtStack.create({ lowers });
}

for (const name of ['L1.lz4.commit', 'L1.zstd.commit', 'L1.lz4.bs32.commit', 'L1.lz4.commit.tar']) {
  test(`LsmtStack reads ${name} like L1`, { skip: skipNoBlob }, async () => {
    const dev = await wrappedStack(['lsmt', name]);
    try {
      assert.equal(await hashDevice(dev, 68 * MiB), HASH.l1.mb68);
      assert.equal(await hashDevice(dev), HASH.l1.full);
    } finally {
      await dev.close();
    }
  });
}

test('LsmtStack reads L2.lz4.commit like L2', { skip: skipNoBlob }, async () => {
  const dev = await wrappedStack(['lsmt', 'L2.lz4.commit']);
  try {
    assert.equal(await hashDevice(dev), HASH.l2.full);
  } finally {
    await dev.close();
  }
});

test('LsmtStack of [L1.lz4.commit, L2.lz4.commit] and the merged layer read like the stack', { skip: skipNoBlob }, async () => {
  for (const paths of [[['lsmt', 'L1.lz4.commit'], ['lsmt', 'L2.lz4.commit']], [['stack', 'L1L2.merged.lz4']]]) {
    const dev = await wrappedStack(...paths);
    try {
      assert.equal(await hashDevice(dev, 68 * MiB), HASH.stack.mb68, paths.join());
      assert.equal(await hashDevice(dev), HASH.stack.full, paths.join());
    } finally {
      await dev.close();
    }
  }
});

test('LsmtStack reads the ext4 apply stacks (old-writer base layer) to the first-64-MiB hashes', { skip: skipNoBlob }, async () => {
  const tar = new Uint8Array(gunzipSync(readFileSync(vector('apply', 'ext4_64.tar.gz'))));
  const size = parseInt(new TextDecoder().decode(tar.subarray(124, 136)).replace(/\0.*$/s, '').trim(), 8);
  const base = tar.subarray(512, 512 + size);
  const cases: [string[], string][] = [
    [[], 'a7405d1545c7bdb63e3d5233a1ce3e34a2564eb8269bfb125202168fb1bdc596'],
    [['A1.lz4.commit'], 'f7b86962b446256cf485145d72be47bd441cceb7d975e82f18c2eef236c6aacc'],
    [['A1.lz4.commit', 'A2.lz4.commit'], '1e6018d51b69a81fb78dc139ff8e921a2ff5f73cb307f1679087ada5bcc2ceaa'],
  ];
  for (const [names, hash] of cases) {
    const lowers = [await openWrapped(new MemoryReader(base), 'ext4_64')];
    for (const n of names) lowers.push(await openWrapped(await openFileReader(vector('apply', n)), n));
    const dev = await LsmtStack.create({ lowers });
    try {
      assert.equal(dev.size, 64 * GiB);
      assert.equal(await hashDevice(dev, 64 * MiB), hash, names.join() || 'ext4_64');
    } finally {
      await dev.close();
    }
  }
});
