/**
 * RemoteBlobReader over real HTTP: a static Range origin behind the fault proxy, read
 * through HttpRangeSource. With 10 % of the range requests failing in each fault kind,
 * every read must still return the origin's bytes; each injected fault must cost the
 * reader exactly one failed attempt (no fault goes unnoticed, none is double-counted).
 * Flipped bytes cannot be seen at this layer: a ZFile on top detects the bad block CRC,
 * evicts the range and reads it again.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import type { IncomingMessage } from 'node:http';
import { MemorySink } from '../src/io/byte-sink.ts';
import { ZFileReader } from '../src/formats/zfile/reader.ts';
import { ZFileWriter } from '../src/formats/zfile/writer.ts';
import { RemoteBlobReader } from '../src/registry/remote-blob-reader.ts';
import { FaultProxy } from './fakes/fault-proxy.ts';
import type { FaultKind } from './fakes/fault-proxy.ts';
import { HttpRangeSource } from './fakes/http-range-source.ts';
import { StaticRangeOrigin } from './fakes/static-range-origin.ts';
import { xs } from './support/generators.ts';

const KiB = 1024;
const T = { timeout: 60_000 };
const PLAIN = xs(2048 * KiB, 0xc0ffee);
const rangeGets = (req: IncomingMessage): boolean => req.method === 'GET' && req.headers.range !== undefined;

/** Text-like content that compresses about 3:1, like file system data. */
function textLike(n: number, seed: number): Uint8Array {
  const words = ['overlay', 'block', 'layer', 'registry', 'the', 'of', 'image', 'lazy', 'pull', 'chunk', 'cache', '\n'];
  const out = new Uint8Array(n);
  let x = seed >>> 0;
  let i = 0;
  while (i < n) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    const w = x % 7 === 0 ? String(x % 100000) : words[x % words.length]!;
    for (let j = 0; j < w.length && i < n; j++) out[i++] = w.charCodeAt(j);
    if (i < n) out[i++] = 32;
  }
  return out;
}

const CONTENT = textLike(4096 * KiB, 99);
let ZFILE: Uint8Array;
let origin: StaticRangeOrigin;

before(async () => {
  const sink = new MemorySink();
  const w = await ZFileWriter.create(sink, { algorithm: 'lz4', blockSize: 4096 });
  await w.write(CONTENT);
  await w.close();
  ZFILE = sink.bytes();
  origin = await StaticRangeOrigin.start({ '/plain': PLAIN, '/layer.zfile': ZFILE });
});
after(async () => {
  await origin.close();
});

function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (Math.imul(a, 1664525) + 1013904223) >>> 0;
    return a / 4294967296;
  };
}

const KINDS: FaultKind[] = ['drop', 'drop-after-headers', 'server-error', 'stall', 'truncate'];

for (const kind of KINDS) {
  test(`RemoteBlobReader reads are byte-identical with 10% ${kind} faults`, T, async () => {
    const proxy = await FaultProxy.start({ upstream: origin.url, seed: 1000 + KINDS.indexOf(kind), eligible: rangeGets });
    try {
      const src = await HttpRangeSource.open(`${proxy.url}/plain`);
      assert.equal(src.size, PLAIN.length);
      proxy.resetCounters(); // forget the size probe
      proxy.setRates({ [kind]: 0.1 });
      const r = new RemoteBlobReader(src, {
        name: 'plain',
        refillSize: 16 * KiB,
        cacheBytes: 128 * KiB,
        maxRequestBytes: 64 * KiB,
        concurrency: 8,
        // Generous: a loaded CI machine can starve the event loop for hundreds of ms,
        // and a spurious stall would be a failure no fault caused.
        stallTimeoutMs: kind === 'stall' ? 500 : 3000,
        backoffMs: 2,
        retries: 6,
      });
      const rand = rng(kind.length);
      const one = async (): Promise<void> => {
        const offset = Math.floor(rand() * PLAIN.length);
        const length = 1 + Math.floor(rand() * 100 * KiB);
        const buf = new Uint8Array(length);
        const n = await r.readAt(buf, offset);
        assert.equal(n, Math.min(length, PLAIN.length - offset));
        assert.ok(Buffer.from(buf.subarray(0, n)).equals(PLAIN.subarray(offset, offset + n)), `read [${offset}, +${length})`);
      };
      let left = 120;
      await Promise.all(Array.from({ length: 8 }, async () => {
        while (left-- > 0) await one();
      }));
      const faults = proxy.counters.faults[kind];
      const s = r.stats;
      assert.ok(faults >= 5, `only ${faults} ${kind} faults in ${proxy.counters.rangeGets} range requests`);
      if (kind === 'stall') {
        assert.ok(s.failedRequests >= faults, 'every stall was noticed');
      } else {
        assert.equal(s.failedRequests, faults, 'each fault costs exactly one failed attempt');
      }
      assert.equal(s.requests, proxy.counters.rangeGets);
      assert.ok(s.maxInFlight <= 8);
      await r.close();
    } finally {
      await proxy.close();
    }
  });
}

test('ZFileReader over RemoteBlobReader recovers from flipped bytes through CRC checks and evict()', T, async () => {
  const proxy = await FaultProxy.start({ upstream: origin.url, seed: 5, eligible: rangeGets });
  try {
    const src = await HttpRangeSource.open(`${proxy.url}/layer.zfile`);
    const remote = new RemoteBlobReader(src, {
      name: 'layer.zfile',
      refillSize: 16 * KiB,
      cacheBytes: 64 * KiB,
      concurrency: 4,
      backoffMs: 1,
    });
    const z = await ZFileReader.open(remote, { name: 'layer.zfile' }); // header, trailer, index: no faults yet
    assert.equal(z.size, CONTENT.length);
    proxy.setRates({ flip: 0.1 });
    const rand = rng(17);
    for (let i = 0; i < 150; i++) {
      const offset = Math.floor(rand() * CONTENT.length);
      const buf = new Uint8Array(1 + Math.floor(rand() * 64 * KiB));
      const n = await z.readAt(buf, offset);
      assert.ok(Buffer.from(buf.subarray(0, n)).equals(CONTENT.subarray(offset, offset + n)), `read [${offset}, +${buf.length})`);
    }
    const flips = proxy.counters.faults.flip;
    assert.ok(flips >= 5, `only ${flips} flips in ${proxy.counters.rangeGets} range requests`);
    assert.ok(remote.stats.chunksEvicted >= 1, 'a CRC mismatch evicted the bad chunk');
    assert.equal(remote.stats.failedRequests, 0, 'flips are invisible to the transport');
    await z.close();
  } finally {
    await proxy.close();
  }
});

test('RemoteBlobReader through the proxy fails cleanly, naming the range, when every request stalls', T, async () => {
  const proxy = await FaultProxy.start({ upstream: origin.url, eligible: rangeGets });
  try {
    const src = await HttpRangeSource.open(`${proxy.url}/plain`);
    proxy.setRates({ stall: 1 });
    const r = new RemoteBlobReader(src, { name: 'plain', refillSize: 16 * KiB, stallTimeoutMs: 100, retries: 2, backoffMs: 1 });
    const t0 = performance.now();
    await assert.rejects(r.readAt(new Uint8Array(10), 20_000), /^UnavailableError: Cannot read plain range \[16384, 32768\): 3 attempts failed, last: .*stalled for 100 ms/);
    assert.ok(performance.now() - t0 < 5000);
    assert.equal(proxy.counters.faults.stall, 3);
    assert.equal(proxy.counters.stallTimeouts, 0, 'the client gave up first');
    await r.close();
  } finally {
    await proxy.close();
  }
});
