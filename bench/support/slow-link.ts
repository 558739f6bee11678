/**
 * A simulated network link in front of an upstream TCP port, as cheap in CPU as a relay
 * can be: a benchmark measures the programs on both ends, and a real link uses none of
 * this machine's CPU. It listens on 127.0.0.1 (port 0) and, per connection:
 *
 * - delays the connection by `connectDelayMs` before connecting upstream (the TCP
 *   handshake's round trip);
 * - delays every piece of client data by `requestDelayMs` before forwarding it (the
 *   round trip of an HTTP request: one piece per request, as HTTP/1.1 clients write);
 * - passes upstream data on whole (socket-sized pieces, no parsing) under one token bucket
 *   shared by all connections (`bandwidthBytesPerSecond`, burst 1/20 s): a piece that
 *   takes the bucket into debt waits the debt out before it is written, its connection's
 *   upstream paused meanwhile.
 *
 * It counts connections, requests (client pieces that start with an HTTP method) and the
 * bytes sent to clients (HTTP headers included). The TCP level replaces an HTTP proxy
 * here: the fault proxy (test/fakes/fault-proxy.ts) parses and rebuilds every request and
 * response and writes 16 KiB pieces, which in bench/cold-start cost about as much CPU as
 * the registry behind it. `close()` destroys every socket and timer.
 *
 * @example
 * ```ts
 * const link = await SlowLink.start({ upstreamPort: 5000, connectDelayMs: 10, requestDelayMs: 10, bandwidthBytesPerSecond: 25e6 });
 * // clients connect to 127.0.0.1:link.port
 * console.log(link.counters.bytesDown);
 * await link.close();
 * ```
 */
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { listenOnLoopback } from '../../test/support/listen.ts';

/** A piece of traffic: `up` from the client (its first 1 KiB in `head`), `down` to it. */
export interface TrafficEvent {
  connection: number;
  direction: 'up' | 'down';
  bytes: number;
  /** `performance.now()` when it passed. */
  at: number;
  head?: string;
}

/** Options of {@link SlowLink.start}. */
export interface SlowLinkOptions {
  upstreamPort: number;
  /** Delay of every new connection, in ms. */
  connectDelayMs: number;
  /** Delay of every piece of client data (a request), in ms. */
  requestDelayMs: number;
  /** Cap on the bytes per second sent to all clients together; 0 or less: none. */
  bandwidthBytesPerSecond: number;
  /** Called for every piece of traffic, for timelines (costs a string per client piece). */
  onData?: (e: TrafficEvent) => void;
}

/** What passed the link since the last reset. */
export interface SlowLinkCounters {
  connections: number;
  requests: number;
  /** Bytes sent to clients (headers and bodies). */
  bytesDown: number;
}

const METHOD = /^(GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS) /;

/** The link. Start with {@link SlowLink.start}; always `close()` it. */
export class SlowLink {
  readonly #server: Server;
  readonly #o: SlowLinkOptions;
  readonly #sockets = new Set<Socket>();
  readonly #timers = new Set<NodeJS.Timeout>();
  #counters: SlowLinkCounters = { connections: 0, requests: 0, bytesDown: 0 };
  #connectionIds = 0;
  /** Token bucket: bytes available (negative: debt) at `#bucketAt`. */
  #tokens = 0;
  #bucketAt = 0;

  private constructor(o: SlowLinkOptions) {
    this.#o = o;
    this.#server = createServer({ pauseOnConnect: true }, (client) => this.#accept(client));
  }

  /** Listens on 127.0.0.1, port 0. */
  static async start(o: SlowLinkOptions): Promise<SlowLink> {
    const link = new SlowLink(o);
    await listenOnLoopback(link.#server);
    return link;
  }

  get port(): number {
    return (this.#server.address() as AddressInfo).port;
  }

  /** A snapshot of the counters. */
  get counters(): SlowLinkCounters {
    return { ...this.#counters };
  }

  resetCounters(): void {
    this.#counters = { connections: 0, requests: 0, bytesDown: 0 };
  }

  async close(): Promise<void> {
    for (const t of this.#timers) clearTimeout(t);
    this.#timers.clear();
    for (const s of this.#sockets) s.destroy();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  #after(ms: number, fn: () => void): void {
    const t = setTimeout(() => {
      this.#timers.delete(t);
      fn();
    }, ms);
    this.#timers.add(t);
  }

  #track(s: Socket): void {
    this.#sockets.add(s);
    s.on('close', () => this.#sockets.delete(s));
    s.on('error', () => s.destroy());
  }

  /** Milliseconds `n` more bytes must wait under the shared cap (0 when within the burst). */
  #take(n: number): number {
    const rate = this.#o.bandwidthBytesPerSecond;
    if (!(rate > 0)) return 0;
    const now = performance.now();
    this.#tokens = Math.min(rate / 20, this.#tokens + ((now - this.#bucketAt) / 1000) * rate);
    this.#bucketAt = now;
    this.#tokens -= n;
    return this.#tokens < 0 ? (-this.#tokens / rate) * 1000 : 0;
  }

  #accept(client: Socket): void {
    const id = ++this.#connectionIds;
    this.#counters.connections++;
    this.#track(client);
    this.#after(this.#o.connectDelayMs, () => {
      if (client.destroyed) return;
      const upstream = connect(this.#o.upstreamPort, '127.0.0.1');
      this.#track(upstream);
      upstream.setNoDelay(true);
      client.setNoDelay(true);
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
      this.#relayUp(id, client, upstream);
      this.#relayDown(id, upstream, client);
      client.resume();
    });
  }

  /** Client → upstream: each piece `requestDelayMs` late, in order (equal timeouts fire in order). */
  #relayUp(id: number, client: Socket, upstream: Socket): void {
    const onData = this.#o.onData;
    let inFlight = 0;
    let ended = false;
    client.on('data', (b: Buffer) => {
      const head = b.subarray(0, 8).toString('latin1');
      if (METHOD.test(head)) this.#counters.requests++;
      onData?.({ connection: id, direction: 'up', bytes: b.length, at: performance.now(), head: b.subarray(0, 1024).toString('latin1') });
      inFlight++;
      this.#after(this.#o.requestDelayMs, () => {
        inFlight--;
        if (upstream.destroyed) return;
        if (!upstream.write(b)) {
          client.pause();
          upstream.once('drain', () => client.resume());
        }
        if (ended && inFlight === 0) upstream.end();
      });
    });
    client.on('end', () => {
      ended = true;
      if (inFlight === 0) upstream.end();
    });
  }

  /** Upstream → client: whole pieces in order, each once the shared bucket's debt is paid. */
  #relayDown(id: number, upstream: Socket, client: Socket): void {
    const onData = this.#o.onData;
    const queue: Array<{ b: Buffer; due: number }> = [];
    let armed = false;
    let ended = false;
    const write = (b: Buffer): void => {
      if (client.destroyed) return;
      this.#counters.bytesDown += b.length;
      onData?.({ connection: id, direction: 'down', bytes: b.length, at: performance.now() });
      if (!client.write(b)) {
        upstream.pause();
        client.once('drain', () => {
          if (queue.length === 0) upstream.resume();
        });
      }
    };
    const flush = (): void => {
      armed = false;
      const now = performance.now();
      while (queue.length > 0 && (queue[0] as { due: number }).due <= now + 0.5) write((queue.shift() as { b: Buffer }).b);
      if (queue.length > 0) {
        armed = true;
        this.#after((queue[0] as { due: number }).due - now, flush);
      } else if (ended) {
        client.end();
      } else if (!client.writableNeedDrain) {
        upstream.resume();
      }
    };
    upstream.on('data', (b: Buffer) => {
      const wait = this.#take(b.length);
      if (wait === 0 && queue.length === 0) {
        write(b);
        return;
      }
      const due = Math.max(performance.now() + wait, queue.at(-1)?.due ?? 0);
      queue.push({ b, due });
      upstream.pause();
      if (!armed) {
        armed = true;
        this.#after(due - performance.now(), flush);
      }
    });
    upstream.on('end', () => {
      ended = true;
      if (queue.length === 0) client.end();
    });
  }
}
