/**
 * A byte-rate limiter (upstream `download.maxMBps`, applied in 1 MiB units): a bucket
 * of `burstBytes` tokens refilled at `bytesPerSecond`. `take(n)` consumes `n` tokens,
 * going into debt when there are not enough, and sleeps until the debt is paid, so the
 * long-run rate is `bytesPerSecond` whatever the request sizes.
 *
 * @example
 * ```ts
 * const bucket = new TokenBucket({ bytesPerSecond: 100 * 2 ** 20 });
 * for (const block of blocks) { await bucket.take(block.length, signal); await copy(block); }
 * ```
 */
import { systemClock, type Clock } from './clock.ts';

export interface TokenBucketOptions {
  /** Rate; `Infinity`, 0 or less means unlimited. */
  bytesPerSecond: number;
  /** Bucket size, the largest burst. Default 1 MiB. */
  burstBytes?: number;
  clock?: Clock;
}

export class TokenBucket {
  readonly bytesPerSecond: number;
  readonly burstBytes: number;
  #clock: Clock;
  #tokens: number;
  #last: number;

  constructor(options: TokenBucketOptions) {
    const rate = options.bytesPerSecond;
    this.bytesPerSecond = Number.isFinite(rate) && rate > 0 ? rate : Infinity;
    this.burstBytes = options.burstBytes ?? 1 << 20;
    this.#clock = options.clock ?? systemClock;
    this.#tokens = this.burstBytes;
    this.#last = this.#clock.now();
  }

  /** Consumes `bytes` tokens, sleeping as long as the bucket is in debt. */
  async take(bytes: number, signal?: AbortSignal): Promise<void> {
    signal?.throwIfAborted();
    if (this.bytesPerSecond === Infinity) return;
    const now = this.#clock.now();
    this.#tokens = Math.min(this.burstBytes, this.#tokens + ((now - this.#last) * this.bytesPerSecond) / 1000);
    this.#last = now;
    this.#tokens -= bytes;
    if (this.#tokens < 0) await this.#clock.sleep((-this.#tokens * 1000) / this.bytesPerSecond, signal);
  }
}
