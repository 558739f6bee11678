/**
 * Child process of the restart, crash and lock tests in block-cache.test.ts.
 *
 * `node --import tsx _cache-child.ts MODE DIR DIGEST SIZE SEED REFILL` with an IPC channel:
 *
 * - `verify`: opens the cache, reads the whole blob through a counting source and sends
 *   `{ equal, sourceReads, hitBytes, usedBytes }`, then exits;
 * - `fill`: reads random units of the blob, 8 at a time, sending `{ filled: n, flushed }`
 *   after each batch (`flushed` once some units are surely journaled), until the parent
 *   kills it with SIGKILL (or disconnects);
 * - `hold`: opens the cache, sends `{ ready: true }` and waits to be killed;
 * - any mode sends `{ error: { name, code, message } }` when opening fails.
 */
import { fileURLToPath } from 'node:url';
import { BlockCache } from './block-cache.ts';
import { CachedBlobReader } from './cached-blob-reader.ts';
import { blobBytes, CountingReader } from './_counting-reader.ts';

interface Args {
  mode: string;
  dir: string;
  digest: string;
  size: number;
  seed: number;
  refill: number;
}

async function main(a: Args): Promise<void> {
  const send = (m: unknown): Promise<void> => new Promise((resolve) => process.send?.(m, () => resolve()));
  let cache: BlockCache;
  try {
    cache = await BlockCache.open({ dir: a.dir, refillSize: a.refill });
  } catch (e) {
    const err = e as Error & { code?: string };
    await send({ error: { name: err.name, code: err.code, message: err.message } });
    return;
  }
  const expected = blobBytes(a.size, a.seed);
  const source = new CountingReader(expected);
  const reader = await CachedBlobReader.open(cache, source, { digest: a.digest });
  if (a.mode === 'verify') {
    const got = new Uint8Array(a.size);
    for (let off = 0; off < a.size; off += 100_000) await reader.readAt(got.subarray(off, Math.min(a.size, off + 100_000)), off);
    const equal = Buffer.compare(got, expected) === 0;
    await send({ equal, sourceReads: source.reads, hitBytes: reader.stats.hitBytes, usedBytes: cache.stats.usedBytes });
    await reader.close();
    await cache.close();
    return;
  }
  if (a.mode === 'hold') {
    await send({ ready: true });
    // Stay until killed, or leave when the parent goes away.
    const timer = setInterval(() => undefined, 1 << 30);
    await new Promise<void>((resolve) => process.once('disconnect', resolve));
    clearInterval(timer);
    return;
  }
  const units = Math.ceil(a.size / a.refill);
  let x = a.seed >>> 0 || 1;
  for (let n = 0; n < 100_000 && process.connected; n++) {
    const batch: Array<Promise<number>> = [];
    for (let k = 0; k < 8; k++) {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      const u = x % units;
      batch.push(reader.readAt(new Uint8Array(Math.min(a.refill, a.size - u * a.refill)), u * a.refill));
    }
    await Promise.all(batch);
    // Every 4th batch waits until its units are journaled; the others leave fills and
    // commits in flight for the kill to interrupt.
    if (n % 4 === 3) await reader.flush();
    await send({ filled: n, flushed: n >= 3 });
  }
  await reader.close();
  await cache.close();
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [mode, dir, digest, size, seed, refill] = process.argv.slice(2);
  if (mode === undefined || dir === undefined || digest === undefined || size === undefined || seed === undefined || refill === undefined || process.send === undefined) {
    throw new TypeError('Usage: spawn _cache-child.ts MODE DIR DIGEST SIZE SEED REFILL with an IPC channel');
  }
  await main({ mode, dir, digest, size: Number(size), seed: Number(seed), refill: Number(refill) });
  process.disconnect?.();
}
