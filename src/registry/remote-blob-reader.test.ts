import { test } from 'node:test';
import assert from 'node:assert/strict';
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { readFully } from '../io/blob-reader.ts';
import { FailedPreconditionError, InvalidArgumentError, NotFoundError, UnavailableError } from '../io/errors.ts';
import { xs } from '../../test/support/generators.ts';
import type { RangeSource } from './range-source.ts';
import { RANGE_CHANNEL, RemoteBlobReader } from './remote-blob-reader.ts';
import type { RangeRequestEvent, RemoteBlobReaderOptions, StreamingRangeSource } from './remote-blob-reader.ts';

const KiB = 1024;
const T = { timeout: 20_000 };

/** What the fake does on one call: answer normally, or one of the faults. */
type Fault = 'ok' | 'unavailable' | 'not-found' | 'short' | 'long' | 'hang' | 'hang-deaf';

/**
 * An in-process RangeSource over bytes that records every call and the peak number of
 * calls in flight. `delayMs` holds each answer back; `script(call)` picks a fault for
 * the n-th call (0-based).
 */
class FakeSource implements RangeSource {
  readonly bytes: Uint8Array;
  readonly size: number;
  readonly calls: Array<[number, number]> = [];
  inFlight = 0;
  maxInFlight = 0;
  delayMs = 0;
  script: (call: number) => Fault = () => 'ok';

  constructor(bytes: Uint8Array) {
    this.bytes = bytes;
    this.size = bytes.length;
  }

  async fetch(offset: number, length: number, signal?: AbortSignal): Promise<Uint8Array> {
    assert.ok(offset >= 0 && length > 0 && offset + length <= this.size, `fetch [${offset}, +${length}) outside ${this.size}`);
    const call = this.calls.push([offset, length]) - 1;
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    try {
      const fault = this.script(call);
      if (fault === 'hang-deaf') return await new Promise<never>(() => {});
      if (fault === 'hang' || this.delayMs > 0) await sleep(fault === 'hang' ? 1e9 : this.delayMs, signal);
      if (fault === 'unavailable') throw new UnavailableError(`Cannot fetch: injected fault on call ${call}`);
      if (fault === 'not-found') throw new NotFoundError('Cannot fetch: blob unknown to registry');
      const data = this.bytes.slice(offset, offset + length);
      if (fault === 'short') return data.subarray(0, length - 1);
      if (fault === 'long') return new Uint8Array(length + 1);
      return data;
    } finally {
      this.inFlight--;
    }
  }
}

/** A streaming fake: sends `pieces` pieces `gapMs` apart; `stallAfter(call)` pieces then silence. */
class StreamingFake extends FakeSource implements StreamingRangeSource {
  pieces = 4;
  gapMs = 0;
  stallAfter: (call: number) => number = () => Infinity;

  async *stream(offset: number, length: number, signal?: AbortSignal): AsyncGenerator<Uint8Array> {
    const call = this.calls.push([offset, length]) - 1;
    const step = Math.ceil(length / this.pieces);
    let sent = 0;
    for (let at = 0; at < length; at += step) {
      if (sent === this.stallAfter(call)) await sleep(1e9, signal);
      if (this.gapMs > 0) await sleep(this.gapMs, signal);
      sent++;
      yield this.bytes.slice(offset + at, offset + Math.min(length, at + step));
    }
  }
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (Math.imul(a, 1664525) + 1013904223) >>> 0;
    return a / 4294967296;
  };
}

async function read(r: RemoteBlobReader, offset: number, length: number): Promise<Uint8Array> {
  const buf = new Uint8Array(length);
  const n = await r.readAt(buf, offset);
  return buf.subarray(0, n);
}

function reader(src: RangeSource, o: RemoteBlobReaderOptions = {}): RemoteBlobReader {
  return new RemoteBlobReader(src, { name: 'sha256:feed', backoffMs: 1, ...o });
}

const BLOB = xs(3 * 1024 * KiB + 4 * 999, 0x1234567); // not a multiple of the refill size

test('RemoteBlobReader random reads, sequential and concurrent, equal the source bytes', T, async () => {
  const src = new FakeSource(BLOB);
  const r = reader(src, { refillSize: 16 * KiB, cacheBytes: 256 * KiB, maxRequestBytes: 128 * KiB, concurrency: 4 });
  const rand = rng(7);
  const one = async (): Promise<void> => {
    const offset = Math.floor(rand() * (BLOB.length + 1000));
    const length = 1 + Math.floor(rand() * 300 * KiB);
    const got = await read(r, offset, length);
    const want = BLOB.subarray(Math.min(offset, BLOB.length), Math.min(offset + length, BLOB.length));
    assert.deepEqual(got, want, `read [${offset}, +${length})`);
  };
  for (let i = 0; i < 100; i++) await one();
  await Promise.all(Array.from({ length: 100 }, one));
  assert.equal(await r.readAt(new Uint8Array(10), BLOB.length), 0);
  assert.equal(await r.readAt(new Uint8Array(0), 5), 0);
  assert.ok(src.maxInFlight <= 4);
  for (const [off, len] of src.calls) {
    assert.equal(off % (16 * KiB), 0, 'requests start on a refill boundary');
    assert.ok(len % (16 * KiB) === 0 || off + len === BLOB.length, 'requests end on a refill boundary or at the end');
    assert.ok(len <= 128 * KiB, 'requests stay under maxRequestBytes');
  }
  await assert.rejects(r.readAt(new Uint8Array(1), -1), RangeError);
  await r.close();
});

test('RemoteBlobReader widens a 1-byte read at 300000 to exactly bytes 262144..524287 (runtime.md §13 case 6)', T, async () => {
  const src = new FakeSource(BLOB);
  const r = reader(src, { refillSize: 262144 });
  assert.deepEqual(await read(r, 300000, 1), BLOB.subarray(300000, 300001));
  assert.deepEqual(src.calls, [[262144, 262144]]);
  assert.deepEqual(await read(r, 262144 + 1000, 200_000), BLOB.subarray(263144, 463144));
  assert.equal(src.calls.length, 1, 'a second read in that span makes no request');
  assert.equal(r.stats.bytesFetched, 262144);
  await r.close();
});

test('RemoteBlobReader serves sequential small reads from memory', T, async () => {
  const src = new FakeSource(BLOB);
  const r = reader(src, { refillSize: 64 * KiB });
  for (let off = 0; off < 1024 * KiB; off += 4 * KiB) assert.deepEqual(await read(r, off, 4 * KiB), BLOB.subarray(off, off + 4 * KiB));
  assert.equal(src.calls.length, 16);
  assert.equal(r.stats.requests, 16);
  assert.equal(r.stats.chunkMisses, 16);
  assert.equal(r.stats.chunkHits, 256 - 16);
  await r.close();
});

test('RemoteBlobReader coalesces adjacent missing chunks into one request up to maxRequestBytes', T, async () => {
  const src = new FakeSource(BLOB);
  const r = reader(src, { refillSize: 64 * KiB, maxRequestBytes: 4096 * KiB });
  await read(r, 0, 1024 * KiB);
  assert.deepEqual(src.calls, [[0, 1024 * KiB]]);

  const small = new FakeSource(BLOB);
  const r2 = reader(small, { refillSize: 64 * KiB, maxRequestBytes: 256 * KiB });
  await read(r2, 10, 1024 * KiB); // chunks 0..16
  assert.deepEqual(small.calls, [
    [0, 256 * KiB],
    [256 * KiB, 256 * KiB],
    [512 * KiB, 256 * KiB],
    [768 * KiB, 256 * KiB],
    [1024 * KiB, 64 * KiB],
  ]);

  // A cached chunk in the middle splits the run.
  const gap = new FakeSource(BLOB);
  const r3 = reader(gap, { refillSize: 64 * KiB });
  await read(r3, 5 * 64 * KiB, 1);
  gap.calls.length = 0;
  assert.deepEqual(await read(r3, 0, 640 * KiB), BLOB.subarray(0, 640 * KiB));
  assert.deepEqual(gap.calls.sort((a, b) => a[0] - b[0]), [
    [0, 320 * KiB],
    [384 * KiB, 256 * KiB],
  ]);
  // The last chunk is short: the request stops at the blob end.
  const tail = new FakeSource(BLOB);
  const r4 = reader(tail, { refillSize: 1024 * KiB });
  await read(r4, BLOB.length - 1, 10);
  assert.deepEqual(tail.calls, [[3 * 1024 * KiB, BLOB.length - 3 * 1024 * KiB]]);
  await Promise.all([r.close(), r2.close(), r3.close(), r4.close()]);
});

test('RemoteBlobReader with readaheadBytes doubles its requests along a sequential stream, up to the window', T, async () => {
  const src = new FakeSource(BLOB);
  const r = reader(src, { refillSize: 64 * KiB, readaheadBytes: 256 * KiB });
  for (let off = 0; off < 1024 * KiB; off += 4 * KiB) assert.deepEqual(await read(r, off, 4 * KiB), BLOB.subarray(off, off + 4 * KiB));
  // 1 chunk, then 2, then 4 (the window) per miss: 6 requests where 16 were needed without.
  assert.deepEqual(src.calls, [
    [0, 64 * KiB],
    [64 * KiB, 128 * KiB],
    [192 * KiB, 256 * KiB],
    [448 * KiB, 256 * KiB],
    [704 * KiB, 256 * KiB],
    [960 * KiB, 256 * KiB],
  ]);
  // The stream ends at the blob end.
  const tail = new FakeSource(BLOB);
  const rt = reader(tail, { refillSize: 1024 * KiB, readaheadBytes: 4096 * KiB });
  await read(rt, 2 * 1024 * KiB, 10);
  await read(rt, 3 * 1024 * KiB, 10);
  assert.deepEqual(tail.calls, [
    [2 * 1024 * KiB, 1024 * KiB],
    [3 * 1024 * KiB, BLOB.length - 3 * 1024 * KiB],
  ]);
  await Promise.all([r.close(), rt.close()]);
});

test('RemoteBlobReader readahead leaves random reads alone and stops at chunks already held', T, async () => {
  const src = new FakeSource(BLOB);
  const r = reader(src, { refillSize: 64 * KiB, readaheadBytes: 1024 * KiB });
  for (const c of [10, 0, 20, 5, 30]) assert.deepEqual(await read(r, c * 64 * KiB + 7, 100), BLOB.subarray(c * 64 * KiB + 7, c * 64 * KiB + 107));
  assert.deepEqual(src.calls.map(([o, n]) => [o / (64 * KiB), n / (64 * KiB)]), [[10, 1], [0, 1], [20, 1], [5, 1], [30, 1]]);
  src.calls.length = 0;
  // Chunk 1 follows 0, but the last request was for 30: a fresh stream of one chunk.
  await read(r, 64 * KiB, 10);
  await read(r, 2 * 64 * KiB, 10);
  await read(r, 3 * 64 * KiB, 10);
  // 2 continues it: 2 chunks (2..3); 3 is then in memory; 4 continues it: 4 chunks
  // wanted, cut at chunk 5, which is held.
  await read(r, 4 * 64 * KiB, 10);
  assert.deepEqual(src.calls.map(([o, n]) => [o / (64 * KiB), n / (64 * KiB)]), [[1, 1], [2, 2], [4, 1]]);
  for (let off = 0; off < 6 * 64 * KiB; off += 1000) assert.deepEqual(await read(r, off, 1000), BLOB.subarray(off, off + 1000));
  await r.close();
});

test('RemoteBlobReader lets concurrent reads of one chunk share a single request', T, async () => {
  const src = new FakeSource(BLOB);
  src.delayMs = 30;
  const r = reader(src, { refillSize: 64 * KiB });
  const reads = Array.from({ length: 10 }, (_, i) => read(r, 1000 + i * 100, 4 * KiB));
  const got = await Promise.all(reads);
  got.forEach((g, i) => assert.deepEqual(g, BLOB.subarray(1000 + i * 100, 1000 + i * 100 + 4 * KiB)));
  assert.equal(src.calls.length, 1);
  assert.equal(r.stats.chunkShared, 9);
  // A read spanning an in-flight chunk and a missing one asks only for the missing one.
  src.calls.length = 0;
  const a = read(r, 128 * KiB, 10);
  const b = read(r, 128 * KiB, 64 * KiB + 10);
  assert.deepEqual(await b, BLOB.subarray(128 * KiB, 192 * KiB + 10));
  assert.deepEqual(await a, BLOB.subarray(128 * KiB, 128 * KiB + 10));
  assert.deepEqual(src.calls.sort((x, y) => x[0] - y[0]), [
    [128 * KiB, 64 * KiB],
    [192 * KiB, 64 * KiB],
  ]);
  await r.close();
});

test('RemoteBlobReader keeps at most `concurrency` requests in flight', T, async () => {
  for (const concurrency of [1, 4, 16]) {
    const src = new FakeSource(BLOB);
    src.delayMs = 15;
    const r = reader(src, { refillSize: 16 * KiB, concurrency, cacheBytes: 0 });
    const t0 = performance.now();
    await Promise.all(Array.from({ length: 48 }, (_, i) => read(r, i * 64 * KiB, 100)));
    const ms = performance.now() - t0;
    assert.equal(src.calls.length, 48);
    assert.equal(src.maxInFlight, concurrency);
    assert.equal(r.stats.maxInFlight, concurrency);
    assert.equal(r.stats.inFlight, 0);
    assert.ok(ms >= (48 / concurrency) * 15 * 0.8, `concurrency ${concurrency}: ${ms} ms`);
    await r.close();
  }
});

test('RemoteBlobReader bounds the bytes it keeps and evicts least recently used chunks', T, async () => {
  const src = new FakeSource(BLOB);
  const r = reader(src, { refillSize: 64 * KiB, cacheBytes: 256 * KiB, maxRequestBytes: 1024 * KiB });
  await read(r, 0, 1024 * KiB); // one request of 16 chunks; only the last 4 stay
  assert.equal(r.stats.cachedBytes, 256 * KiB);
  await read(r, 0, 1); // chunk 0 is gone: refetched (and now most recent)
  assert.equal(src.calls.length, 2);
  await read(r, 1024 * KiB - 1, 1); // chunk 15: still there
  assert.equal(src.calls.length, 2);
  await read(r, 768 * KiB, 1); // chunk 12 was the least recent: evicted by chunk 0
  assert.equal(src.calls.length, 3);
  assert.ok(r.stats.cachedBytes <= 256 * KiB);
  const off = new FakeSource(BLOB);
  const r0 = reader(off, { refillSize: 64 * KiB, cacheBytes: 0 });
  await read(r0, 0, 10);
  await read(r0, 0, 10);
  assert.equal(off.calls.length, 2, 'cacheBytes 0 disables the cache');
  await Promise.all([r.close(), r0.close()]);
});

test('RemoteBlobReader.evict() drops exactly the chunks of a range so the next read refetches them', T, async () => {
  const src = new FakeSource(BLOB);
  const r = reader(src, { refillSize: 64 * KiB });
  await read(r, 0, 512 * KiB);
  src.calls.length = 0;
  await r.evict(100 * KiB, 40 * KiB); // chunks 1 and 2
  assert.equal(r.stats.chunksEvicted, 2);
  assert.deepEqual(await read(r, 0, 512 * KiB), BLOB.subarray(0, 512 * KiB));
  assert.deepEqual(src.calls, [[64 * KiB, 128 * KiB]]);
  await r.evict(0, 0);
  await r.evict(BLOB.length, 10);
  assert.equal(r.stats.chunksEvicted, 2);
  await r.close();
});

test('RemoteBlobReader retries temporary failures with backoff and succeeds', T, async () => {
  const src = new FakeSource(BLOB);
  src.script = (call) => (['unavailable', 'short', 'long', 'ok'] as const)[call] ?? 'ok';
  const r = reader(src, { refillSize: 64 * KiB, retries: 3 });
  assert.deepEqual(await read(r, 70_000, 5000), BLOB.subarray(70_000, 75_000));
  assert.equal(src.calls.length, 4);
  assert.equal(r.stats.retries, 3);
  assert.equal(r.stats.failedRequests, 3);
  assert.equal(r.stats.bytesFetched, 64 * KiB);
  await r.close();
});

test('RemoteBlobReader fails with an UnavailableError naming blob and range after the last retry', T, async () => {
  const src = new FakeSource(BLOB);
  src.script = () => 'unavailable';
  const r = reader(src, { refillSize: 64 * KiB, retries: 2 });
  await assert.rejects(read(r, 70_000, 10), (e: unknown) => {
    assert.ok(e instanceof UnavailableError);
    assert.match(e.message, /^Cannot read sha256:feed range \[65536, 131072\): 3 attempts failed, last: .*injected fault/);
    assert.ok(e.cause instanceof UnavailableError);
    return true;
  });
  assert.equal(src.calls.length, 3);
  // The failure is not cached: the next read asks again.
  src.script = () => 'ok';
  assert.deepEqual(await read(r, 70_000, 10), BLOB.subarray(70_000, 70_010));
  await r.close();
});

test('RemoteBlobReader does not retry permanent errors and passes them on', T, async () => {
  const src = new FakeSource(BLOB);
  src.script = () => 'not-found';
  const r = reader(src);
  await assert.rejects(read(r, 0, 10), NotFoundError);
  assert.equal(src.calls.length, 1);
  await r.close();
});

test('RemoteBlobReader aborts an attempt that gets no answer in stallTimeoutMs and retries it', T, async () => {
  for (const fault of ['hang', 'hang-deaf'] as const) {
    const src = new FakeSource(BLOB);
    src.script = (call) => (call === 0 ? fault : 'ok');
    const r = reader(src, { refillSize: 64 * KiB, stallTimeoutMs: 100 });
    const t0 = performance.now();
    assert.deepEqual(await read(r, 0, 10), BLOB.subarray(0, 10));
    const ms = performance.now() - t0;
    assert.ok(ms >= 90 && ms < 2000, `${fault}: ${ms} ms`);
    assert.equal(src.calls.length, 2);
    assert.equal(r.stats.retries, 1);
    await r.close();
  }
});

test('RemoteBlobReader aborts a streaming transfer that stops moving, not one that is slow', T, async () => {
  const src = new StreamingFake(BLOB);
  src.stallAfter = (call) => (call === 0 ? 2 : Infinity);
  const r = reader(src, { refillSize: 64 * KiB, stallTimeoutMs: 100 });
  assert.deepEqual(await read(r, 0, 64 * KiB), BLOB.subarray(0, 64 * KiB));
  assert.equal(src.calls.length, 2);
  assert.equal(r.stats.retries, 1);

  // 8 pieces 40 ms apart: 320 ms in all, never 100 ms without bytes.
  const slow = new StreamingFake(BLOB);
  slow.pieces = 8;
  slow.gapMs = 40;
  const r2 = reader(slow, { refillSize: 64 * KiB, stallTimeoutMs: 100 });
  assert.deepEqual(await read(r2, 0, 64 * KiB), BLOB.subarray(0, 64 * KiB));
  assert.equal(slow.calls.length, 1);
  assert.equal(r2.stats.retries, 0);

  // The overall deadline still applies to a slow stream.
  const slower = new StreamingFake(BLOB);
  slower.pieces = 8;
  slower.gapMs = 40;
  const r3 = reader(slower, { refillSize: 64 * KiB, stallTimeoutMs: 100, requestTimeoutMs: 150, retries: 1 });
  await assert.rejects(read(r3, 0, 10), /2 attempts failed, last: .*no complete answer within 150 ms/);
  await Promise.all([r.close(), r2.close(), r3.close()]);
});

test('RemoteBlobReader.close() rejects reads in flight and later reads with FailedPreconditionError', T, async () => {
  const src = new FakeSource(BLOB);
  src.script = () => 'hang';
  const r = reader(src, { refillSize: 64 * KiB, concurrency: 1 });
  const first = read(r, 0, 10);
  const queued = read(r, 128 * KiB, 10); // waits for a permit
  await sleep(20);
  await r.close();
  await assert.rejects(first, FailedPreconditionError);
  await assert.rejects(queued, FailedPreconditionError);
  await assert.rejects(read(r, 0, 10), FailedPreconditionError);
  assert.equal(src.inFlight, 0, 'the source saw the abort');
  await r.close();
});

test('RemoteBlobReader publishes every attempt on obd:registry:range', T, async () => {
  const events: RangeRequestEvent[] = [];
  const onEvent = (m: unknown): void => void events.push(m as RangeRequestEvent);
  subscribe(RANGE_CHANNEL, onEvent);
  try {
    const src = new FakeSource(BLOB);
    src.script = (call) => (call === 0 ? 'unavailable' : 'ok');
    const r = reader(src, { refillSize: 64 * KiB });
    await readFully(r, new Uint8Array(10), 0);
    await r.close();
  } finally {
    unsubscribe(RANGE_CHANNEL, onEvent);
  }
  assert.deepEqual(
    events.map((e) => [e.name, e.offset, e.length, e.attempt, e.outcome]),
    [
      ['sha256:feed', 0, 64 * KiB, 0, 'retry'],
      ['sha256:feed', 0, 64 * KiB, 1, 'ok'],
    ],
  );
  assert.ok(events[0]!.error instanceof UnavailableError);
});

test('RemoteBlobReader rejects invalid options with InvalidArgumentError', () => {
  const src = new FakeSource(BLOB);
  for (const o of [{ refillSize: 3 * 4096 }, { refillSize: 2048 }, { concurrency: 0 }, { cacheBytes: -1 }, { retries: 1.5 }, { readaheadBytes: -1 }]) {
    assert.throws(() => new RemoteBlobReader(src, o), InvalidArgumentError, JSON.stringify(o));
  }
  assert.equal(new RemoteBlobReader(src).refillSize, 256 * KiB);
});

test('prefetch fetches the chunks of a range once (streamed pieces cut across chunk boundaries); reads of it are then served from memory', T, async () => {
  for (const streaming of [false, true]) {
    const bytes = xs(256 * KiB, 11);
    const src = streaming ? new StreamingFake(bytes) : new FakeSource(bytes);
    if (src instanceof StreamingFake) src.pieces = 7; // pieces that do not line up with 16 KiB chunks
    const r = new RemoteBlobReader(src, { refillSize: 16 * KiB, maxRequestBytes: 256 * KiB });
    await r.prefetch(5000, 100 * KiB);
    assert.equal(r.stats.requests, 1, `${streaming ? 'streaming' : 'plain'}: one request`);
    assert.deepEqual(src.calls, [[0, 112 * KiB]], 'whole chunks 0..6');
    assert.deepEqual(await read(r, 0, 112 * KiB), bytes.subarray(0, 112 * KiB), 'every byte of every chunk');
    assert.equal(r.stats.requests, 1, 'the read needed no request');
    await r.prefetch(300 * KiB, 10); // past the end: nothing
    assert.equal(r.stats.requests, 1);
    await r.close();
    await assert.rejects(r.prefetch(0, 10), FailedPreconditionError);
  }
});

test('a read of chunks already streamed in returns before the rest of their request arrives', T, async () => {
  const bytes = xs(256 * KiB, 12);
  const src = new StreamingFake(bytes);
  src.pieces = 8; // 32 KiB pieces: two 16 KiB chunks complete with each
  src.stallAfter = (call) => (call === 0 ? 1 : Infinity); // the first request sends one piece, then nothing
  const r = new RemoteBlobReader(src, { refillSize: 16 * KiB, maxRequestBytes: 256 * KiB, stallTimeoutMs: 60_000, requestTimeoutMs: 60_000 });
  const bulk = r.prefetch(0, 256 * KiB);
  bulk.catch(() => {});
  assert.deepEqual(await read(r, 0, 20 * KiB), bytes.subarray(0, 20 * KiB), 'chunks 0 and 1, from the stalled request');
  assert.equal(r.stats.requests, 1, 'the read shared the request in flight');
  const late = read(r, 200 * KiB, 10);
  late.catch(() => {});
  assert.equal(await Promise.race([late.then(() => 'done'), sleep(100).then(() => 'waiting')]), 'waiting', 'a chunk not streamed in yet was delivered');
  await r.close();
  await assert.rejects(bulk, FailedPreconditionError);
  await assert.rejects(late, FailedPreconditionError);
});
