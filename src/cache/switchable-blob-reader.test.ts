import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readBytes } from '../io/blob-reader.ts';
import { DataCorruptionError, FailedPreconditionError } from '../io/errors.ts';
import { MemoryReader } from '../io/memory-reader.ts';
import { SwitchableBlobReader } from './switchable-blob-reader.ts';
import { blobBytes, CountingReader } from './_counting-reader.ts';

class EvictableReader extends CountingReader {
  evicted: Array<[number, number]> = [];
  closed = false;
  async evict(offset: number, length: number): Promise<void> {
    this.evicted.push([offset, length]);
  }
  override async close(): Promise<void> {
    this.closed = true;
    await super.close();
  }
}

test('switchTo() moves new reads to the new reader and closes the old one after its reads finish', async () => {
  const data = blobBytes(1000, 1);
  const old = new EvictableReader(data);
  old.delayMs = 50;
  const next = new CountingReader(data);
  const r = new SwitchableBlobReader(old);
  await r.evict(10, 20);
  assert.deepEqual(old.evicted, [[10, 20]]);
  const slow = readBytes(r, 0, 100);
  await new Promise((resolve) => setImmediate(resolve));
  const switching = r.switchTo(next);
  assert.equal(r.switched, true);
  assert.deepEqual(await readBytes(r, 500, 10), data.subarray(500, 510));
  assert.equal(next.reads, 1);
  assert.equal(old.closed, false, 'old reader still has a read in flight');
  assert.deepEqual(await slow, data.subarray(0, 100));
  await switching;
  assert.equal(old.closed, true);
  await r.evict(0, 1); // the new reader is not evictable: no-op
  await r.close();
  await assert.rejects(r.readAt(new Uint8Array(1), 0), FailedPreconditionError);
});

test('switchTo() rejects a reader of another size and keeps the current one', async () => {
  const data = blobBytes(100, 2);
  const r = new SwitchableBlobReader(new MemoryReader(data));
  const wrong = new EvictableReader(new Uint8Array(99));
  await assert.rejects(r.switchTo(wrong), DataCorruptionError);
  assert.equal(wrong.closed, true);
  assert.equal(r.switched, false);
  assert.deepEqual(await readBytes(r, 0, 100), data);
  await r.close();
  const late = new EvictableReader(data);
  await assert.rejects(r.switchTo(late), FailedPreconditionError);
  assert.equal(late.closed, true);
});
