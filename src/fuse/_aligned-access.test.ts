import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { AlignedAccess } from './_aligned-access.ts';
import { MemoryBlockDevice } from '../../test/support/memory-block-device.ts';

/** xorshift32 → integers in [0, n). */
function rng(seed: number): (n: number) => number {
  let x = seed >>> 0 || 1;
  return (n) => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x % n;
  };
}

function patterned(size: number, seed: number): Uint8Array {
  const r = rng(seed);
  return Uint8Array.from({ length: size }, () => r(256));
}

const SIZE = 64 * 1024;

test('read() at any offset and length returns the device bytes; the device sees only aligned requests', async () => {
  const dev = new MemoryBlockDevice(patterned(SIZE, 1)); // throws on unaligned access
  const io = new AlignedAccess(dev, 512);
  const r = rng(2);
  for (let i = 0; i < 300; i++) {
    const offset = r(SIZE);
    const length = 1 + r(Math.min(SIZE - offset, 3000));
    const buf = new Uint8Array(length);
    assert.equal(await io.read(buf, offset), length);
    assert.deepEqual(buf, dev.bytes.subarray(offset, offset + length), `read ${length} at ${offset}`);
  }
});

test('write() at any offset and length changes exactly those bytes', async () => {
  const dev = new MemoryBlockDevice(patterned(SIZE, 3));
  const model = dev.bytes.slice();
  const io = new AlignedAccess(dev, 512);
  const r = rng(4);
  for (let i = 0; i < 300; i++) {
    const offset = r(SIZE);
    const data = patterned(1 + r(Math.min(SIZE - offset, 3000)), i + 10);
    assert.equal(await io.write(data, offset), data.length);
    model.set(data, offset);
  }
  assert.deepEqual(dev.bytes, model);
});

test('concurrent unaligned writes into shared sectors lose no bytes', async () => {
  // Regression guard for read-modify-write: 64 writes of disjoint byte ranges that share
  // sectors run at once against a device that delays every call. Without the exclusive
  // lock, two RMWs of the same sector interleave and the later one restores stale bytes.
  const dev = new MemoryBlockDevice(SIZE);
  const r = rng(5);
  dev.hook = () => sleep(r(3));
  const io = new AlignedAccess(dev, 512);
  const model = new Uint8Array(SIZE);
  const writes: Array<Promise<number>> = [];
  for (let i = 0; i < 64; i++) {
    const offset = i * 100 + (i % 2 === 0 ? 0 : 512 * 20); // 100-byte stripes across sector edges
    const data = new Uint8Array(100).fill(i + 1);
    model.set(data, offset);
    writes.push(io.write(data, offset));
  }
  // Aligned writes elsewhere in the same sectors' neighbourhood run concurrently too.
  for (let s = 30; s < 40; s++) {
    const data = new Uint8Array(512).fill(200 + s);
    model.set(data, s * 512);
    writes.push(io.write(data, s * 512));
  }
  await Promise.all(writes);
  assert.deepEqual(dev.bytes, model);
});

test('discard() trims the aligned middle and zeroes the partial edges', async () => {
  const dev = new MemoryBlockDevice(patterned(SIZE, 6));
  const io = new AlignedAccess(dev, 512);
  const model = dev.bytes.slice();
  await io.discard(1000, 5000);
  model.fill(0, 1000, 6000);
  assert.deepEqual(dev.bytes, model);
  assert.deepEqual(dev.trims, [{ offset: 1024, length: 4608 }]);

  await io.discard(7000, 20); // inside one sector: zeros written, nothing trimmed
  model.fill(0, 7000, 7020);
  assert.deepEqual(dev.bytes, model);
  assert.equal(dev.trims.length, 1);

  await io.discard(8192, 4096); // aligned: one trim, no writes
  const writes = dev.counts.write;
  model.fill(0, 8192, 12288);
  assert.deepEqual(dev.bytes, model);
  assert.deepEqual(dev.trims.at(-1), { offset: 8192, length: 4096 });
  assert.equal(dev.counts.write, writes);
});

test('alignment 1 passes every request through unchanged', async () => {
  const dev = new MemoryBlockDevice(patterned(4096, 7), { alignment: 1 });
  const io = new AlignedAccess(dev, 1);
  await io.write(Uint8Array.of(9, 9, 9), 5);
  await io.discard(100, 3);
  assert.deepEqual([...dev.bytes.subarray(5, 8)], [9, 9, 9]);
  assert.deepEqual(dev.trims, [{ offset: 100, length: 3 }]);
  assert.throws(() => new AlignedAccess(dev, 0), RangeError);
});
