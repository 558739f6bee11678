/**
 * Time as the background jobs of the cache see it, injectable so tests need not wait
 * for minutes (`VirtualClock`).
 *
 * `sleep(ms, signal)` resolves after `ms` milliseconds or rejects with the signal's
 * `AbortError` as soon as `signal` aborts, leaving no timer behind.
 *
 * @example
 * ```ts
 * const ac = new AbortController();
 * await systemClock.sleep(200, ac.signal);
 * ```
 */
import { setTimeout as delay } from 'node:timers/promises';

export interface Clock {
  /** Milliseconds since an arbitrary origin. */
  now(): number;
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
}

/** Wall-clock time and real timers. */
export const systemClock: Clock = {
  now: () => performance.now(),
  async sleep(ms: number, signal?: AbortSignal): Promise<void> {
    signal?.throwIfAborted();
    if (ms <= 0) return;
    await delay(ms, undefined, signal === undefined ? {} : { signal });
  },
};
