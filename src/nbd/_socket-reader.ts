/**
 * Exact-length reads from a socket with bounded buffering (STYLE.md §7).
 *
 * The socket flows while fewer than `highWaterMark` bytes wait here (or while a pending
 * `read(n)` needs more); beyond that it is paused, so the kernel's receive buffer fills
 * and the client's sends block. The connection stops calling `read()` while it is at
 * its in-flight bound, which is what turns the bound into backpressure.
 */
import type { Socket } from 'node:net';

interface Waiter {
  n: number;
  resolve: (b: Buffer | undefined) => void;
}

export class SocketReader {
  #socket: Socket;
  #highWaterMark: number;
  #chunks: Buffer[] = [];
  #length = 0;
  #ended = false;
  #waiter: Waiter | undefined;

  readonly #alloc: (n: number) => Buffer;

  /** `alloc` provides the buffer when a read spans several received chunks. */
  constructor(socket: Socket, options: { highWaterMark: number; alloc?: (n: number) => Buffer }) {
    this.#socket = socket;
    this.#highWaterMark = options.highWaterMark;
    this.#alloc = options.alloc ?? ((n) => Buffer.allocUnsafe(n));
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('end', () => this.#onEnd());
    socket.on('close', () => this.#onEnd());
  }

  /** Bytes received and not yet consumed. */
  get buffered(): number {
    return this.#length;
  }

  /** True once the peer ended (or the socket closed) and no further bytes can arrive. */
  get ended(): boolean {
    return this.#ended;
  }

  /**
   * Resolves with exactly `n` bytes (a view of received data, or a buffer from `alloc`
   * when they span chunks), or `undefined` if the stream ends (or `stop()` is
   * called) first; whatever was buffered then stays in `buffered`.
   */
  read(n: number): Promise<Buffer | undefined> {
    if (this.#waiter !== undefined) throw new Error('SocketReader supports one pending read');
    if (n === 0) return Promise.resolve(Buffer.alloc(0));
    if (this.#length >= n) return Promise.resolve(this.#take(n));
    if (this.#ended) return Promise.resolve(undefined);
    return new Promise((resolve) => {
      this.#waiter = { n, resolve };
      if (this.#socket.isPaused()) this.#socket.resume();
    });
  }

  /** Discards `n` bytes in bounded steps; false if the stream ended first. */
  async skip(n: number): Promise<boolean> {
    let left = n;
    while (left > 0) {
      const step = Math.min(left, this.#highWaterMark);
      if ((await this.read(step)) === undefined) return false;
      left -= step;
    }
    return true;
  }

  /** Stops reading for good: pauses the socket and releases a pending `read` with `undefined`. */
  stop(): void {
    this.#ended = true;
    this.#socket.pause();
    this.#release();
  }

  #onData(chunk: Buffer): void {
    if (this.#ended) return;
    this.#chunks.push(chunk);
    this.#length += chunk.length;
    const w = this.#waiter;
    if (w !== undefined && this.#length >= w.n) {
      this.#waiter = undefined;
      w.resolve(this.#take(w.n));
    }
    if (this.#length >= this.#highWaterMark && this.#waiter === undefined) this.#socket.pause();
  }

  #onEnd(): void {
    this.#ended = true;
    this.#release();
  }

  #release(): void {
    const w = this.#waiter;
    this.#waiter = undefined;
    w?.resolve(undefined);
  }

  #take(n: number): Buffer {
    const first = this.#chunks[0] as Buffer;
    let out: Buffer;
    if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.#chunks.shift();
      else this.#chunks[0] = first.subarray(n);
    } else {
      out = this.#alloc(n);
      let at = 0;
      while (at < n) {
        const c = this.#chunks[0] as Buffer;
        const k = Math.min(c.length, n - at);
        c.copy(out, at, 0, k);
        at += k;
        if (k === c.length) this.#chunks.shift();
        else this.#chunks[0] = c.subarray(k);
      }
    }
    this.#length -= n;
    if (this.#length < this.#highWaterMark && this.#socket.isPaused() && !this.#ended) this.#socket.resume();
    return out;
  }
}
