/**
 * A `Clock` whose time only moves when someone sleeps: `sleep(ms)` advances `now()` by
 * `ms` at once and resolves after one turn of the event loop (`setImmediate`, so a
 * polling loop cannot starve pending I/O). Tests use it to run delays and rate limits
 * of minutes in microseconds and to read back how long the code chose to wait.
 *
 * @example
 * ```ts
 * const clock = new VirtualClock();
 * await clock.sleep(300_000);
 * clock.now(); // 300000
 * clock.slept; // 300000
 * ```
 */
import type { Clock } from './clock.ts';

export class VirtualClock implements Clock {
  #now: number;
  #slept = 0;
  #sleeps = 0;

  constructor(start = 0) {
    this.#now = start;
  }

  now(): number {
    return this.#now;
  }

  /** Total milliseconds slept. */
  get slept(): number {
    return this.#slept;
  }

  /** Number of sleeps with a positive duration. */
  get sleeps(): number {
    return this.#sleeps;
  }

  /** Moves time forward without sleeping (e.g. to model work taking time). */
  advance(ms: number): void {
    this.#now += ms;
  }

  async sleep(ms: number, signal?: AbortSignal): Promise<void> {
    signal?.throwIfAborted();
    if (ms > 0) {
      this.#now += ms;
      this.#slept += ms;
      this.#sleeps++;
    }
    await new Promise<void>((resolve) => setImmediate(resolve));
    signal?.throwIfAborted();
  }
}
