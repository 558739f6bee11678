/**
 * A TCP front on 127.0.0.1 (port 0) that adds a fixed delay to every new connection
 * before piping it to an upstream port: the TCP handshake's round trip, which an HTTP
 * proxy's per-request latency does not model. Counts connections. `close()` destroys
 * every socket and timer.
 *
 * @example
 * ```ts
 * const front = await ConnectDelay.start({ upstreamPort: 5000, delayMs: 10 });
 * // clients connect to front.port
 * await front.close();
 * ```
 */
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';

/** A piece of traffic: `up` from the client (its first 1 KiB in `head`), `down` to it. */
export interface TrafficEvent {
  connection: number;
  direction: 'up' | 'down';
  bytes: number;
  /** `performance.now()` when it passed. */
  at: number;
  head?: string;
}

/** Options of {@link ConnectDelay.start}. */
export interface ConnectDelayOptions {
  upstreamPort: number;
  delayMs: number;
  /** Called for every piece of traffic, for timelines. */
  onData?: (e: TrafficEvent) => void;
}

/** The front. Start with {@link ConnectDelay.start}; always `close()` it. */
export class ConnectDelay {
  readonly #server: Server;
  readonly #sockets = new Set<Socket>();
  readonly #timers = new Set<NodeJS.Timeout>();
  #connections = 0;

  private constructor(o: ConnectDelayOptions) {
    this.#server = createServer({ pauseOnConnect: true }, (client) => {
      const connection = ++this.#connections;
      this.#track(client);
      client.on('error', () => client.destroy());
      const onData = o.onData;
      const timer = setTimeout(() => {
        this.#timers.delete(timer);
        if (client.destroyed) return;
        const upstream = connect(o.upstreamPort, '127.0.0.1');
        this.#track(upstream);
        upstream.setNoDelay(true);
        client.setNoDelay(true);
        upstream.on('error', () => client.destroy());
        client.on('close', () => upstream.destroy());
        if (onData !== undefined) {
          // Listeners added only now: a 'data' listener would start the paused socket flowing.
          client.on('data', (b: Buffer) => onData({ connection, direction: 'up', bytes: b.length, at: performance.now(), head: b.subarray(0, 1024).toString('latin1') }));
          upstream.on('data', (b: Buffer) => onData({ connection, direction: 'down', bytes: b.length, at: performance.now() }));
        }
        client.pipe(upstream).pipe(client);
        client.resume();
      }, o.delayMs);
      this.#timers.add(timer);
    });
  }

  /** Listens on 127.0.0.1, port 0. */
  static async start(o: ConnectDelayOptions): Promise<ConnectDelay> {
    const front = new ConnectDelay(o);
    await new Promise<void>((resolve, reject) => {
      front.#server.once('error', reject);
      front.#server.listen(0, '127.0.0.1', () => resolve());
    });
    return front;
  }

  get port(): number {
    return (this.#server.address() as AddressInfo).port;
  }

  /** Connections accepted so far. */
  get connections(): number {
    return this.#connections;
  }

  #track(s: Socket): void {
    this.#sockets.add(s);
    s.on('close', () => this.#sockets.delete(s));
  }

  async close(): Promise<void> {
    for (const t of this.#timers) clearTimeout(t);
    for (const s of this.#sockets) s.destroy();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}
