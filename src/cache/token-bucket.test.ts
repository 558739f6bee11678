import { test } from 'node:test';
import assert from 'node:assert/strict';
import { TokenBucket } from './token-bucket.ts';
import { VirtualClock } from './virtual-clock.ts';

const MIB = 1 << 20;

test('TokenBucket sleeps exactly long enough for the configured rate after the burst', async () => {
  const clock = new VirtualClock();
  const bucket = new TokenBucket({ bytesPerSecond: 4 * MIB, burstBytes: MIB, clock });
  for (let i = 0; i < 40; i++) await bucket.take(256 * 1024); // 10 MiB
  // The first MiB is the burst; the other 9 MiB take 9/4 s.
  assert.ok(Math.abs(clock.slept - 2250) < 1e-6, `slept ${clock.slept} ms`);
});

test('TokenBucket refills while the caller is busy and never beyond the burst', async () => {
  const clock = new VirtualClock();
  const bucket = new TokenBucket({ bytesPerSecond: MIB, burstBytes: MIB, clock });
  await bucket.take(MIB);
  clock.advance(10_000); // idle 10 s: only 1 MiB of credit
  await bucket.take(MIB);
  assert.equal(clock.slept, 0);
  await bucket.take(MIB / 2);
  assert.equal(clock.slept, 500);
});

test('an unlimited TokenBucket never sleeps; an aborted take rejects', async () => {
  const clock = new VirtualClock();
  for (const rate of [0, -1, Infinity]) {
    const bucket = new TokenBucket({ bytesPerSecond: rate, clock });
    await bucket.take(1 << 30);
  }
  assert.equal(clock.sleeps, 0);
  const ac = new AbortController();
  ac.abort();
  await assert.rejects(new TokenBucket({ bytesPerSecond: 1, clock }).take(1, ac.signal), { name: 'AbortError' });
});
