import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { readBytes } from '../io/blob-reader.ts';
import { FailedPreconditionError } from '../io/errors.ts';
import { MemoryReader } from '../io/memory-reader.ts';
import { BlockCache } from './block-cache.ts';
import { CachedBlobReader } from './cached-blob-reader.ts';
import { blobBytes, CountingReader } from './_counting-reader.ts';

const KIB = 1024;
const HERE = dirname(fileURLToPath(import.meta.url));
const REPO = resolve(HERE, '..', '..');
const CHILD = join(HERE, '_cache-child.ts');
const digestOf = (c: string): string => `sha256:${c.repeat(64)}`;
const [A, B, C, D] = ['a', 'b', 'c', 'd'].map(digestOf) as [string, string, string, string];

type T = { after: (fn: () => Promise<void>) => void };

async function tempDir(t: T): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'obd-cache-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** A clock the test moves by hand, so LRU order does not depend on timer resolution. */
function manualNow(): { now: () => number; tick: () => void } {
  let t = 1_700_000_000_000;
  return { now: () => t, tick: () => void (t += 1000) };
}

/** Reads a whole blob of `size` bytes (content seeded by its digest letter) through the cache. */
async function readBlob(cache: BlockCache, digest: string, size: number): Promise<CachedBlobReader> {
  const data = blobBytes(size, digest.charCodeAt(7));
  const reader = await CachedBlobReader.open(cache, new MemoryReader(data), { digest });
  assert.deepEqual(await readBytes(reader, 0, size), data);
  return reader;
}

interface ChildRun {
  messages: Array<Record<string, unknown>>;
  code: number | null;
  signal: NodeJS.Signals | null;
}

/**
 * Runs `_cache-child.ts` in a new Node process; `killWhen` (checked on every message)
 * SIGKILLs it. The child is killed on timeout too, so a failing test leaves no process.
 */
function runChild(args: string[], options: { killWhen?: (m: Record<string, unknown>) => boolean; timeoutMs?: number } = {}): Promise<ChildRun> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', CHILD, ...args], { cwd: REPO, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    const messages: Array<Record<string, unknown>> = [];
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`cache child ${args[0]} timed out`));
    }, options.timeoutMs ?? 30_000);
    child.on('message', (m) => {
      messages.push(m as Record<string, unknown>);
      if (options.killWhen?.(m as Record<string, unknown>) === true) child.kill('SIGKILL');
    });
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      resolvePromise({ messages, code, signal });
    });
  });
}

test('LRU eviction removes the least recently used closed blobs down to the water mark', async (t) => {
  const dir = await tempDir(t);
  const clock = manualNow();
  const cache = await BlockCache.open({ dir, refillSize: 16 * KIB, capacityBytes: 256 * KIB, lowWaterBytes: 192 * KIB, now: clock.now });
  t.after(() => cache.close());
  for (const d of [A, B]) {
    clock.tick();
    await (await readBlob(cache, d, 96 * KIB)).close();
  }
  clock.tick();
  await (await readBlob(cache, A, 96 * KIB)).close(); // A is now more recent than B
  assert.equal(cache.stats.usedBytes, 192 * KIB);
  clock.tick();
  await (await readBlob(cache, C, 96 * KIB)).close(); // 288 KiB > 256 KiB: B goes
  assert.deepEqual(cache.digests(), [A, C]);
  assert.equal(cache.stats.usedBytes, 192 * KIB);
  assert.equal(cache.stats.evictedBlobs, 1);
  assert.equal(cache.cachedBytes(B), 0);
  assert.deepEqual((await readdir(dir)).filter((n) => n.startsWith('sha256:')).sort(), [A, `${A}.units`, C, `${C}.units`]);
});

test('open blobs are never evicted; when nothing else can go, fills are served but not stored', async (t) => {
  const dir = await tempDir(t);
  const clock = manualNow();
  const cap = 256 * KIB;
  const cache = await BlockCache.open({ dir, refillSize: 16 * KIB, capacityBytes: cap, lowWaterBytes: 192 * KIB, now: clock.now });
  t.after(() => cache.close());
  const a = await readBlob(cache, A, 128 * KIB); // oldest, but stays open
  clock.tick();
  const b = await readBlob(cache, B, 96 * KIB);
  await b.close();
  clock.tick();
  const c = await readBlob(cache, C, 96 * KIB); // B evicted, not A
  assert.deepEqual(cache.digests().sort(), [A, C].sort());
  assert.ok(cache.stats.usedBytes <= cap);
  clock.tick();
  const d = await readBlob(cache, D, 64 * KIB); // A and C open: no room, D bypasses
  assert.ok(d.stats.bypassedBytes > 0, 'D was served without being stored');
  assert.ok(cache.stats.usedBytes <= cap, `used ${cache.stats.usedBytes} > cap`);
  assert.equal(cache.cachedBytes(A), 128 * KIB);
  assert.equal(cache.stats.openBlobs, 3);
  for (const r of [a, c, d]) await r.close();
});

test('start-up rebuilds the accounting and LRU order, removes leftovers and honours a smaller cap', async (t) => {
  const dir = await tempDir(t);
  const clock = manualNow();
  {
    const cache = await BlockCache.open({ dir, refillSize: 16 * KIB, capacityBytes: 1024 * KIB, now: clock.now });
    for (const [d, size] of [[B, 100 * KIB], [A, 50 * KIB], [C, 70 * KIB]] as const) {
      clock.tick();
      await (await readBlob(cache, d, size)).close();
    }
    assert.deepEqual(cache.digests(), [B, A, C]);
    await cache.close();
  }
  await writeFile(join(dir, D), 'orphan cache file without journal');
  await writeFile(join(dir, `${digestOf('e')}.units`), 'orphan journal');
  await writeFile(join(dir, `${A}.units.tmp`), 'interrupted compaction');
  await writeFile(join(dir, 'notes.txt'), 'not ours');
  {
    const cache = await BlockCache.open({ dir, refillSize: 16 * KIB, capacityBytes: 1024 * KIB });
    assert.equal(cache.stats.usedBytes, 220 * KIB);
    assert.equal(cache.stats.blobs, 3);
    assert.deepEqual(cache.digests(), [B, A, C], 'LRU order from the cache files’ mtime');
    assert.deepEqual((await readdir(dir)).sort(), ['.lock', A, `${A}.units`, B, `${B}.units`, C, `${C}.units`, 'notes.txt'].sort());
    await cache.close();
  }
  {
    const cache = await BlockCache.open({ dir, refillSize: 16 * KIB, capacityBytes: 160 * KIB, lowWaterBytes: 100 * KIB });
    t.after(() => cache.close());
    assert.deepEqual(cache.digests(), [C], 'B then A evicted at open');
    assert.equal(cache.stats.usedBytes, 70 * KIB);
  }
});

test('a cache filled by this process is served by a new process with zero source reads', async (t) => {
  const dir = await tempDir(t);
  const size = 3 * 256 * KIB + 4321;
  const seed = 5;
  const cache = await BlockCache.open({ dir });
  const reader = await CachedBlobReader.open(cache, new MemoryReader(blobBytes(size, seed)), { digest: A });
  await readBytes(reader, 0, size);
  await reader.close();
  await cache.close();
  const run = await runChild(['verify', dir, A, String(size), String(seed), String(256 * KIB)]);
  assert.equal(run.code, 0);
  assert.deepEqual(run.messages, [{ equal: true, sourceReads: 0, hitBytes: size, usedBytes: size }]);
});

test('after a SIGKILL in the middle of fills, everything the journal claims is correct', async (t) => {
  const dir = await tempDir(t);
  const unit = 16 * KIB;
  const size = 256 * unit;
  const seed = 11;
  const run = await runChild(['fill', dir, A, String(size), String(seed), String(unit)], {
    killWhen: (m) => typeof m['filled'] === 'number' && m['filled'] >= 20 && m['flushed'] === true,
  });
  assert.equal(run.signal, 'SIGKILL');
  const cache = await BlockCache.open({ dir, refillSize: unit });
  t.after(() => cache.close());
  const expected = blobBytes(size, seed);
  const source = new CountingReader(expected);
  const reader = await CachedBlobReader.open(cache, source, { digest: A });
  t.after(() => reader.close());
  assert.ok(cache.stats.usedBytes > 0, 'the child recorded some units');
  assert.deepEqual(await readBytes(reader, 0, size), expected);
  assert.equal(reader.stats.hitBytes, cache.cachedBytes(A) - reader.stats.sourceBytes, 'claimed units were served from the file');
  assert.ok(reader.stats.hitBytes > 0);
});

test('one cache directory has one owner: same process, other process, and after the owner dies', async (t) => {
  const dir = await tempDir(t);
  const cache = await BlockCache.open({ dir });
  await assert.rejects(BlockCache.open({ dir }), (e: unknown) => e instanceof FailedPreconditionError && e.message.includes(`in use by process ${process.pid}`));
  const other = await runChild(['verify', dir, A, '100', '1', String(256 * KIB)]);
  assert.deepEqual(other.messages, [
    { error: { name: 'FailedPreconditionError', code: 'ERR_FAILED_PRECONDITION', message: `Cannot open cache directory ${dir}: it is in use by process ${process.pid}` } },
  ]);
  await cache.close();
  // A holder killed with SIGKILL leaves no stale lock behind.
  const held = await runChild(['hold', dir, A, '100', '1', String(256 * KIB)], { killWhen: (m) => m['ready'] === true });
  assert.equal(held.signal, 'SIGKILL');
  const again = await BlockCache.open({ dir });
  await again.close();
});
