import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, open, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readBytes } from '../io/blob-reader.ts';
import { DataCorruptionError, UnavailableError } from '../io/errors.ts';
import { BlockCache } from './block-cache.ts';
import { CachedBlobReader } from './cached-blob-reader.ts';
import { systemClock } from './clock.ts';
import { BackgroundDownload, COMMIT_FILE, DOWNLOAD_FILE, downloadBlob, resolveDownloadConfig, type DownloadJob } from './background-download.ts';
import { SwitchableBlobReader } from './switchable-blob-reader.ts';
import { VirtualClock } from './virtual-clock.ts';
import { blobBytes, CountingReader } from './_counting-reader.ts';

const KIB = 1024;
const MIB = 1 << 20;

type T = { after: (fn: () => Promise<void>) => void };

async function tempDir(t: T): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'obd-download-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

function blob(size: number, seed: number): { data: Uint8Array; digest: string } {
  const data = blobBytes(size, seed);
  return { data, digest: `sha256:${createHash('sha256').update(data).digest('hex')}` };
}

const timers = (): number => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;

test('resolveDownloadConfig() applies upstream defaults and limits', () => {
  assert.deepEqual(resolveDownloadConfig(), { delay: 300, delayExtra: 30, maxMBps: 100, tryCnt: 5, blockSize: 262144 });
  assert.deepEqual(resolveDownloadConfig({ delayExtra: 0, tryCnt: 0, delay: -5 }), { delay: 0, delayExtra: 30, maxMBps: 100, tryCnt: 1, blockSize: 262144 });
  assert.throws(() => resolveDownloadConfig({ blockSize: 0 }), /block size 0/);
});

test('after the delay the blob is downloaded, verified, committed and the layer reader switches to it', async (t) => {
  const root = await tempDir(t);
  const dir = join(root, 'layer');
  const { data, digest } = blob(MIB + 333, 1);
  const cache = await BlockCache.open({ dir: join(root, 'cache'), refillSize: 64 * KIB });
  t.after(() => cache.close());
  const remote = new CountingReader(data); // behind the cache
  const cached = await CachedBlobReader.open(cache, remote, { digest });
  const layer = new SwitchableBlobReader(cached);
  t.after(() => layer.close());
  await readBytes(layer, 0, 200 * KIB); // the device read the first units already
  const uncached = new CountingReader(data);
  const clock = new VirtualClock();
  const bg = BackgroundDownload.start({
    jobs: [{ dir, digest, source: uncached, cached, target: layer }],
    config: { delay: 300, delayExtra: 30, maxMBps: 0, blockSize: 64 * KIB },
    clock,
    random: () => 0.5,
  });
  const [out] = await bg.done;
  assert.equal(out?.state, 'committed', String(out?.error));
  assert.equal(out?.attempts, 1);
  assert.equal(clock.slept, 315_000, 'delay 300 s + floor(0.5 × 30) s');
  assert.equal(out?.cachedBytes, 256 * KIB, 'units held by the cache were copied from it');
  assert.equal(out?.fetchedBytes, data.length - 256 * KIB);
  assert.equal(uncached.bytes, data.length - 256 * KIB);
  assert.deepEqual(await readFile(join(dir, COMMIT_FILE)), Buffer.from(data));
  assert.deepEqual(await readdir(dir), [COMMIT_FILE]);
  assert.equal(layer.switched, true);
  const remoteReads = remote.reads;
  assert.deepEqual(await readBytes(layer, 0, data.length), data);
  assert.equal(remote.reads, remoteReads, 'after the switch no read reaches the remote');
  assert.equal(cache.stats.openBlobs, 0, 'the cached reader was closed by the switch');
});

test('units already written to .download are skipped; partly written ones are fetched', async (t) => {
  const dir = await tempDir(t);
  const unit = 64 * KIB;
  const { data, digest } = blob(8 * unit, 2);
  const fh = await open(join(dir, DOWNLOAD_FILE), 'w');
  await fh.write(data, 0, 3 * unit, 0); // units 0..2 complete
  await fh.write(data, 5 * unit, 4096, 5 * unit); // unit 5 only partly
  await fh.truncate(data.length);
  await fh.close();
  const source = new CountingReader(data);
  const r = await downloadBlob({ dir, digest, source }, { blockSize: unit });
  assert.deepEqual(r, { path: join(dir, COMMIT_FILE), fetchedBytes: 5 * unit, cachedBytes: 0, skippedBytes: 3 * unit });
  assert.deepEqual(source.calls.map(([o]) => o / unit), [3, 4, 5, 6, 7]);
  assert.deepEqual(await readFile(join(dir, COMMIT_FILE)), Buffer.from(data));
});

test('a digest mismatch leaves no commit file and the next attempt downloads everything again', async (t) => {
  const dir = await tempDir(t);
  const { data, digest } = blob(300 * KIB, 3);
  const source = new CountingReader(data);
  let corrupt = true;
  source.mutate = (bytes, offset) => {
    if (corrupt && offset === 0) bytes[0] = (bytes[0] as number) ^ 1;
  };
  await assert.rejects(downloadBlob({ dir, digest, source }, { blockSize: 64 * KIB }), DataCorruptionError);
  assert.deepEqual(await readdir(dir), [], 'neither .download nor overlaybd.commit');

  // Through the job queue: attempt 1 fails, attempt 2 re-fetches the whole blob.
  source.bytes = 0;
  const clock = new VirtualClock();
  const seen: number[] = [];
  source.mutate = (bytes, offset) => {
    if (offset === 0) seen.push(offset);
    if (seen.length === 1 && offset === 0) bytes[0] = (bytes[0] as number) ^ 1;
  };
  corrupt = false;
  const bg = BackgroundDownload.start({ jobs: [{ dir, digest, source }], config: { delay: 0, blockSize: 64 * KIB, maxMBps: 0 }, clock });
  const [out] = await bg.done;
  assert.equal(out?.state, 'committed');
  assert.equal(out?.attempts, 2);
  assert.ok(out?.error instanceof DataCorruptionError);
  assert.equal(out?.fetchedBytes, 2 * data.length);
  assert.equal(out?.skippedBytes, 0);
  assert.deepEqual(await readFile(join(dir, COMMIT_FILE)), Buffer.from(data));
});

test('a job that keeps failing is tried tryCnt times, 200 ms apart, then reported failed', async (t) => {
  const dir = await tempDir(t);
  const { data, digest } = blob(100 * KIB, 4);
  const source = new CountingReader(data);
  source.failAll = true;
  const clock = new VirtualClock();
  const bg = BackgroundDownload.start({ jobs: [{ dir, digest, source }], config: { delay: 1, delayExtra: 1, tryCnt: 3 }, clock, random: () => 0 });
  const [out] = await bg.done;
  assert.equal(out?.state, 'failed');
  assert.equal(out?.attempts, 3);
  assert.ok(out?.error instanceof UnavailableError);
  assert.equal(source.reads, 3 * 2, 'each read tried twice per attempt');
  assert.equal(clock.slept, 1000 + 2 * 200);
  assert.ok(!(await readdir(dir)).includes(COMMIT_FILE));
});

test('a read that fails once is retried and the download succeeds', async (t) => {
  const dir = await tempDir(t);
  const { data, digest } = blob(100 * KIB, 5);
  const source = new CountingReader(data);
  source.failNext = 1;
  const r = await downloadBlob({ dir, digest, source }, { blockSize: 64 * KIB });
  assert.equal(r.fetchedBytes, data.length);
  assert.equal(source.reads, 3);
});

test('an existing overlaybd.commit is switched to without reading the source', async (t) => {
  const dir = await tempDir(t);
  const { data, digest } = blob(50 * KIB, 6);
  await writeFile(join(dir, COMMIT_FILE), data);
  const source = new CountingReader(data);
  const layer = new SwitchableBlobReader(new CountingReader(data));
  t.after(() => layer.close());
  const bg = BackgroundDownload.start({ jobs: [{ dir, digest, source, target: layer }], config: { delay: 0 }, clock: new VirtualClock() });
  const [out] = await bg.done;
  assert.equal(out?.state, 'committed');
  assert.equal(source.reads, 0);
  assert.equal(layer.switched, true);
  assert.deepEqual(await readBytes(layer, 0, data.length), data);
});

test('jobs run one after another; a job whose directory is busy elsewhere waits and then switches', async (t) => {
  const root = await tempDir(t);
  const { data, digest } = blob(256 * KIB, 7);
  const slow = new CountingReader(data);
  slow.delayMs = 10;
  const job = (source: CountingReader, target?: SwitchableBlobReader): DownloadJob =>
    target === undefined ? { dir: join(root, 'l1'), digest, source } : { dir: join(root, 'l1'), digest, source, target };
  const first = BackgroundDownload.start({ jobs: [job(slow)], config: { delay: 0, blockSize: 32 * KIB, maxMBps: 0 }, random: () => 0 });
  await new Promise((r) => setTimeout(r, 20));
  const other = new CountingReader(data);
  const layer = new SwitchableBlobReader(new CountingReader(data));
  t.after(() => layer.close());
  const second = BackgroundDownload.start({ jobs: [job(other, layer)], config: { delay: 0, blockSize: 32 * KIB }, random: () => 0 });
  const [a] = await first.done;
  const [b] = await second.done;
  assert.equal(a?.state, 'committed');
  assert.equal(b?.state, 'committed');
  assert.equal(other.reads, 0, 'the second job found the commit file');
  assert.equal(layer.switched, true);
});

test('the rate cap is honoured: measured throughput against maxMBps', async (t) => {
  const dir = await tempDir(t);
  const { data, digest } = blob(3 * MIB, 8);
  // Virtual time: after the 1 MiB burst, 2 MiB at 4 MiB/s take exactly 500 ms of sleep.
  const clock = new VirtualClock();
  const bg = BackgroundDownload.start({ jobs: [{ dir: join(dir, 'v'), digest, source: new CountingReader(data) }], config: { delay: 0, maxMBps: 4, blockSize: 256 * KIB }, clock, random: () => 0 });
  assert.equal((await bg.done)[0]?.state, 'committed');
  assert.equal(clock.slept, 500);
  // Real time, same settings.
  const started = performance.now();
  const real = BackgroundDownload.start({ jobs: [{ dir: join(dir, 'r'), digest, source: new CountingReader(data) }], config: { delay: 0, maxMBps: 4, blockSize: 256 * KIB }, random: () => 0 });
  assert.equal((await real.done)[0]?.state, 'committed');
  const seconds = (performance.now() - started) / 1000;
  const rate = (data.length - MIB) / MIB / seconds;
  t.diagnostic(`3 MiB at maxMBps 4 took ${seconds.toFixed(3)} s: ${rate.toFixed(2)} MiB/s after the 1 MiB burst`);
  assert.ok(seconds >= 0.45, `too fast: ${seconds} s`);
  assert.ok(seconds < 2, `too slow: ${seconds} s`);
});

test('close() during the delay returns at once and leaves no timer running', async (t) => {
  const dir = await tempDir(t);
  const { data, digest } = blob(10 * KIB, 9);
  const source = new CountingReader(data);
  const before = timers();
  const bg = BackgroundDownload.start({ jobs: [{ dir, digest, source }], config: { delay: 300 }, clock: systemClock });
  await new Promise((r) => setImmediate(r));
  assert.equal(timers(), before + 1, 'the delay timer is pending');
  const started = performance.now();
  await bg.close();
  assert.ok(performance.now() - started < 100);
  assert.equal(timers(), before);
  assert.equal((await bg.done)[0]?.state, 'cancelled');
  assert.equal(source.reads, 0);
});

test('close() during the copy stops it promptly and keeps .download for the next run', async (t) => {
  const dir = await tempDir(t);
  const { data, digest } = blob(MIB, 10);
  const source = new CountingReader(data);
  source.delayMs = 5;
  const bg = BackgroundDownload.start({ jobs: [{ dir, digest, source }], config: { delay: 0, blockSize: 4 * KIB, maxMBps: 0 }, random: () => 0 });
  for (let i = 0; i < 200 && source.reads < 5; i++) await new Promise((r) => setTimeout(r, 5));
  const started = performance.now();
  await bg.close();
  const took = performance.now() - started;
  assert.ok(took < 100, `close took ${took} ms`);
  const [out] = await bg.done;
  assert.equal(out?.state, 'cancelled');
  assert.ok(source.reads < 256);
  assert.deepEqual(await readdir(dir), [DOWNLOAD_FILE]);
  // The next run resumes: it fetches only the units that were not written.
  const done = source.reads;
  source.delayMs = 0;
  const r = await downloadBlob({ dir, digest, source }, { blockSize: 4 * KIB });
  assert.equal(r.skippedBytes, done * 4 * KIB);
  assert.equal(r.fetchedBytes + r.skippedBytes, MIB);
});
