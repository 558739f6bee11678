/**
 * A {@link BlobReader} over a remote blob reached through a {@link RangeSource}
 * (runtime.md §5.1 data reads, §6.1 refill widening).
 *
 * Reads are widened to `refillSize`-aligned chunks. Recently fetched chunks stay in a
 * small in-memory LRU (bounded in bytes), so sequential small reads do not refetch.
 * Adjacent missing chunks of one read are coalesced into one range request (at most
 * `maxRequestBytes`); two reads needing the same chunk at the same time share one
 * request, and each chunk is handed to its readers as soon as its bytes are in, before
 * the rest of its request; at most `concurrency` requests are in flight. With
 * `readaheadBytes`, a miss that starts where the previous read's request ended (a
 * sequential stream) fetches twice the previous request's chunks, up to that window,
 * so a file read front to back costs a few round trips instead of one per chunk. Each request attempt has a
 * deadline and a stall timer; temporary failures (`UnavailableError`, a wrong byte
 * count, a timeout) are retried with exponential backoff, and after the last retry the
 * read fails with an `UnavailableError` naming the blob and the range.
 *
 * Integrity: this layer only checks that the source returned exactly the bytes asked
 * for. Content is verified above it, by the ZFile block CRCs (which call {@link evict}
 * on a mismatch and read again) or by the blob digest.
 *
 * Stall detection needs progress: a source that also implements
 * {@link StreamingRangeSource} is aborted after `stallTimeoutMs` without new bytes; a
 * plain source must answer each request within `stallTimeoutMs`.
 *
 * Every request attempt is published on the `obd:registry:range` diagnostics channel
 * as a {@link RangeRequestEvent}.
 *
 * @example
 * ```ts
 * const reader = new RemoteBlobReader(source, { name: 'sha256:ab12…', refillSize: 256 << 10 });
 * const head = new Uint8Array(4096);
 * await reader.readAt(head, 0);     // one request for bytes 0..262143
 * await reader.readAt(head, 4096);  // served from memory
 * reader.stats.requests;           // 1
 * await reader.close();
 * ```
 */
import { channel } from 'node:diagnostics_channel';
import { setMaxListeners } from 'node:events';
import { debuglog } from 'node:util';
import type { BlobReader, Evictable, Prefetchable } from '../io/blob-reader.ts';
import { clampRead } from '../io/blob-reader.ts';
import { FailedPreconditionError, InvalidArgumentError, UnavailableError } from '../io/errors.ts';
import type { RangeSource } from './range-source.ts';

const log = debuglog('obd');

/** Diagnostics channel carrying one {@link RangeRequestEvent} per request attempt. */
export const RANGE_CHANNEL = 'obd:registry:range';
const rangeChannel = channel(RANGE_CHANNEL);

/**
 * Optional ability of a {@link RangeSource}: deliver the bytes of a range as they
 * arrive, so that a transfer that stops moving is told apart from a slow one.
 * The pieces together must be exactly `length` bytes; the iteration must end (throw)
 * when `signal` aborts.
 */
export interface StreamingRangeSource extends RangeSource {
  stream(offset: number, length: number, signal?: AbortSignal): AsyncIterable<Uint8Array>;
}

/** Whether `s` implements {@link StreamingRangeSource}. */
export function isStreamingRangeSource(s: RangeSource): s is StreamingRangeSource {
  return typeof (s as Partial<StreamingRangeSource>).stream === 'function';
}

/** Options of {@link RemoteBlobReader}. */
export interface RemoteBlobReaderOptions {
  /** Name of the blob in error messages and events (a digest or URL); default "remote blob". */
  name?: string;
  /** Fetch granularity in bytes: a power of two, at least 4096; default 262144 (256 KiB). */
  refillSize?: number;
  /** Bytes of fetched chunks kept in memory (LRU); 0 disables; default 8 MiB. */
  cacheBytes?: number;
  /** Largest single range request (rounded down to whole chunks, at least one); default 4 MiB. */
  maxRequestBytes?: number;
  /**
   * Largest sequential readahead in bytes (rounded down to whole chunks, at most
   * `maxRequestBytes`); 0 disables it; default 0.
   */
  readaheadBytes?: number;
  /** Range requests in flight at once; default 16. */
  concurrency?: number;
  /** Deadline of one request attempt in ms; default 30000 (runtime.md §5.1). */
  requestTimeoutMs?: number;
  /** An attempt without new bytes for this long is aborted and retried; default 10000. */
  stallTimeoutMs?: number;
  /** Retries of a request after a temporary failure; default 4. */
  retries?: number;
  /** Backoff before the first retry in ms, doubled for each further one; default 25. */
  backoffMs?: number;
  /** Backoff ceiling in ms; default 2000. */
  maxBackoffMs?: number;
}

/** Counters of a {@link RemoteBlobReader} (a snapshot). */
export interface RemoteBlobReaderStats {
  /** Request attempts started (retries included). */
  readonly requests: number;
  /** Attempts that were retries. */
  readonly retries: number;
  /** Attempts that failed (temporary or not). */
  readonly failedRequests: number;
  /** Bytes received by successful attempts. */
  readonly bytesFetched: number;
  /** Chunks served from memory. */
  readonly chunkHits: number;
  /** Chunks that had to be fetched. */
  readonly chunkMisses: number;
  /** Chunks awaited from a request another read had already started. */
  readonly chunkShared: number;
  /** Chunks dropped by {@link RemoteBlobReader.evict}. */
  readonly chunksEvicted: number;
  /** Attempts in flight now, and the most ever at once. */
  readonly inFlight: number;
  readonly maxInFlight: number;
  /** Bytes of chunks held in memory now. */
  readonly cachedBytes: number;
}

/** Published on {@link RANGE_CHANNEL} when a request attempt ends. */
export interface RangeRequestEvent {
  readonly name: string;
  readonly offset: number;
  readonly length: number;
  /** 0 for the first attempt. */
  readonly attempt: number;
  readonly durationMs: number;
  /** `retry`: failed, will be retried; `failed`: failed for good. */
  readonly outcome: 'ok' | 'retry' | 'failed';
  readonly error?: unknown;
}

/** Receives chunk `index` of a request once all its bytes are in. */
type ChunkSink = (index: number, chunk: Uint8Array) => void;

interface Deferred {
  readonly promise: Promise<Uint8Array>;
  resolve(v: Uint8Array): void;
  reject(e: unknown): void;
}

function deferred(): Deferred {
  let resolve!: (v: Uint8Array) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<Uint8Array>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  promise.catch(() => {}); // a chunk nobody waits for any more must not be an unhandled rejection
  return { promise, resolve, reject };
}

type Counters = { -readonly [K in keyof RemoteBlobReaderStats]: RemoteBlobReaderStats[K] };

function intOption(value: number | undefined, fallback: number, check: { name: string; min: number }): number {
  const v = value ?? fallback;
  if (!Number.isSafeInteger(v) || v < check.min) {
    throw new InvalidArgumentError(`Cannot create remote blob reader: ${check.name} ${v} is not an integer >= ${check.min}`);
  }
  return v;
}

/**
 * Reads a remote blob through a {@link RangeSource}. Concurrent `readAt` calls are
 * allowed. `close` aborts the requests in flight; reads waiting on them reject with a
 * `FailedPreconditionError`. The source itself is not owned (it has no `close`).
 */
export class RemoteBlobReader implements BlobReader, Evictable, Prefetchable {
  readonly size: number;
  readonly #src: RangeSource;
  readonly #name: string;
  readonly #refill: number;
  readonly #cacheBytes: number;
  readonly #chunksPerRequest: number;
  /** Readahead window ceiling in chunks (0: off). */
  readonly #readahead: number;
  /** Chunk right after the last request a read started, and that request's chunks. */
  #seqNext = -1;
  #seqChunks = 0;
  readonly #concurrency: number;
  readonly #requestTimeoutMs: number;
  readonly #stallTimeoutMs: number;
  readonly #retries: number;
  readonly #backoffMs: number;
  readonly #maxBackoffMs: number;
  /** Fetched chunks by index, least recently used first. */
  readonly #lru = new Map<number, Uint8Array>();
  /** Chunks being fetched, by index. */
  readonly #inflight = new Map<number, Promise<Uint8Array>>();
  /** Requests waiting for a permit. */
  readonly #waiters: Array<{ resolve(): void; reject(e: unknown): void }> = [];
  readonly #closing = new AbortController();
  readonly #counters: Counters = {
    requests: 0,
    retries: 0,
    failedRequests: 0,
    bytesFetched: 0,
    chunkHits: 0,
    chunkMisses: 0,
    chunkShared: 0,
    chunksEvicted: 0,
    inFlight: 0,
    maxInFlight: 0,
    cachedBytes: 0,
  };

  constructor(source: RangeSource, options: RemoteBlobReaderOptions = {}) {
    if (!Number.isSafeInteger(source.size) || source.size < 0) {
      throw new InvalidArgumentError(`Cannot create remote blob reader: source size ${source.size} is invalid`);
    }
    const refill = intOption(options.refillSize, 256 << 10, { name: 'refillSize', min: 4096 });
    if ((refill & (refill - 1)) !== 0) {
      throw new InvalidArgumentError(`Cannot create remote blob reader: refillSize ${refill} is not a power of two`);
    }
    this.size = source.size;
    this.#src = source;
    setMaxListeners(0, this.#closing.signal); // one listener per attempt in flight or backing off
    this.#name = options.name ?? 'remote blob';
    this.#refill = refill;
    this.#cacheBytes = intOption(options.cacheBytes, 8 << 20, { name: 'cacheBytes', min: 0 });
    const maxRequest = intOption(options.maxRequestBytes, 4 << 20, { name: 'maxRequestBytes', min: 1 });
    this.#chunksPerRequest = Math.max(1, Math.floor(maxRequest / refill));
    const readahead = intOption(options.readaheadBytes, 0, { name: 'readaheadBytes', min: 0 });
    this.#readahead = Math.min(this.#chunksPerRequest, Math.floor(readahead / refill));
    this.#concurrency = intOption(options.concurrency, 16, { name: 'concurrency', min: 1 });
    this.#requestTimeoutMs = intOption(options.requestTimeoutMs, 30_000, { name: 'requestTimeoutMs', min: 1 });
    this.#stallTimeoutMs = intOption(options.stallTimeoutMs, 10_000, { name: 'stallTimeoutMs', min: 1 });
    this.#retries = intOption(options.retries, 4, { name: 'retries', min: 0 });
    this.#backoffMs = intOption(options.backoffMs, 25, { name: 'backoffMs', min: 0 });
    this.#maxBackoffMs = intOption(options.maxBackoffMs, 2000, { name: 'maxBackoffMs', min: 0 });
  }

  /** Fetch granularity in bytes. */
  get refillSize(): number {
    return this.#refill;
  }

  /** A snapshot of the counters. */
  get stats(): RemoteBlobReaderStats {
    return { ...this.#counters };
  }

  async readAt(buf: Uint8Array, offset: number): Promise<number> {
    const count = this.#checkRead(offset, buf.length);
    if (count === 0) return 0;
    const r = this.#refill;
    const first = Math.floor(offset / r);
    const chunks = await Promise.all(this.#parts(offset, count));
    const end = offset + count;
    for (let i = 0; i < chunks.length; i++) {
      const chunk = chunks[i]!;
      const start = (first + i) * r;
      const from = Math.max(offset, start);
      const to = Math.min(end, start + chunk.length);
      buf.set(chunk.subarray(from - start, to - start), from - offset);
    }
    return count;
  }

  /**
   * Brings the chunks of `[offset, offset+length)` into memory (fetching what is missing,
   * as a read would) without copying them out: a trace replay's read.
   */
  async prefetch(offset: number, length: number): Promise<void> {
    const count = this.#checkRead(offset, length);
    if (count > 0) await Promise.all(this.#parts(offset, count));
  }

  /** The bytes a read of `length` at `offset` gets (0 past the end); throws when closed or `offset` is invalid. */
  #checkRead(offset: number, length: number): number {
    this.#checkOpen('read');
    if (!Number.isSafeInteger(offset) || offset < 0) throw new RangeError(`Read offset ${offset} is invalid`);
    return clampRead(this.size, offset, length);
  }

  /**
   * The chunks of `[offset, offset+count)`, held or awaited. Synchronous (no await until
   * all requests are registered, so concurrent reads see each other's in-flight chunks):
   * classifies chunks and starts requests for runs of missing ones.
   */
  #parts(offset: number, count: number): Array<Uint8Array | Promise<Uint8Array>> {
    const r = this.#refill;
    const first = Math.floor(offset / r);
    const last = Math.floor((offset + count - 1) / r);
    const parts: Array<Uint8Array | Promise<Uint8Array>> = [];
    let run = -1; // first chunk of the current run of missing chunks
    for (let c = first; c <= last + 1; c++) {
      const cached = c <= last ? this.#lruGet(c) : undefined;
      const pending = c <= last && cached === undefined ? this.#inflight.get(c) : undefined;
      const missing = c <= last && cached === undefined && pending === undefined;
      if (run >= 0 && (!missing || c - run === this.#chunksPerRequest)) {
        parts.push(...this.#requestRun(run, c, c > last));
        run = -1;
      }
      if (c > last) break;
      if (cached !== undefined) {
        this.#counters.chunkHits++;
        parts.push(cached);
      } else if (pending !== undefined) {
        this.#counters.chunkShared++;
        parts.push(pending);
      } else {
        this.#counters.chunkMisses++;
        if (run < 0) run = c;
      }
    }
    return parts;
  }

  /** Drops the chunks overlapping `[offset, offset+length)` from memory; the next read refetches them. */
  async evict(offset: number, length: number): Promise<void> {
    if (length <= 0 || offset >= this.size) return;
    const r = this.#refill;
    const first = Math.floor(Math.max(0, offset) / r);
    const last = Math.floor((Math.min(this.size, offset + length) - 1) / r);
    for (let c = first; c <= last; c++) {
      const chunk = this.#lru.get(c);
      if (chunk === undefined) continue;
      this.#lru.delete(c);
      this.#counters.cachedBytes -= chunk.length;
      this.#counters.chunksEvicted++;
    }
  }

  async close(): Promise<void> {
    if (this.#closing.signal.aborted) return;
    this.#closing.abort(new FailedPreconditionError(`Cannot read ${this.#name}: reader is closed`));
    for (const w of this.#waiters.splice(0)) w.reject(this.#closing.signal.reason);
    this.#lru.clear();
    this.#counters.cachedBytes = 0;
  }

  #checkOpen(what: string): void {
    if (this.#closing.signal.aborted) throw new FailedPreconditionError(`Cannot ${what} ${this.#name}: reader is closed`);
  }

  #lruGet(c: number): Uint8Array | undefined {
    const chunk = this.#lru.get(c);
    if (chunk !== undefined) {
      this.#lru.delete(c);
      this.#lru.set(c, chunk);
    }
    return chunk;
  }

  #lruPut(c: number, chunk: Uint8Array): void {
    if (chunk.length > this.#cacheBytes || this.#closing.signal.aborted) return;
    const old = this.#lru.get(c);
    if (old !== undefined) {
      this.#lru.delete(c);
      this.#counters.cachedBytes -= old.length;
    }
    this.#lru.set(c, chunk);
    this.#counters.cachedBytes += chunk.length;
    for (const [k, v] of this.#lru) {
      if (this.#counters.cachedBytes <= this.#cacheBytes) break;
      this.#lru.delete(k);
      this.#counters.cachedBytes -= v.length;
    }
  }

  /**
   * Starts the request for the missing chunks [c0, c1) of a read and returns their
   * promises. The read's trailing run (`trailing`) continuing a sequential stream is
   * extended by readahead: twice the previous request's chunks, within the window, up
   * to the blob end or the first chunk held or in flight.
   */
  #requestRun(c0: number, c1: number, trailing: boolean): Promise<Uint8Array>[] {
    let end = c1;
    if (this.#readahead > 0 && trailing && c0 === this.#seqNext) {
      const chunks = Math.ceil(this.size / this.#refill);
      const want = Math.max(c1 - c0, Math.min(this.#readahead, 2 * this.#seqChunks));
      while (end < Math.min(c0 + want, chunks) && !this.#lru.has(end) && !this.#inflight.has(end)) end++;
    }
    if (trailing) {
      this.#seqNext = end;
      this.#seqChunks = end - c0;
    }
    return this.#request(c0, end).slice(0, c1 - c0);
  }

  /** Starts one request for chunks [c0, c1) and returns one promise per chunk. */
  #request(c0: number, c1: number): Promise<Uint8Array>[] {
    const r = this.#refill;
    const from = c0 * r;
    const length = Math.min(c1 * r, this.size) - from;
    const parts: Deferred[] = [];
    for (let c = c0; c < c1; c++) {
      const d = deferred();
      parts.push(d);
      this.#inflight.set(c, d.promise);
    }
    // Each chunk is delivered once: as soon as its bytes are in (a read waiting for the
    // first chunk of a long request does not wait for the rest), or at the end.
    const settled = new Uint8Array(c1 - c0);
    /** Whether chunk `i` was still pending; it is no longer in flight either way. */
    const settle = (i: number): boolean => {
      if (settled[i] === 1) return false;
      settled[i] = 1;
      if (this.#inflight.get(c0 + i) === parts[i]!.promise) this.#inflight.delete(c0 + i);
      return true;
    };
    const deliver = (i: number, chunk: Uint8Array): void => {
      if (!settle(i)) return;
      this.#lruPut(c0 + i, chunk);
      parts[i]!.resolve(chunk);
    };
    this.#fetchWithRetry(from, length, deliver).then(
      (chunks) => chunks.forEach((chunk, i) => deliver(i, chunk)),
      (e: unknown) => parts.forEach((d, i) => settle(i) && d.reject(e)),
    );
    return parts.map((d) => d.promise);
  }

  /**
   * The bytes of `[offset, offset+length)` (a request's range, chunk-aligned) as its
   * chunks; `onChunk` gets each complete chunk of an attempt as it arrives (again on a
   * retry).
   */
  async #fetchWithRetry(offset: number, length: number, onChunk?: ChunkSink): Promise<Uint8Array[]> {
    for (let attempt = 0; ; attempt++) {
      await this.#acquire();
      const started = performance.now();
      let data: Uint8Array[] | undefined;
      let error: unknown;
      try {
        data = await this.#attempt({ offset, length, ...(onChunk ? { onChunk } : {}) }, attempt);
      } catch (e) {
        error = e;
      } finally {
        this.#release();
      }
      const durationMs = performance.now() - started;
      if (data !== undefined) {
        this.#counters.bytesFetched += length;
        this.#publish({ name: this.#name, offset, length, attempt, durationMs, outcome: 'ok' });
        return data;
      }
      this.#counters.failedRequests++;
      const closed = this.#closing.signal.aborted;
      const retry = !closed && error instanceof UnavailableError && attempt < this.#retries;
      this.#publish({ name: this.#name, offset, length, attempt, durationMs, outcome: retry ? 'retry' : 'failed', error });
      if (closed) throw this.#closing.signal.reason;
      if (!(error instanceof UnavailableError)) throw error;
      const what = `${this.#name} range [${offset}, ${offset + length})`;
      if (!retry) {
        throw new UnavailableError(`Cannot read ${what}: ${attempt + 1} attempts failed, last: ${error.message}`, {
          cause: error,
        });
      }
      const delay = Math.min(this.#maxBackoffMs, this.#backoffMs * 2 ** attempt) * (0.5 + Math.random() / 2);
      log('retrying %s in %d ms after: %s', what, Math.round(delay), error.message);
      await this.#sleep(delay);
    }
  }

  /** One request attempt under its deadline and stall timer. */
  async #attempt(range: { offset: number; length: number; onChunk?: ChunkSink }, attempt: number): Promise<Uint8Array[]> {
    const { offset, length } = range;
    this.#counters.requests++;
    if (attempt > 0) this.#counters.retries++;
    const what = `${this.#name} range [${offset}, ${offset + length})`;
    const ac = new AbortController();
    const onClose = (): void => ac.abort(this.#closing.signal.reason);
    const abortedP = new Promise<never>((_, reject) => {
      ac.signal.addEventListener('abort', () => reject(ac.signal.reason), { once: true });
    });
    this.#closing.signal.addEventListener('abort', onClose, { once: true });
    const deadline = setTimeout(
      () => ac.abort(new UnavailableError(`Cannot read ${what}: no complete answer within ${this.#requestTimeoutMs} ms`)),
      this.#requestTimeoutMs,
    );
    const stall = setTimeout(
      () => ac.abort(new UnavailableError(`Cannot read ${what}: transfer stalled for ${this.#stallTimeoutMs} ms`)),
      this.#stallTimeoutMs,
    );
    const transfer = this.#transfer({ ...range, signal: ac.signal, progress: () => stall.refresh() });
    transfer.catch(() => {}); // may lose the race against an abort and reject later
    try {
      const { chunks, bytes } = await Promise.race([transfer, abortedP]);
      if (bytes !== length) {
        throw new UnavailableError(`Cannot read ${what}: source returned ${bytes} bytes, expected ${length}`);
      }
      return chunks;
    } finally {
      clearTimeout(deadline);
      clearTimeout(stall);
      this.#closing.signal.removeEventListener('abort', onClose);
    }
  }

  /**
   * One transfer of `[offset, offset+length)`, cut into chunks of the refill size. A
   * streaming source's bytes are copied once, straight into the chunks (each its own
   * buffer, so a chunk kept in memory pins nothing else), each complete one passed to
   * `onChunk` at once; `bytes` is what arrived.
   */
  async #transfer(t: { offset: number; length: number; signal: AbortSignal; progress: () => void; onChunk?: ChunkSink }): Promise<{ chunks: Uint8Array[]; bytes: number }> {
    const src = this.#src;
    const r = this.#refill;
    if (!isStreamingRangeSource(src)) {
      const data = await src.fetch(t.offset, t.length, t.signal);
      if (data.length !== t.length || data.length <= r) return { chunks: [data], bytes: data.length };
      const chunks: Uint8Array[] = [];
      for (let at = 0; at < data.length; at += r) chunks.push(data.slice(at, Math.min(at + r, data.length)));
      return { chunks, bytes: data.length };
    }
    const chunks: Uint8Array[] = [];
    let cur: Uint8Array | undefined;
    let fill = 0;
    let got = 0;
    for await (const piece of src.stream(t.offset, t.length, t.signal)) {
      if (t.signal.aborted) break;
      if (got + piece.length > t.length) {
        throw new UnavailableError(
          `Cannot read ${this.#name} range [${t.offset}, ${t.offset + t.length}): source sent more than ${t.length} bytes`,
        );
      }
      for (let at = 0; at < piece.length; ) {
        if (cur === undefined || fill === cur.length) {
          // Not zero-filled: every byte of a chunk is written before the chunk is used.
          cur = Buffer.allocUnsafeSlow(Math.min(r, t.length - chunks.length * r));
          chunks.push(cur);
          fill = 0;
        }
        const n = Math.min(piece.length - at, cur.length - fill);
        cur.set(piece.subarray(at, at + n), fill);
        fill += n;
        at += n;
        if (fill === cur.length) t.onChunk?.(chunks.length - 1, cur);
      }
      got += piece.length;
      if (piece.length > 0) t.progress();
    }
    return { chunks, bytes: got };
  }

  #acquire(): Promise<void> {
    this.#checkOpen('read');
    if (this.#counters.inFlight < this.#concurrency) {
      this.#enter();
      return Promise.resolve();
    }
    return new Promise<void>((resolve, reject) => {
      this.#waiters.push({ resolve, reject });
    });
  }

  #enter(): void {
    this.#counters.inFlight++;
    if (this.#counters.inFlight > this.#counters.maxInFlight) this.#counters.maxInFlight = this.#counters.inFlight;
  }

  #release(): void {
    this.#counters.inFlight--;
    const next = this.#waiters.shift();
    if (next !== undefined) {
      this.#enter();
      next.resolve();
    }
  }

  #sleep(ms: number): Promise<void> {
    const signal = this.#closing.signal;
    return new Promise<void>((resolve, reject) => {
      if (signal.aborted) {
        reject(signal.reason);
        return;
      }
      const onAbort = (): void => {
        clearTimeout(timer);
        reject(signal.reason);
      };
      const timer = setTimeout(() => {
        signal.removeEventListener('abort', onAbort);
        resolve();
      }, ms);
      signal.addEventListener('abort', onAbort, { once: true });
    });
  }

  #publish(event: RangeRequestEvent): void {
    if (rangeChannel.hasSubscribers) rangeChannel.publish(event);
  }
}
