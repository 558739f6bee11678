/**
 * An in-process HTTP proxy (node:http on 127.0.0.1, port 0) that forwards every request
 * to an upstream base URL and injects faults, chosen per request by a seeded PRNG:
 *
 * | kind                 | what the client sees                                          |
 * |----------------------|---------------------------------------------------------------|
 * | `drop`               | the connection is destroyed before any response               |
 * | `drop-after-headers` | the upstream status and headers, then the connection dies     |
 * | `server-error`       | 503 or 500 with a distribution-spec error body (upstream not asked) |
 * | `stall`              | headers and part of the body, then silence until the client gives up (or `stallMaxMs`, then the connection is destroyed) |
 * | `truncate`           | headers and fewer body bytes than announced, then the connection dies |
 * | `flip`               | the whole body with one byte XOR-ed with a one-bit mask      |
 *
 * Plus `latencyMs` added before forwarding each request (RTT emulation) and an optional
 * bandwidth cap shared by all responses (token bucket). The body of a response that
 * gets a body fault is buffered in memory first (test bodies are small). Counters say
 * how many requests of which kind passed and which faults were injected. `close()`
 * destroys every connection and timer, so nothing outlives a test.
 *
 * @example
 * ```ts
 * const proxy = await FaultProxy.start({ upstream: origin.url, seed: 7, rates: { truncate: 0.1 }, latencyMs: 20 });
 * // point the client at proxy.url instead of origin.url
 * console.log(proxy.counters.faults.truncate);
 * await proxy.close();
 * ```
 */
import { Agent, createServer, request as httpRequest } from 'node:http';
import type { IncomingHttpHeaders, IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { listenOnLoopback } from '../support/listen.ts';

/** The faults the proxy can inject. */
export type FaultKind = 'drop' | 'drop-after-headers' | 'server-error' | 'stall' | 'truncate' | 'flip';

/** Every fault kind, in the order their rates are stacked on the unit interval. */
export const FAULT_KINDS: readonly FaultKind[] = ['drop', 'drop-after-headers', 'server-error', 'stall', 'truncate', 'flip'];

/** Probability of each fault per eligible request (their sum must not exceed 1). */
export type FaultRates = Partial<Record<FaultKind, number>>;

/** Options of {@link FaultProxy.start}. */
export interface FaultProxyOptions {
  /** Base URL of the upstream, e.g. `http://127.0.0.1:5000` (a path prefix is kept). */
  upstream: string;
  /** PRNG seed; default 1. */
  seed?: number;
  rates?: FaultRates;
  /** Delay added before each request is forwarded, in ms; default 0. */
  latencyMs?: number;
  /** Bandwidth cap over all responses in bytes per second; default none. */
  bandwidthBytesPerSecond?: number;
  /** A stalled response is destroyed after this long, in ms; default 30000. */
  stallMaxMs?: number;
  /** Which requests may get faults; default every request. */
  eligible?: (req: IncomingMessage) => boolean;
}

/** What passed through the proxy. */
export interface FaultProxyCounters {
  requests: number;
  /** GET requests with a `Range` header. */
  rangeGets: number;
  /** GET requests of a `/blobs/` path (registry blob reads). */
  blobGets: number;
  /** Requests that were eligible for faults. */
  eligible: number;
  faults: Record<FaultKind, number>;
  /** Requests whose upstream could not be reached (answered 502). */
  upstreamErrors: number;
  /** Body bytes written to clients. */
  bytesSent: number;
  /** Body bytes written per blob digest (`…/blobs/<digest>` requests). */
  blobBytes: Record<string, number>;
  /** Stalled responses the proxy destroyed itself after `stallMaxMs`. */
  stallTimeouts: number;
}

function zeroCounters(): FaultProxyCounters {
  return {
    requests: 0,
    rangeGets: 0,
    blobGets: 0,
    eligible: 0,
    faults: { drop: 0, 'drop-after-headers': 0, 'server-error': 0, stall: 0, truncate: 0, flip: 0 },
    upstreamErrors: 0,
    bytesSent: 0,
    blobBytes: {},
    stallTimeouts: 0,
  };
}

/** mulberry32: a small, fast, seedable PRNG with uniform output in [0, 1). */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'proxy-connection', 'upgrade', 'te', 'trailer']);
/** Largest piece written at once under a bandwidth cap. */
const PIECE = 16 << 10;

function forwardHeaders(h: IncomingHttpHeaders): IncomingHttpHeaders {
  const out: IncomingHttpHeaders = {};
  for (const [k, v] of Object.entries(h)) if (!HOP_BY_HOP.has(k) && v !== undefined) out[k] = v;
  return out;
}

/** The proxy. Start with {@link FaultProxy.start}; always `close()` it. */
export class FaultProxy {
  readonly #server: Server;
  readonly #agent = new Agent({ keepAlive: true });
  readonly #upstream: URL;
  readonly #sockets = new Set<Socket>();
  readonly #timers = new Set<{ timer: NodeJS.Timeout; done: () => void }>();
  readonly #rand: () => number;
  readonly #forced: FaultKind[] = [];
  readonly #latencyMs: number;
  readonly #rate: number;
  readonly #stallMaxMs: number;
  readonly #eligible: (req: IncomingMessage) => boolean;
  #rates: FaultRates;
  #counters = zeroCounters();
  /** The blob digest each response carries, for `blobBytes`. */
  readonly #blobOf = new WeakMap<ServerResponse, string>();
  /** Token bucket: bytes available (negative = debt being waited out) at `#bucketAt`. */
  #tokens = 0;
  #bucketAt = 0;
  #closed = false;

  private constructor(options: FaultProxyOptions) {
    this.#upstream = new URL(options.upstream);
    if (this.#upstream.protocol !== 'http:') throw new TypeError(`Upstream ${options.upstream} is not an http: URL`);
    this.#rand = mulberry32(options.seed ?? 1);
    this.#latencyMs = options.latencyMs ?? 0;
    this.#rate = options.bandwidthBytesPerSecond ?? 0;
    this.#stallMaxMs = options.stallMaxMs ?? 30_000;
    this.#eligible = options.eligible ?? (() => true);
    this.#rates = {};
    this.setRates(options.rates ?? {});
    this.#server = createServer((req, res) => {
      this.#handle(req, res).catch(() => res.destroy());
    });
    this.#server.on('connection', (s: Socket) => {
      this.#sockets.add(s);
      s.on('close', () => this.#sockets.delete(s));
    });
  }

  /** Base URL of the proxy (no trailing slash). */
  get url(): string {
    return `http://127.0.0.1:${(this.#server.address() as AddressInfo).port}`;
  }

  /** Starts the proxy on 127.0.0.1 and an ephemeral port. */
  static async start(options: FaultProxyOptions): Promise<FaultProxy> {
    const proxy = new FaultProxy(options);
    await listenOnLoopback(proxy.#server);
    return proxy;
  }

  /** A snapshot of the counters. */
  get counters(): FaultProxyCounters {
    return { ...this.#counters, faults: { ...this.#counters.faults }, blobBytes: { ...this.#counters.blobBytes } };
  }

  /** Sets every counter back to zero (e.g. after a setup request). */
  resetCounters(): void {
    this.#counters = zeroCounters();
  }

  /** Replaces the fault rates (for requests that arrive from now on). */
  setRates(rates: FaultRates): void {
    let sum = 0;
    for (const k of FAULT_KINDS) {
      const r = rates[k] ?? 0;
      if (!(r >= 0 && r <= 1)) throw new RangeError(`Fault rate ${k}=${r} is outside 0..1`);
      sum += r;
    }
    if (sum > 1 + 1e-9) throw new RangeError(`Fault rates sum to ${sum}, more than 1`);
    this.#rates = { ...rates };
  }

  /** The next eligible requests get exactly these faults, in order (before any random ones). */
  force(...kinds: FaultKind[]): void {
    this.#forced.push(...kinds);
  }

  /** Stops listening, destroys all client and upstream connections, clears every timer. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    for (const s of this.#sockets) s.destroy();
    for (const t of this.#timers) {
      clearTimeout(t.timer);
      t.done();
    }
    this.#timers.clear();
    this.#agent.destroy();
    await closed;
  }

  #pick(): FaultKind | null {
    const forced = this.#forced.shift();
    if (forced !== undefined) return forced;
    const u = this.#rand();
    let acc = 0;
    for (const k of FAULT_KINDS) {
      acc += this.#rates[k] ?? 0;
      if (u < acc) return k;
    }
    return null;
  }

  /** A timer that `close()` cancels (resolving early); `onFire` runs only when it expires. */
  #timer(ms: number, onFire?: () => void): { promise: Promise<void>; cancel: () => void } {
    let entry!: { timer: NodeJS.Timeout; done: () => void };
    const promise = new Promise<void>((resolve) => {
      entry = {
        timer: setTimeout(() => {
          this.#timers.delete(entry);
          onFire?.();
          resolve();
        }, ms),
        done: resolve,
      };
    });
    this.#timers.add(entry);
    const cancel = (): void => {
      clearTimeout(entry.timer);
      this.#timers.delete(entry);
      entry.done();
    };
    return { promise, cancel };
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const c = this.#counters;
    c.requests++;
    if (req.method === 'GET' && req.headers.range !== undefined) c.rangeGets++;
    if (req.method === 'GET' && (req.url ?? '').includes('/blobs/')) c.blobGets++;
    const blob = /\/blobs\/(sha256:[0-9a-f]{64})/.exec(req.url ?? '')?.[1];
    if (blob !== undefined) this.#blobOf.set(res, blob);
    let kind: FaultKind | null = null;
    if (this.#eligible(req)) {
      c.eligible++;
      kind = this.#pick();
      if (kind !== null) c.faults[kind]++;
    }
    if (this.#latencyMs > 0) await this.#timer(this.#latencyMs).promise;
    if (this.#closed || res.destroyed) return;

    if (kind === 'drop') {
      req.socket.destroy();
      return;
    }
    if (kind === 'server-error') {
      const status = this.#rand() < 0.5 ? 503 : 500;
      const body = JSON.stringify({ errors: [{ code: 'UNAVAILABLE', message: 'injected fault', detail: status }] });
      res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      req.resume();
      res.end(body);
      return;
    }

    const base = this.#upstream.pathname.replace(/\/$/, '');
    const up = httpRequest({
      host: this.#upstream.hostname,
      port: this.#upstream.port,
      method: req.method,
      path: base + (req.url ?? '/'),
      headers: { ...forwardHeaders(req.headers), host: this.#upstream.host },
      agent: this.#agent,
    });
    const upRes = await new Promise<IncomingMessage | null>((resolve) => {
      up.once('response', resolve);
      up.once('error', () => resolve(null));
      res.once('close', () => {
        if (!up.destroyed) up.destroy();
        resolve(null);
      });
      req.pipe(up);
    });
    if (upRes === null) {
      if (res.destroyed || this.#closed) return;
      c.upstreamErrors++;
      res.writeHead(502, { 'content-type': 'text/plain' });
      res.end('upstream unreachable');
      return;
    }
    res.once('close', () => {
      if (!upRes.complete) upRes.destroy();
    });
    const status = upRes.statusCode ?? 502;
    const headers = forwardHeaders(upRes.headers);

    if (kind === null) {
      res.writeHead(status, headers);
      await this.#pump(upRes, res);
      return;
    }
    const body = await this.#collect(upRes);
    if (body === null || res.destroyed) return;
    if (kind === 'flip' && body.length > 0) {
      const at = Math.floor(this.#rand() * body.length);
      body[at]! ^= 1 << Math.floor(this.#rand() * 8);
    }
    if (kind === 'flip') {
      res.writeHead(status, headers);
      await this.#pump([body], res);
      return;
    }
    // drop-after-headers, truncate, stall: headers (and a prefix), then the fault.
    const prefix = kind === 'drop-after-headers' ? 0 : Math.floor(this.#rand() * body.length);
    res.writeHead(status, headers);
    res.flushHeaders();
    await this.#pump([body.subarray(0, prefix)], res, { end: false });
    if (res.destroyed) return;
    if (kind === 'stall') {
      const t = this.#timer(this.#stallMaxMs, () => {
        this.#counters.stallTimeouts++;
        res.destroy();
      });
      res.once('close', t.cancel);
      return;
    }
    // Let what was written reach the client, then cut the connection.
    const socket = res.socket;
    if (socket === null) return;
    socket.write(new Uint8Array(0), () => socket.destroy());
  }

  /** Reads a whole upstream body; null when the client went away or the upstream broke. */
  async #collect(upRes: IncomingMessage): Promise<Uint8Array | null> {
    const parts: Buffer[] = [];
    try {
      for await (const chunk of upRes) parts.push(chunk as Buffer);
    } catch {
      return null;
    }
    return new Uint8Array(Buffer.concat(parts));
  }

  /**
   * Writes `source` to `res` under the bandwidth cap, respecting backpressure; ends the
   * response unless told not to. Stops early when the client goes away.
   */
  async #pump(source: AsyncIterable<Uint8Array> | Iterable<Uint8Array>, res: ServerResponse, o = { end: true }): Promise<void> {
    try {
      for await (const chunk of source) {
        for (let at = 0; at < chunk.length; ) {
          const piece = this.#rate > 0 ? chunk.subarray(at, at + PIECE) : at === 0 ? chunk : chunk.subarray(at);
          at += piece.length;
          if (this.#rate > 0) await this.#take(piece.length);
          if (res.destroyed || this.#closed) return;
          this.#counters.bytesSent += piece.length;
          const blob = this.#blobOf.get(res);
          if (blob !== undefined) this.#counters.blobBytes[blob] = (this.#counters.blobBytes[blob] ?? 0) + piece.length;
          if (!res.write(piece)) await this.#drain(res);
          if (res.destroyed || this.#closed) return;
        }
      }
    } catch {
      res.destroy(); // the upstream body broke: pass the break on
      return;
    }
    if (o.end) res.end();
  }

  #drain(res: ServerResponse): Promise<void> {
    return new Promise<void>((resolve) => {
      const done = (): void => {
        res.off('drain', done);
        res.off('close', done);
        resolve();
      };
      res.on('drain', done);
      res.on('close', done);
    });
  }

  /** Token bucket: reserve `n` bytes, waiting out any debt (burst up to 1/20 s of bandwidth). */
  async #take(n: number): Promise<void> {
    const now = performance.now();
    const burst = Math.max(PIECE, this.#rate / 20);
    this.#tokens = Math.min(burst, this.#tokens + ((now - this.#bucketAt) / 1000) * this.#rate);
    this.#bucketAt = now;
    this.#tokens -= n;
    if (this.#tokens < 0) await this.#timer((-this.#tokens / this.#rate) * 1000).promise;
  }
}
