import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { createWritableLayer } from '../formats/lsmt/writable-layer.ts';
import { commitFile } from '../formats/lsmt/commit-files.ts';
import type { CommitFileOptions } from '../formats/lsmt/commit-files.ts';
import { openLayerBlob } from '../formats/open-layer-blob.ts';
import { openFileReader } from '../io/file-reader.ts';
import { readBytes } from '../io/blob-reader.ts';
import { InvalidArgumentError } from '../io/errors.ts';
import { parseDeviceConfig } from '../image/device-config.ts';
import { RemoteAccess } from '../image/remote-access.ts';
import type { LsmtStack } from '../formats/lsmt/stack.ts';
import { openDevice } from './open-device.ts';
import { decodeTrace, encodeTrace } from './trace-file.ts';
import { downloadSettings, replayRanges, replayReaderSettings, REPLAY_PIECE, REPLAY_REFILL_SIZE, type TracePrefetcher } from './trace-prefetcher.ts';
import type { TraceRecord } from './trace-file.ts';
import { pseudoRandom } from '../../test/support/sample-layers.ts';
import { StaticRangeOrigin } from '../../test/fakes/static-range-origin.ts';

const MiB = 2 ** 20;
const T = { timeout: 60_000 };
let dir = '';
/** Bottom: tar-wrapped ZFile; top: plain LSMT. */
let bottom = '';
let top = '';
/** The decoded layer files (what trace offsets refer to). */
const decoded: Uint8Array[] = [];

async function layer(name: string, edits: Array<[number, number, number]>, options: CommitFileOptions): Promise<string> {
  const data = join(dir, `${name}.data`);
  const index = join(dir, `${name}.index`);
  const rw = await createWritableLayer({ data, index, virtualSize: 64 * MiB });
  for (const [offset, length, seed] of edits) await rw.write(pseudoRandom(seed, length), offset);
  await rw.close();
  const out = join(dir, `${name}.blob`);
  await commitFile({ data, index }, out, options);
  return out;
}

async function decodeLayer(path: string): Promise<Uint8Array> {
  const { reader } = await openLayerBlob(await openFileReader(path));
  try {
    return await readBytes(reader, 0, reader.size);
  } finally {
    await reader.close();
  }
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'obd-trace-'));
  bottom = await layer('bottom', [[0, 6 * MiB, 1], [20 * MiB, MiB, 2]], { zfile: { algorithm: 'lz4', blockSize: 65536, verify: true }, tar: true });
  top = await layer('top', [[4 * MiB, 64 * 1024, 3]], {});
  decoded.push(await decodeLayer(bottom), await decodeLayer(top));
});

after(() => {
  if (dir !== '') rmSync(dir, { recursive: true, force: true });
});

async function read(device: LsmtStack, offset: number, length: number): Promise<Uint8Array> {
  const buf = new Uint8Array(length);
  await device.readAt(buf, offset);
  return buf;
}

function emptyTrace(name: string): string {
  const path = join(dir, name);
  writeFileSync(path, '');
  return path;
}

function config(extra: Record<string, unknown>, lowers: unknown[] = [{ file: bottom }, { file: top }]): ReturnType<typeof parseDeviceConfig> {
  return parseDeviceConfig(JSON.stringify({ lowers, ...extra }), dir);
}

/** Concatenates the decoded-layer bytes the records name. */
function tracedBytes(records: ReadonlyArray<{ layerIndex: number; count: number; offset: number }>): Uint8Array {
  return new Uint8Array(Buffer.concat(records.map((r) => (decoded[r.layerIndex] as Uint8Array).subarray(r.offset, r.offset + r.count))));
}

test('recording appends every lower read at decoded-layer offsets and writes the trace, .ok and no .lock on close', T, async () => {
  const trace = emptyTrace('record.trace');
  let pf: TracePrefetcher | undefined;
  const device = await openDevice(config({ recordTracePath: trace }), { onPrefetch: (p) => (pf = p) });
  let all: ReadonlyArray<unknown> = [];
  try {
    assert.ok(pf !== undefined && pf.mode === 'record');
    assert.ok(existsSync(`${trace}.lock`), 'no lock file while recording');
    assert.ok(!existsSync(`${trace}.ok`));
    const atOpen = pf.records.length;
    assert.ok(atOpen > 0, 'the LSMT index reads at open are not recorded');

    // Only the top layer has data at 4 MiB: its records carry exactly the device bytes.
    const a = await read(device, 4 * MiB, 64 * 1024);
    const topReads = pf.records.slice(atOpen);
    assert.ok(topReads.length > 0);
    assert.ok(topReads.every((r) => r.op === 'R' && r.layerIndex === 1));
    assert.deepEqual(tracedBytes(topReads), a);

    // Only the bottom (tar + ZFile) has data in [1 MiB, 2 MiB): offsets are decoded-file offsets.
    const mark = pf.records.length;
    const b = await read(device, MiB, MiB);
    const bottomReads = pf.records.slice(mark);
    assert.ok(bottomReads.every((r) => r.layerIndex === 0));
    assert.deepEqual(tracedBytes(bottomReads), b);
    all = pf.records.slice();
  } finally {
    await device.close();
  }
  assert.deepEqual(decodeTrace(readFileSync(trace)), all);
  assert.ok(!existsSync(`${trace}.lock`), 'lock file left behind');
  assert.equal(readFileSync(`${trace}.ok`).length, 0);
});

test('deleting the lock file ends recording: the trace is written before the device closes', T, async () => {
  const trace = emptyTrace('lock.trace');
  let pf: TracePrefetcher | undefined;
  const device = await openDevice(config({ recordTracePath: trace }), { prefetch: { pollMs: 20 }, onPrefetch: (p) => (pf = p) });
  try {
    await read(device, 4 * MiB, 4096);
    unlinkSync(`${trace}.lock`);
    for (let i = 0; i < 250 && !existsSync(`${trace}.ok`); i++) await sleep(20);
    assert.ok(existsSync(`${trace}.ok`), 'no .ok after the lock was removed');
    const written = readFileSync(trace);
    const n = decodeTrace(written).length;
    assert.equal(n, pf?.records.length);
    await read(device, MiB, MiB);
    assert.equal(pf?.records.length, n, 'reads after the lock was removed were recorded');
    await device.close();
    assert.deepEqual(readFileSync(trace), written, 'closing rewrote the trace');
  } finally {
    await device.close().catch(() => {});
  }
});

test('a second recorder of the same path (lock present) does not record', T, async () => {
  const trace = emptyTrace('busy.trace');
  writeFileSync(`${trace}.lock`, '');
  let pf: TracePrefetcher | undefined;
  const device = await openDevice(config({ recordTracePath: trace }), { onPrefetch: (p) => (pf = p) });
  await read(device, 0, 4096);
  await device.close();
  assert.equal(pf, undefined);
  assert.equal(readFileSync(trace).length, 0);
  assert.ok(existsSync(`${trace}.lock`), 'the other recorder\'s lock was removed');
});

test('a failed open removes the lock and writes no trace', T, async () => {
  const trace = emptyTrace('failed.trace');
  await assert.rejects(openDevice(config({ recordTracePath: trace }, [{ file: bottom }, { file: join(dir, 'missing') }])));
  assert.ok(!existsSync(`${trace}.lock`));
  assert.ok(!existsSync(`${trace}.ok`));
  assert.equal(readFileSync(trace).length, 0);
});

test('accelerationLayer with recordTracePath is rejected', T, async () => {
  const trace = emptyTrace('both.trace');
  await assert.rejects(openDevice(config({ recordTracePath: trace, accelerationLayer: true })), InvalidArgumentError);
});

test('a corrupt trace fails the open naming the file', T, async () => {
  const trace = join(dir, 'corrupt.trace');
  const bytes = encodeTrace([{ op: 'R', layerIndex: 0, count: 4096, offset: 0 }]);
  bytes[30] = (bytes[30] as number) ^ 1;
  writeFileSync(trace, bytes);
  await assert.rejects(openDevice(config({ recordTracePath: trace })), (e: Error) => e.message.includes(trace) && /checksum/.test(e.message));
});

test('replaying an acceleration layer pulls the traced ranges of a remote layer into the cache; reading them then fetches nothing', T, async () => {
  // The trace: a real recording of reads of [0, 5 MiB), one longer than a replay piece
  // (split), more than a merge gap away from what opening the device reads near 7 MiB.
  const traced = 5 * MiB;
  const tail = MiB / 2;
  assert.ok(REPLAY_PIECE < traced - tail);
  const trace = emptyTrace('replay.trace');
  const rec = await openDevice(config({ recordTracePath: trace }, [{ file: bottom }]));
  await read(rec, 0, traced - tail);
  await read(rec, traced - tail, tail);
  await rec.close();
  const records = decodeTrace(readFileSync(trace));
  assert.ok(records.some((r) => r.count > REPLAY_PIECE), 'no record over a replay piece to split');
  const accelDir = join(dir, 'accel');
  mkdirSync(accelDir);
  writeFileSync(join(accelDir, 'trace'), readFileSync(trace));

  const blob = readFileSync(bottom);
  const digest = `sha256:${createHash('sha256').update(blob).digest('hex')}`;
  const origin = await StaticRangeOrigin.start({ [`/v2/t/blobs/${digest}`]: blob });
  const access = new RemoteAccess({ cacheDir: join(dir, 'cache'), reader: { refillSize: 65536 } });
  try {
    const cfg = parseDeviceConfig(
      JSON.stringify({ repoBlobUrl: `${origin.url}/v2/t/blobs`, accelerationLayer: true, lowers: [{ digest, size: blob.length }, { dir: accelDir }] }),
      dir,
    );
    let pf: TracePrefetcher | undefined;
    // As obd serve-fuse opens a replaying device: small refill, no sequential readahead.
    const device = await openDevice(cfg, { remote: access.opener(undefined, await replayReaderSettings(cfg)), onPrefetch: (p) => (pf = p) });
    try {
      assert.equal(pf?.mode, 'replay');
      const stats = await pf?.replayed();
      assert.ok(stats !== undefined);
      assert.equal(stats.errors, 0);
      assert.equal(stats.stopped, false);
      assert.equal(stats.records, records.length);
      assert.ok(stats.pieces >= Math.ceil(traced / REPLAY_PIECE), 'the traced ranges were not read in pieces of at most REPLAY_PIECE');
      assert.equal(stats.bytes, records.reduce((s, r) => s + r.count, 0));
      assert.ok(origin.counters.requests > 0);

      const before = origin.counters.requests;
      assert.deepEqual(await read(device, 0, traced), pseudoRandom(1, 6 * MiB).subarray(0, traced));
      assert.equal(origin.counters.requests, before, 'reading the traced ranges fetched from the registry');
      assert.deepEqual(await read(device, 20 * MiB, 4096), pseudoRandom(2, MiB).subarray(0, 4096));
      assert.ok(origin.counters.requests > before, 'an untraced range was already cached: the check above proves nothing');
    } finally {
      await device.close();
    }
  } finally {
    await access.close();
    await origin.close();
  }
});

test('closing the device stops a replay in progress', T, async () => {
  const trace = join(dir, 'long.trace');
  // 400 reads of 64 KiB spread over the bottom layer: more than a closing device waits for.
  const size = (decoded[0] as Uint8Array).length;
  writeFileSync(trace, encodeTrace(Array.from({ length: 400 }, (_, i) => ({ op: 'R' as const, layerIndex: 0, count: 65536, offset: (i * 65536) % size }))));
  let pf: TracePrefetcher | undefined;
  const device = await openDevice(config({ recordTracePath: trace }, [{ file: bottom }]), { prefetch: { concurrency: 2 }, onPrefetch: (p) => (pf = p) });
  await device.close();
  const stats = await pf?.replayed();
  assert.equal(stats?.stopped, true);
  assert.ok((stats?.pieces ?? 0) < 400);
  assert.equal(readFileSync(trace).length, 24 + 400 * 24, 'replay modified the trace');
});

test('an acceleration layer without a trace is dropped and nothing is replayed', T, async () => {
  const empty = join(dir, 'accel-empty');
  mkdirSync(empty);
  let pf: TracePrefetcher | undefined;
  const device = await openDevice(config({ accelerationLayer: true }, [{ file: top }, { dir: empty }]), { onPrefetch: (p) => (pf = p) });
  try {
    assert.equal(pf, undefined);
    assert.deepEqual(await read(device, 4 * MiB, 4096), pseudoRandom(3, 4096));
  } finally {
    await device.close();
  }
});

test('downloadSettings() turns background download off while recording a trace, and only then', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'obd-dl-'));
  try {
    const download = { enable: true, delay: 5 };
    const cfgWith = (extra: Record<string, unknown>) =>
      parseDeviceConfig(JSON.stringify({ lowers: [{ file: join(dir, 'layer') }], download, ...extra }), dir);
    const trace = join(dir, 'trace');
    assert.deepEqual(await downloadSettings(cfgWith({})), download, 'no trace: as configured');
    assert.deepEqual(await downloadSettings(cfgWith({ recordTracePath: trace })), download, 'the trace file does not exist: no recording');
    writeFileSync(trace, '');
    assert.deepEqual(await downloadSettings(cfgWith({ recordTracePath: trace })), { enable: false, delay: 5 }, 'an empty trace file: recording');
    writeFileSync(trace, encodeTrace([{ op: 'R', layerIndex: 0, count: 512, offset: 0 }]));
    assert.deepEqual(await downloadSettings(cfgWith({ recordTracePath: trace })), download, 'a trace to replay: as configured');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('replayRanges() merges overlapping, adjacent and close ranges per layer, in the order of their first record', () => {
  const R = (layerIndex: number, offset: number, count: number): TraceRecord => ({ op: 'R', layerIndex, offset, count });
  const records = [R(1, 500_000, 4096), R(0, 8192, 4096), R(0, 0, 4096), R(1, 0, 100), R(0, 4096, 8192), R(0, 77_824, 10), R(0, 300_000, 1)];
  assert.deepEqual(replayRanges(records, 65536), [
    { layerIndex: 1, offset: 500_000, count: 4096 },
    { layerIndex: 0, offset: 0, count: 77_834 }, // 0..12288 overlapping and adjacent, then a gap of exactly 64 KiB
    { layerIndex: 1, offset: 0, count: 100 },
    { layerIndex: 0, offset: 300_000, count: 1 },
  ]);
  assert.deepEqual(replayRanges(records, 0).filter((r) => r.layerIndex === 0), [
    { layerIndex: 0, offset: 0, count: 12288 },
    { layerIndex: 0, offset: 77_824, count: 10 },
    { layerIndex: 0, offset: 300_000, count: 1 },
  ]);
});

test('replayReaderSettings() asks for the small refill only when the device will replay a trace', async () => {
  const accelDir = join(dir, 'accel-settings');
  mkdirSync(accelDir);
  const accel = config({ accelerationLayer: true }, [{ file: bottom }, { dir: accelDir }]);
  assert.deepEqual(await replayReaderSettings(accel), {}, 'no trace file');
  writeFileSync(join(accelDir, 'trace'), '');
  assert.deepEqual(await replayReaderSettings(accel), {}, 'empty trace');
  writeFileSync(join(accelDir, 'trace'), encodeTrace([{ op: 'R', layerIndex: 0, count: 4096, offset: 0 }]));
  assert.deepEqual(await replayReaderSettings(accel), { refillSize: REPLAY_REFILL_SIZE, readaheadBytes: 0 });
  assert.deepEqual(await replayReaderSettings(config({}, [{ file: bottom }])), {});
  assert.deepEqual(await replayReaderSettings(config({ recordTracePath: join(accelDir, 'trace') }, [{ file: bottom }])), { refillSize: REPLAY_REFILL_SIZE, readaheadBytes: 0 });
  assert.deepEqual(await replayReaderSettings(config({ recordTracePath: emptyTrace('settings.trace') }, [{ file: bottom }])), {}, 'a recording device');
});
