import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { appendFile, copyFile, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { readFully } from '../../io/blob-reader.ts';
import { AlreadyExistsError, DataCorruptionError, InvalidArgumentError } from '../../io/errors.ts';
import { fill, pat, xs } from '../../../test/support/generators.ts';
import { REPO_ROOT, vector } from '../../../test/support/shared.ts';
import { decodeHeaderTrailer, HEADER_TRAILER_SIZE } from './header-trailer.ts';
import type { WritableLayer } from './layer.ts';
import { decodeSegments, encodeSegments, type Segment } from './segment.ts';
import { createWritableLayer, openWritableLayer } from './writable-layer.ts';

const GIB = 1 << 30;

async function tempDir(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'obd-rw-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Reads `length` bytes of the layer's virtual content at `offset` (unmapped and zeroed read 0). */
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

const L1_ENTRIES: Segment[] = [
  { offset: 0, length: 128, moffset: 8, zeroed: false, tag: 0 },
  { offset: 2048, length: 8, moffset: 136, zeroed: false, tag: 0 },
  { offset: 16385, length: 3, moffset: 144, zeroed: false, tag: 0 },
  { offset: 32, length: 16, moffset: 147, zeroed: false, tag: 0 },
  { offset: 4096, length: 256, moffset: 163, zeroed: false, tag: 0 },
  { offset: 4160, length: 32, moffset: 419, zeroed: true, tag: 0 },
];

async function replayL1(layer: WritableLayer): Promise<void> {
  await layer.write(pat(65536, 0), 0);
  await layer.write(xs(4096, 1), 1048576);
  await layer.write(fill(1536, 0x5a), 8389120);
  await layer.write(fill(8192, 0xab), 16384);
  await layer.write(pat(131072, 7), 2097152);
  await layer.trim(2129920, 16384);
}

test('createWritableLayer() writes both headers as overlaybd-create does (lsmt.md §8.1)', async (t) => {
  const dir = await tempDir(t);
  const paths = { data: join(dir, 'd'), index: join(dir, 'i') };
  const layer = await createWritableLayer({ ...paths, virtualSize: GIB, parentUuid: '00000000-0000-4000-8000-0000000000a1' });
  await layer.close();
  const data = decodeHeaderTrailer(await readFile(paths.data));
  const index = decodeHeaderTrailer(await readFile(paths.index));
  assert.equal(data.flags, 0x03);
  assert.equal(index.flags, 0x01);
  assert.equal(data.indexOffset, 0);
  assert.equal(index.indexOffset, 4096);
  assert.equal(data.virtualSize, GIB);
  assert.equal(index.virtualSize, GIB);
  assert.equal(data.uuid, index.uuid);
  assert.match(data.uuid, /^[0-9A-F]{8}-[0-9A-F]{4}-4[0-9A-F]{3}-[89AB][0-9A-F]{3}-[0-9A-F]{12}$/);
  assert.equal(data.parentUuid, '00000000-0000-4000-8000-0000000000A1');
  assert.equal((await stat(paths.data)).mode & 0o777 & ~process.umask(), 0o644 & ~process.umask());
  assert.equal((await stat(paths.index)).size, 4096);
});

test('replaying the L1 writes gives the raw index entries and data size of L1.rw.index (vectors §3)', async (t) => {
  const dir = await tempDir(t);
  const paths = { data: join(dir, 'd'), index: join(dir, 'i') };
  const layer = await createWritableLayer({ ...paths, virtualSize: GIB });
  await replayL1(layer);
  await layer.close();
  const raw = await readFile(paths.index);
  assert.deepEqual(decodeSegments(raw.subarray(HEADER_TRAILER_SIZE)), L1_ENTRIES);
  const vectorIndex = await readFile(vector('lsmt', 'L1.rw.index'));
  assert.deepEqual(raw.subarray(HEADER_TRAILER_SIZE), vectorIndex.subarray(HEADER_TRAILER_SIZE));
  assert.equal((await stat(paths.data)).size, 214528);
  // Payload bytes are deterministic: everything after the header equals the vector's.
  const data = await readFile(paths.data);
  const vectorData = await readFile(vector('lsmt', 'L1.rw.data'));
  assert.deepEqual(data.subarray(HEADER_TRAILER_SIZE), vectorData.subarray(HEADER_TRAILER_SIZE));
});

test('a reopened layer reads back the L1 virtual content (lsmt.md §8.4)', async (t) => {
  const dir = await tempDir(t);
  const paths = { data: join(dir, 'd'), index: join(dir, 'i') };
  const created = await createWritableLayer({ ...paths, virtualSize: GIB });
  await replayL1(created);
  const before = await readLayer(created, 0, 2228224);
  await created.close();
  const layer = await openWritableLayer(paths);
  t.after(() => layer.close());
  assert.equal(layer.sparse, false);
  assert.equal(layer.uuid, created.uuid);
  assert.equal(layer.virtualSize, GIB);
  const content = await readLayer(layer, 0, 2228224);
  assert.deepEqual(content, before);
  assert.deepEqual(content.subarray(0, 16384), pat(65536, 0).subarray(0, 16384));
  assert.deepEqual(content.subarray(16384, 24576), fill(8192, 0xab));
  assert.deepEqual(content.subarray(24576, 65536), pat(65536, 0).subarray(24576));
  assert.deepEqual(content.subarray(1048576, 1052672), xs(4096, 1));
  assert.deepEqual(content.subarray(2097152, 2129920), pat(131072, 7).subarray(0, 32768));
  assert.deepEqual(content.subarray(2129920, 2146304), fill(16384, 0));
  assert.deepEqual(content.subarray(2146304, 2228224), pat(131072, 7).subarray(49152));
  assert.deepEqual(await readLayer(layer, 8389120 - 512, 2048), new Uint8Array([...fill(512, 0), ...fill(1536, 0x5a)]));
});

test('openWritableLayer() opens the upstream L1.rw.data/L1.rw.index pair', async (t) => {
  const dir = await tempDir(t);
  const paths = { data: join(dir, 'd'), index: join(dir, 'i') };
  await copyFile(vector('lsmt', 'L1.rw.data'), paths.data);
  await copyFile(vector('lsmt', 'L1.rw.index'), paths.index);
  const layer = await openWritableLayer(paths);
  t.after(() => layer.close());
  assert.deepEqual(
    layer.segments().map((s) => [s.offset, s.length, s.moffset, s.zeroed]),
    [
      [0, 32, 8, false],
      [32, 16, 147, false],
      [48, 80, 56, false],
      [2048, 8, 136, false],
      [4096, 64, 163, false],
      [4160, 32, 419, true],
      [4192, 160, 259, false],
      [16385, 3, 144, false],
    ],
  );
  assert.deepEqual(await readLayer(layer, 16384, 8192), fill(8192, 0xab));
});

test('write() and trim() reject offsets and lengths that are not multiples of 512 (lsmt.md §19.9)', async (t) => {
  const dir = await tempDir(t);
  const layer = await createWritableLayer({ data: join(dir, 'd'), index: join(dir, 'i'), virtualSize: GIB });
  t.after(() => layer.close());
  await assert.rejects(layer.write(new Uint8Array(512), 1000), {
    name: 'InvalidArgumentError',
    message: 'Cannot write at offset 1000: offset is not a multiple of 512',
  });
  await assert.rejects(layer.write(new Uint8Array(1000), 0), InvalidArgumentError);
  await assert.rejects(layer.trim(512, 100), InvalidArgumentError);
  await assert.rejects(layer.trim(100, 512), InvalidArgumentError);
  await assert.rejects(layer.write(new Uint8Array(512), -512), InvalidArgumentError);
  assert.equal(layer.segments().length, 0);
});

test('createWritableLayer() refuses existing files with AlreadyExistsError', async (t) => {
  const dir = await tempDir(t);
  const paths = { data: join(dir, 'd'), index: join(dir, 'i') };
  await writeFile(paths.data, 'x');
  await assert.rejects(createWritableLayer({ ...paths, virtualSize: GIB }), AlreadyExistsError);
  assert.equal(await readFile(paths.data, 'utf8'), 'x');
  await rm(paths.data);
  await writeFile(paths.index, 'y');
  await assert.rejects(createWritableLayer({ ...paths, virtualSize: GIB }), AlreadyExistsError);
  // the data file created before the index failed is removed again
  await assert.rejects(stat(paths.data), { code: 'ENOENT' });
});

test('write() splits at 4 MiB and trim() at 16383 sectors (lsmt.md §8.2)', async (t) => {
  const dir = await tempDir(t);
  const paths = { data: join(dir, 'd'), index: join(dir, 'i') };
  const layer = await createWritableLayer({ ...paths, virtualSize: GIB });
  const big = xs(9 << 20, 7);
  await layer.write(big, 1 << 20);
  await layer.trim(64 << 20, 16 << 20);
  await layer.close();
  const entries = decodeSegments((await readFile(paths.index)).subarray(HEADER_TRAILER_SIZE));
  assert.deepEqual(
    entries.map((s) => [s.offset, s.length, s.moffset, s.zeroed]),
    [
      [2048, 8192, 8, false],
      [10240, 8192, 8200, false],
      [18432, 2048, 16392, false],
      [131072, 16383, 18440, true],
      [147455, 16383, 18440, true],
      [163838, 2, 18440, true],
    ],
  );
  const again = await openWritableLayer(paths);
  t.after(() => again.close());
  assert.deepEqual(await readLayer(again, 1 << 20, 9 << 20), big);
});

test('concurrent writes never collide and later calls win', async (t) => {
  const dir = await tempDir(t);
  const paths = { data: join(dir, 'd'), index: join(dir, 'i') };
  const layer = await createWritableLayer({ ...paths, virtualSize: GIB });
  const model = new Uint8Array(1 << 20);
  const ops: Promise<void>[] = [];
  let x = 12345;
  for (let i = 0; i < 300; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    const offset = (x % 2000) * 512;
    const length = ((x >>> 11) % 64 + 1) * 512;
    if (i % 10 === 9) {
      ops.push(layer.trim(offset, length));
      model.fill(0, offset, offset + length);
    } else {
      const buf = fill(length, (i % 250) + 1);
      ops.push(layer.write(buf, offset));
      model.set(buf, offset);
    }
  }
  await Promise.all(ops);
  assert.deepEqual(await readLayer(layer, 0, model.length), model);
  await layer.close();
  // On disk: data positions strictly increasing, every payload where its entry says.
  const entries = decodeSegments((await readFile(paths.index)).subarray(HEADER_TRAILER_SIZE));
  let pos = 8;
  for (const e of entries.filter((s) => !s.zeroed)) {
    assert.equal(e.moffset, pos);
    pos += e.length;
  }
  assert.equal((await stat(paths.data)).size, pos * 512);
  const again = await openWritableLayer(paths);
  t.after(() => again.close());
  assert.deepEqual(await readLayer(again, 0, model.length), model);
});

test('setVirtualSize() rewrites both headers; writes alone grow only the in-memory size', async (t) => {
  const dir = await tempDir(t);
  const paths = { data: join(dir, 'd'), index: join(dir, 'i') };
  const layer = await createWritableLayer({ ...paths, virtualSize: 0 });
  await layer.write(fill(4096, 1), 1 << 20);
  assert.equal(layer.virtualSize, (1 << 20) + 4096);
  assert.equal(decodeHeaderTrailer(await readFile(paths.data)).virtualSize, 0);
  await layer.setVirtualSize(64 * GIB);
  await layer.close();
  assert.equal(decodeHeaderTrailer(await readFile(paths.data)).virtualSize, 64 * GIB);
  assert.equal(decodeHeaderTrailer(await readFile(paths.index)).virtualSize, 64 * GIB);
  const again = await openWritableLayer(paths);
  t.after(() => again.close());
  assert.equal(again.virtualSize, 64 * GIB);
});

test('openWritableLayer() drops a torn index tail and truncates it away (deviation from upstream)', async (t) => {
  const dir = await tempDir(t);
  const paths = { data: join(dir, 'd'), index: join(dir, 'i') };
  const layer = await createWritableLayer({ ...paths, virtualSize: GIB });
  await replayL1(layer);
  await layer.close();
  const good = await readFile(paths.index);
  // A partial entry, then (separately) whole entries whose data never reached the data file.
  await appendFile(paths.index, new Uint8Array(7).fill(0x33));
  let again = await openWritableLayer(paths);
  assert.equal(again.segments().length, 8);
  await again.close();
  assert.deepEqual(await readFile(paths.index), good);
  const beyond = encodeSegments([
    { offset: 9000, length: 8, moffset: 419, zeroed: false, tag: 0 },
    { offset: 9100, length: 8, moffset: 427, zeroed: true, tag: 0 },
  ]);
  await appendFile(paths.index, beyond);
  again = await openWritableLayer(paths);
  assert.equal(again.segments().length, 8);
  // appends continue right after the kept entries
  await again.write(fill(512, 9), 512 * 9000);
  await again.close();
  const entries = decodeSegments((await readFile(paths.index)).subarray(HEADER_TRAILER_SIZE));
  assert.deepEqual(entries.slice(0, 6), L1_ENTRIES);
  assert.deepEqual(entries.slice(6), [{ offset: 9000, length: 1, moffset: 419, zeroed: false, tag: 0 }]);
});

test('openWritableLayer() still refuses a bad entry that is not part of the tail', async (t) => {
  const dir = await tempDir(t);
  const paths = { data: join(dir, 'd'), index: join(dir, 'i') };
  const layer = await createWritableLayer({ ...paths, virtualSize: GIB });
  await layer.write(fill(4096, 1), 0);
  await layer.close();
  const good = await readFile(paths.index);
  await appendFile(
    paths.index,
    encodeSegments([
      { offset: 100, length: 8, moffset: 4000, zeroed: false, tag: 0 },
      { offset: 200, length: 8, moffset: 8, zeroed: false, tag: 0 },
    ]),
  );
  await assert.rejects(openWritableLayer(paths), DataCorruptionError);
  await writeFile(paths.index, good);
  await appendFile(paths.index, encodeSegments([{ offset: 100, length: 8, moffset: 2, zeroed: false, tag: 0 }]));
  await assert.rejects(openWritableLayer(paths), /entry 1 has moffset 2, inside the header/);
  // wrong index header: a data-file header in place of the index header
  await writeFile(paths.index, await readFile(paths.data));
  await assert.rejects(openWritableLayer(paths), DataCorruptionError);
});

test('stored index entries carry the RW tag; in-memory segments keep tag 0 (lsmt.md §11)', async (t) => {
  const dir = await tempDir(t);
  const paths = { data: join(dir, 'd'), index: join(dir, 'i') };
  const layer = await createWritableLayer({ ...paths, virtualSize: GIB });
  assert.ok(!layer.sparse);
  if (!layer.sparse) layer.rwTag = 2;
  await layer.write(fill(512, 1), 0);
  assert.equal(layer.segments()[0]?.tag, 0);
  await layer.close();
  assert.equal(decodeSegments((await readFile(paths.index)).subarray(HEADER_TRAILER_SIZE))[0]?.tag, 2);
  const again = await openWritableLayer(paths);
  t.after(() => again.close());
  assert.equal(again.segments()[0]?.tag, 0);
});

const CHILD = fileURLToPath(new URL('./_durability-child.ts', import.meta.url));

/** Runs the child until it reported `flushes` flushes, then SIGKILLs it mid-write. */
function runChildUntilKilled(
  paths: { data: string; index: string },
  options: { seed: number; flushes: number },
): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', CHILD, paths.data, paths.index, String(options.seed)], {
      cwd: REPO_ROOT,
      stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
    });
    let flushedUpTo = -1;
    let seen = 0;
    child.on('message', (message: { flushed: number }) => {
      flushedUpTo = message.flushed;
      if (++seen === options.flushes) {
        // Let further (unflushed) writes start, then kill in the middle of them.
        setTimeout(() => child.kill('SIGKILL'), 3 + (options.seed % 7));
      }
    });
    child.on('error', reject);
    child.on('exit', (_code, signal) => {
      if (signal !== 'SIGKILL') reject(new Error(`child exited without being killed (${_code})`));
      else resolve(flushedUpTo);
    });
  });
}

test('after flush() resolves, kill -9 during later writes loses nothing flushed', async (t) => {
  const { childWrite, SLOT } = await import('./_durability-child.ts');
  for (const seed of [1, 2, 3, 4]) {
    const dir = await tempDir(t);
    const paths = { data: join(dir, 'd'), index: join(dir, 'i') };
    await (await createWritableLayer({ ...paths, virtualSize: GIB })).close();
    const flushedUpTo = await runChildUntilKilled(paths, { seed, flushes: 5 + seed });
    assert.ok(flushedUpTo >= 0);
    const layer = await openWritableLayer(paths);
    try {
      let unflushedPresent = 0;
      let missingSince = -1;
      for (let i = 0; missingSince < 0 || i < missingSince + 32; i++) {
        const { offset, data } = childWrite(seed, i);
        const got = await readLayer(layer, offset, SLOT);
        const expected = new Uint8Array(SLOT);
        expected.set(data);
        if (i <= flushedUpTo) {
          assert.deepEqual(got, expected, `flushed write ${i} (seed ${seed})`);
        } else if (got.every((b) => b === 0)) {
          if (missingSince < 0) missingSince = i;
        } else {
          // Unflushed writes land all or nothing, as a prefix of the call order.
          assert.equal(missingSince, -1, `write ${i} landed after write ${missingSince} was lost (seed ${seed})`);
          assert.deepEqual(got, expected, `unflushed write ${i} (seed ${seed})`);
          unflushedPresent++;
        }
      }
      t.diagnostic(`seed ${seed}: flushed through write ${flushedUpTo}, ${unflushedPresent} later writes landed`);
    } finally {
      await layer.close();
    }
  }
});
