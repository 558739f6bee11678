import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { FaultProxy } from './fault-proxy.ts';
import type { FaultKind, FaultProxyOptions } from './fault-proxy.ts';
import { StaticRangeOrigin } from './static-range-origin.ts';

const BLOB = new Uint8Array(randomBytes(256 << 10));
let origin: StaticRangeOrigin;

before(async () => {
  origin = await StaticRangeOrigin.start({ '/v2/r/blobs/sha256:aa': BLOB });
});
after(async () => {
  await origin.close();
});

/** Runs `fn` with a proxy in front of the origin, closing it whatever happens. */
async function withProxy(options: Omit<FaultProxyOptions, 'upstream'>, fn: (p: FaultProxy) => Promise<void>): Promise<void> {
  const proxy = await FaultProxy.start({ upstream: origin.url, ...options });
  try {
    await fn(proxy);
  } finally {
    await proxy.close();
  }
}

function blobUrl(p: FaultProxy): string {
  return `${p.url}/v2/r/blobs/sha256:aa`;
}

function get(url: string, range?: [number, number], signal?: AbortSignal): Promise<Response> {
  return fetch(url, {
    ...(range === undefined ? {} : { headers: { range: `bytes=${range[0]}-${range[1] - 1}` } }),
    ...(signal === undefined ? {} : { signal }),
  });
}

test('FaultProxy forwards requests and ranges unchanged and counts them', async () => {
  await withProxy({}, async (p) => {
    const whole = await get(blobUrl(p));
    assert.equal(whole.status, 200);
    assert.deepEqual(new Uint8Array(await whole.arrayBuffer()), BLOB);
    const part = await get(blobUrl(p), [1000, 5000]);
    assert.equal(part.status, 206);
    assert.equal(part.headers.get('content-range'), `bytes 1000-4999/${BLOB.length}`);
    assert.deepEqual(new Uint8Array(await part.arrayBuffer()), BLOB.subarray(1000, 5000));
    const head = await fetch(blobUrl(p), { method: 'HEAD' });
    assert.equal(head.headers.get('accept-ranges'), 'bytes');
    const missing = await get(`${p.url}/nope`);
    assert.equal(missing.status, 404);
    await missing.arrayBuffer();
    const c = p.counters;
    assert.equal(c.requests, 4);
    assert.equal(c.rangeGets, 1);
    assert.equal(c.blobGets, 2);
    assert.equal(c.bytesSent, BLOB.length + 4000 + 'not found'.length);
    assert.deepEqual(Object.values(c.faults), [0, 0, 0, 0, 0, 0]);
  });
});

test('FaultProxy adds the configured latency to each request', async () => {
  await withProxy({ latencyMs: 60 }, async (p) => {
    for (let i = 0; i < 3; i++) {
      const t0 = performance.now();
      await (await get(blobUrl(p), [0, 100])).arrayBuffer();
      assert.ok(performance.now() - t0 >= 55, `request ${i} took ${performance.now() - t0} ms`);
    }
  });
});

test('FaultProxy caps bandwidth with a token bucket shared by all responses', async () => {
  await withProxy({ bandwidthBytesPerSecond: 1 << 20 }, async (p) => {
    const t0 = performance.now();
    const bodies = await Promise.all([0, 1].map(async () => new Uint8Array(await (await get(blobUrl(p))).arrayBuffer())));
    const ms = performance.now() - t0;
    for (const b of bodies) assert.deepEqual(b, BLOB);
    // 512 KiB at 1 MiB/s: ~500 ms, minus one burst of 64 KiB.
    assert.ok(ms >= 400, `two 256 KiB bodies took ${ms} ms at 1 MiB/s`);
    assert.ok(ms < 3000, `two 256 KiB bodies took ${ms} ms at 1 MiB/s`);
  });
});

test('FaultProxy drop destroys the connection before answering', async () => {
  await withProxy({}, async (p) => {
    const before = origin.counters.requests;
    p.force('drop');
    await assert.rejects(get(blobUrl(p), [0, 100]), TypeError);
    assert.equal(p.counters.faults.drop, 1);
    assert.equal(origin.counters.requests, before, 'dropped before reaching upstream');
    const ok = await get(blobUrl(p), [0, 100]);
    assert.equal(ok.status, 206);
    await ok.arrayBuffer();
  });
});

test('FaultProxy drop-after-headers sends the upstream status then cuts the body', async () => {
  await withProxy({}, async (p) => {
    p.force('drop-after-headers');
    const res = await get(blobUrl(p), [0, 100_000]);
    assert.equal(res.status, 206);
    await assert.rejects(res.arrayBuffer());
  });
});

test('FaultProxy server-error answers 503 or 500 with a registry error body, without asking upstream', async () => {
  await withProxy({}, async (p) => {
    const before = origin.counters.requests;
    p.force('server-error', 'server-error', 'server-error', 'server-error');
    const statuses = new Set<number>();
    for (let i = 0; i < 4; i++) {
      const res = await get(blobUrl(p), [0, 100]);
      statuses.add(res.status);
      const body = (await res.json()) as { errors: { code: string }[] };
      assert.equal(body.errors[0]?.code, 'UNAVAILABLE');
    }
    for (const s of statuses) assert.ok(s === 503 || s === 500, `status ${s}`);
    assert.equal(origin.counters.requests, before);
  });
});

test('FaultProxy truncate sends fewer bytes than announced, then closes', async () => {
  await withProxy({ seed: 3 }, async (p) => {
    for (let i = 0; i < 3; i++) {
      p.force('truncate');
      const res = await get(blobUrl(p), [0, 200_000]);
      assert.equal(res.headers.get('content-length'), '200000');
      await assert.rejects(res.arrayBuffer());
    }
    assert.equal(p.counters.faults.truncate, 3);
    assert.ok(p.counters.bytesSent < 3 * 200_000);
  });
});

test('FaultProxy flip changes exactly one bit of the body', async () => {
  await withProxy({ seed: 11 }, async (p) => {
    for (let i = 0; i < 5; i++) {
      p.force('flip');
      const res = await get(blobUrl(p), [4096, 4096 + 65536]);
      const body = new Uint8Array(await res.arrayBuffer());
      const want = BLOB.subarray(4096, 4096 + 65536);
      assert.equal(body.length, want.length);
      const diffs: number[] = [];
      for (let j = 0; j < body.length; j++) if (body[j] !== want[j]) diffs.push(body[j]! ^ want[j]!);
      assert.equal(diffs.length, 1);
      assert.equal(diffs[0]! & (diffs[0]! - 1), 0, 'one bit');
    }
  });
});

test('FaultProxy stall hangs until the client gives up', async () => {
  await withProxy({}, async (p) => {
    p.force('stall');
    const ac = new AbortController();
    const res = await get(blobUrl(p), [0, 200_000], ac.signal);
    assert.equal(res.status, 206);
    const t0 = performance.now();
    setTimeout(() => ac.abort(new Error('client gave up')), 200).unref();
    await assert.rejects(res.arrayBuffer(), /client gave up/);
    assert.ok(performance.now() - t0 >= 150);
    assert.equal(p.counters.stallTimeouts, 0);
  });
});

test('FaultProxy stall ends by itself after stallMaxMs', async () => {
  await withProxy({ stallMaxMs: 300 }, async (p) => {
    p.force('stall');
    const t0 = performance.now();
    const res = await get(blobUrl(p), [0, 200_000]);
    await assert.rejects(res.arrayBuffer());
    const ms = performance.now() - t0;
    assert.ok(ms >= 250 && ms < 5000, `stall lasted ${ms} ms`);
    assert.equal(p.counters.stallTimeouts, 1);
  });
});

test('FaultProxy close() destroys stalled connections at once', async () => {
  const p = await FaultProxy.start({ upstream: origin.url });
  p.force('stall');
  const res = await get(blobUrl(p), [0, 100_000]);
  const body = res.arrayBuffer();
  const t0 = performance.now();
  await p.close();
  await assert.rejects(body);
  assert.ok(performance.now() - t0 < 3000, `close took ${performance.now() - t0} ms`);
});

test('FaultProxy draws faults from its rates with a seeded PRNG, only for eligible requests', async () => {
  const pattern = async (seed: number): Promise<string> => {
    let out = '';
    await withProxy(
      { seed, rates: { 'server-error': 0.3 }, eligible: (req) => req.headers.range !== undefined },
      async (p) => {
        for (let i = 0; i < 60; i++) {
          const res = await get(blobUrl(p), [i, i + 10]);
          out += res.status === 206 ? '.' : 'x';
          await res.arrayBuffer();
          if (i % 6 === 0) {
            const plain = await get(blobUrl(p));
            assert.equal(plain.status, 200, 'requests without Range are not eligible');
            await plain.arrayBuffer();
          }
        }
        assert.equal(p.counters.eligible, 60);
        assert.equal(p.counters.faults['server-error'], [...out].filter((ch) => ch === 'x').length);
      },
    );
    return out;
  };
  const a = await pattern(42);
  assert.equal(await pattern(42), a, 'same seed, same faults');
  assert.notEqual(await pattern(43), a, 'another seed, other faults');
  const n = [...a].filter((ch) => ch === 'x').length;
  assert.ok(n >= 8 && n <= 28, `${n} faults in 60 requests at rate 0.3`);
});

test('FaultProxy rejects invalid rates', async () => {
  await withProxy({}, async (p) => {
    assert.throws(() => p.setRates({ flip: 1.5 }), RangeError);
    assert.throws(() => p.setRates({ flip: 0.6, stall: 0.6 }), RangeError);
    const kinds: FaultKind[] = ['drop', 'flip'];
    p.setRates({ [kinds[0]!]: 0.5, [kinds[1]!]: 0.5 });
  });
});
