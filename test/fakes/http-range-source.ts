/**
 * A minimal {@link RangeSource} over plain HTTP for tests and benchmarks: each fetch is
 * one `GET url` with `Range: bytes=a-b` through the global `fetch`. Not the registry
 * client (no auth, no redirects policy): just enough to put a real HTTP hop under
 * `RemoteBlobReader`. It also streams (the body arrives piece by piece), so the reader's
 * stall timer sees progress.
 *
 * Status mapping: 206 (or 200 for a whole-blob range) → bytes; 5xx, 408, 429 and
 * connection failures → `UnavailableError`; 404 → `NotFoundError`; else
 * `FailedPreconditionError`. A 206 for another range → `UnavailableError`.
 *
 * @example
 * ```ts
 * const src = await HttpRangeSource.open(`${origin.url}/blob`);
 * const reader = new RemoteBlobReader(src);
 * ```
 */
import { FailedPreconditionError, NotFoundError, UnavailableError } from '../../src/io/errors.ts';
import type { StreamingRangeSource } from '../../src/registry/remote-blob-reader.ts';

function httpError(what: string, status: number): Error {
  const msg = `Cannot read ${what}: server answered ${status}`;
  if (status >= 500 || status === 408 || status === 429) return new UnavailableError(msg);
  if (status === 404) return new NotFoundError(msg);
  return new FailedPreconditionError(msg);
}

/** Range reads of one URL. */
export class HttpRangeSource implements StreamingRangeSource {
  readonly url: string;
  readonly size: number;
  /** Requests sent. */
  requests = 0;

  constructor(url: string, size: number) {
    this.url = url;
    this.size = size;
  }

  /** Learns the size from a `bytes=0-0` request (`Content-Range` total). */
  static async open(url: string): Promise<HttpRangeSource> {
    let res: Response;
    try {
      res = await fetch(url, { headers: { range: 'bytes=0-0' } });
    } catch (e) {
      throw new UnavailableError(`Cannot get size of ${url}: request failed`, { cause: e });
    }
    await res.body?.cancel();
    const total = /\/(\d+)$/.exec(res.headers.get('content-range') ?? '')?.[1];
    if (res.status !== 206 || total === undefined) throw httpError(`size of ${url}`, res.status);
    return new HttpRangeSource(url, Number(total));
  }

  async fetch(offset: number, length: number, signal?: AbortSignal): Promise<Uint8Array> {
    const out = new Uint8Array(length);
    let got = 0;
    for await (const piece of this.stream(offset, length, signal)) {
      if (got + piece.length > length) throw new UnavailableError(`Cannot read ${this.url}: more than ${length} bytes`);
      out.set(piece, got);
      got += piece.length;
    }
    return got === length ? out : out.subarray(0, got);
  }

  async *stream(offset: number, length: number, signal?: AbortSignal): AsyncGenerator<Uint8Array> {
    const what = `${this.url} range [${offset}, ${offset + length})`;
    this.requests++;
    let res: Response;
    try {
      res = await fetch(this.url, {
        headers: { range: `bytes=${offset}-${offset + length - 1}` },
        ...(signal === undefined ? {} : { signal }),
      });
    } catch (e) {
      if (signal?.aborted) throw signal.reason;
      throw new UnavailableError(`Cannot read ${what}: request failed`, { cause: e });
    }
    const body = res.body;
    const wholeBlob = res.status === 200 && offset === 0 && length === this.size;
    const range = /^bytes (\d+)-/.exec(res.headers.get('content-range') ?? '');
    if (!(wholeBlob || (res.status === 206 && range !== null)) || body === null) {
      await body?.cancel().catch(() => {});
      throw httpError(what, res.status);
    }
    if (!wholeBlob && Number(range![1]) !== offset) {
      await body.cancel().catch(() => {});
      throw new UnavailableError(`Cannot read ${what}: server sent ${res.headers.get('content-range')}`);
    }
    const reader = body.getReader();
    let done = false;
    try {
      for (;;) {
        let r: Awaited<ReturnType<typeof reader.read>>;
        try {
          r = await reader.read();
        } catch (e) {
          if (signal?.aborted) throw signal.reason;
          throw new UnavailableError(`Cannot read ${what}: body broke off`, { cause: e });
        }
        if (r.done) break;
        yield r.value;
      }
      done = true;
    } finally {
      if (!done) await reader.cancel().catch(() => {});
      reader.releaseLock();
    }
  }
}
