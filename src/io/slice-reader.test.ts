import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { BlobReader, Prefetchable } from './blob-reader.ts';
import { MemoryReader } from './memory-reader.ts';
import { SliceReader } from './slice-reader.ts';

/** A reader that records its reads and prefetches (prefetch only when `prefetchable`). */
function recording(size: number, prefetchable: boolean): { reader: BlobReader; log: string[] } {
  const inner = new MemoryReader(new Uint8Array(size));
  const log: string[] = [];
  const reader: BlobReader & Partial<Prefetchable> = {
    size,
    readAt: (buf, offset) => {
      log.push(`read ${offset}+${buf.length}`);
      return inner.readAt(buf, offset);
    },
    close: () => inner.close(),
    ...(prefetchable ? { prefetch: async (offset: number, length: number) => void log.push(`prefetch ${offset}+${length}`) } : {}),
  };
  return { reader, log };
}

test('SliceReader.prefetch forwards the window range to a parent that prefetches, else reads it through', async () => {
  const a = recording(4 << 20, true);
  const sa = new SliceReader(a.reader, { start: 512, size: 3 << 20 });
  await sa.prefetch(1000, 10_000);
  await sa.prefetch((3 << 20) - 100, 1000); // clipped to the window
  await sa.prefetch(3 << 20, 10); // past it: nothing
  assert.deepEqual(a.log, [`prefetch 1512+10000`, `prefetch ${512 + (3 << 20) - 100}+100`]);

  const b = recording(4 << 20, false);
  const sb = new SliceReader(b.reader, { start: 512, size: 3 << 20 });
  await sb.prefetch(0, (1 << 20) + 5);
  assert.deepEqual(b.log, [`read 512+${1 << 20}`, `read ${512 + (1 << 20)}+5`], 'read in 1 MiB pieces');
});
