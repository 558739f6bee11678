/**
 * Child process of the kill -9 durability test in writable-layer.test.ts.
 *
 * Run as `node --import tsx _durability-child.ts DATA INDEX SEED`: opens the layer and
 * writes forever, in batches of eight concurrent writes, each batch followed by `flush()`
 * and an IPC message `{ flushed: <last write number> }` to the parent. Write i goes to its own 64 KiB slot
 * (so no write overrides another) with a seed-dependent length and content, which the
 * test regenerates with {@link childWrite}.
 */
import { fileURLToPath } from 'node:url';
import { openWritableLayer } from './writable-layer.ts';

/** Bytes reserved for each write. */
export const SLOT = 64 << 10;
const BATCH = 8;

/** Offset and payload of write number `i` for `seed`. */
export function childWrite(seed: number, i: number): { offset: number; data: Uint8Array } {
  let x = (seed * 0x9e3779b1 + i * 0x85ebca6b + 1) >>> 0;
  const next = (): number => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
  const length = ((next() % (SLOT / 512)) + 1) * 512;
  const data = new Uint8Array(length);
  for (let j = 0; j < length; j += 4) {
    const v = next();
    data[j] = v;
    data[j + 1] = v >>> 8;
    data[j + 2] = v >>> 16;
    data[j + 3] = (v >>> 24) | 1; // never all zero
  }
  return { offset: i * SLOT, data };
}

async function main(data: string, index: string, seed: number): Promise<void> {
  const layer = await openWritableLayer({ data, index });
  for (let i = 0; ; i += BATCH) {
    const batch: Promise<void>[] = [];
    for (let k = i; k < i + BATCH; k++) {
      const w = childWrite(seed, k);
      batch.push(layer.write(w.data, w.offset));
    }
    await Promise.all(batch);
    await layer.flush();
    process.send?.({ flushed: i + BATCH - 1 });
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [data, index, seed] = process.argv.slice(2);
  if (data === undefined || index === undefined || seed === undefined || process.send === undefined) {
    throw new TypeError('Usage: spawn _durability-child.ts DATA INDEX SEED with an IPC channel');
  }
  await main(data, index, Number(seed));
}
