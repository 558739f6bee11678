/**
 * A tiny in-process HTTP origin serving fixed blobs with `Range` support (node:http on
 * 127.0.0.1, port 0): the upstream of the fault proxy in tests and benchmarks.
 *
 * GET and HEAD of a configured path answer 200 with the whole blob, or 206 with
 * `Content-Range` for `Range: bytes=a-b`, `bytes=a-` and `bytes=-n` (one range only);
 * an unsatisfiable range answers 416; an unknown path 404. Every response carries
 * `Accept-Ranges: bytes` and a strong `ETag`.
 *
 * @example
 * ```ts
 * const origin = await StaticRangeOrigin.start({ '/blob': bytes });
 * const res = await fetch(`${origin.url}/blob`, { headers: { range: 'bytes=0-99' } });
 * await origin.close();
 * ```
 */
import { createServer } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import { createHash } from 'node:crypto';
import { listenOnLoopback } from '../support/listen.ts';

/** Counters of a {@link StaticRangeOrigin}. */
export interface OriginCounters {
  requests: number;
  /** Requests that carried a `Range` header. */
  rangeRequests: number;
  /** Body bytes written. */
  bytesSent: number;
}

/** Serves fixed byte arrays by path. */
export class StaticRangeOrigin {
  readonly #server: Server;
  readonly #sockets = new Set<Socket>();
  readonly #blobs: Map<string, { bytes: Uint8Array; etag: string }>;
  readonly counters: OriginCounters = { requests: 0, rangeRequests: 0, bytesSent: 0 };

  private constructor(blobs: Map<string, { bytes: Uint8Array; etag: string }>) {
    this.#blobs = blobs;
    this.#server = createServer((req, res) => this.#handle(req, res));
    this.#server.on('connection', (s: Socket) => {
      this.#sockets.add(s);
      s.on('close', () => this.#sockets.delete(s));
    });
  }

  /** Base URL, e.g. `http://127.0.0.1:41234` (no trailing slash). */
  get url(): string {
    return `http://127.0.0.1:${(this.#server.address() as AddressInfo).port}`;
  }

  /** Starts serving `blobs` (path → bytes) on 127.0.0.1 and an ephemeral port. */
  static async start(blobs: Record<string, Uint8Array>): Promise<StaticRangeOrigin> {
    const map = new Map<string, { bytes: Uint8Array; etag: string }>();
    for (const [path, bytes] of Object.entries(blobs)) {
      map.set(path, { bytes, etag: `"${createHash('sha256').update(bytes).digest('hex').slice(0, 32)}"` });
    }
    const origin = new StaticRangeOrigin(map);
    await listenOnLoopback(origin.#server);
    return origin;
  }

  #handle(req: IncomingMessage, res: ServerResponse): void {
    this.counters.requests++;
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    const blob = this.#blobs.get(path);
    if (blob === undefined || (req.method !== 'GET' && req.method !== 'HEAD')) {
      res.writeHead(blob === undefined ? 404 : 405, { 'content-type': 'text/plain' });
      res.end(blob === undefined ? 'not found' : 'method not allowed');
      return;
    }
    const size = blob.bytes.length;
    const common = { 'accept-ranges': 'bytes', etag: blob.etag, 'content-type': 'application/octet-stream' };
    const range = req.headers.range;
    let start = 0;
    let end = size; // exclusive
    if (range !== undefined) {
      this.counters.rangeRequests++;
      const m = /^bytes=(\d*)-(\d*)$/.exec(range.trim());
      if (m === null || (m[1] === '' && m[2] === '')) {
        res.writeHead(416, { ...common, 'content-range': `bytes */${size}` });
        res.end();
        return;
      }
      if (m[1] === '') {
        start = Math.max(0, size - Number(m[2]));
      } else {
        start = Number(m[1]);
        end = m[2] === '' ? size : Math.min(size, Number(m[2]) + 1);
      }
      if (start >= end) {
        res.writeHead(416, { ...common, 'content-range': `bytes */${size}` });
        res.end();
        return;
      }
      res.writeHead(206, { ...common, 'content-length': end - start, 'content-range': `bytes ${start}-${end - 1}/${size}` });
    } else {
      res.writeHead(200, { ...common, 'content-length': size });
    }
    if (req.method === 'HEAD') {
      res.end();
      return;
    }
    this.counters.bytesSent += end - start;
    res.end(blob.bytes.subarray(start, end));
  }

  /** Stops listening and destroys every connection. */
  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    for (const s of this.#sockets) s.destroy();
    await closed;
  }
}
