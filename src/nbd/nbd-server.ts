/**
 * An NBD server (fixed newstyle, structured replies) over any `BlockDevice`.
 *
 * Lifecycle: `createNbdServer(options)` → `listen()` on a unix socket and/or TCP
 * (any number of times) → clients connect (nbdinfo, nbdcopy, nbdfuse, qemu, the kernel's
 * nbd-client) → `close()`: stop accepting, answer what is in flight, end every
 * connection, resolve when all are closed. Devices belong to the caller: `close()` does
 * not close them.
 *
 * Per connection at most `maxInFlight` requests (and about `maxInFlightBytes` of READ/WRITE
 * payload) are in flight; at the bound the server stops reading the socket. A reply
 * holds its slot until the socket has taken it, so a client that does not read replies
 * gets no further requests served. Replies go out in completion order.
 *
 * Flush and FUA go to `device.flush()`, which is device-wide, so every export is
 * advertised with NBD_FLAG_CAN_MULTI_CONN. Alignment handling and the error mapping are
 * described in `src/nbd/README.md`.
 *
 * @example
 * ```ts
 * const server = createNbdServer({ device, name: 'disk' });
 * const ep = await server.listen({ path: '/run/obd/disk.sock' });
 * // nbdinfo 'nbd+unix:///disk?socket=/run/obd/disk.sock'
 * await server.close();
 * ```
 */
import { createServer } from 'node:net';
import type { Server, Socket } from 'node:net';
import { debuglog } from 'node:util';
import type { BlockDevice } from '../io/block-device.ts';
import { FailedPreconditionError } from '../io/errors.ts';
import { ExportTable } from './_export-table.ts';
import type { NbdExport } from './_export-table.ts';
import { NbdConnection } from './_connection.ts';
import type { ConnectionContext } from './_connection.ts';
import { BufferPool } from './_buffer-pool.ts';

export type { NbdExport } from './_export-table.ts';
export type { NbdRequestEvent } from './_connection.ts';

const debug = debuglog('obd');

/** Largest READ/WRITE payload the server accepts by default (32 MiB). */
export const DEFAULT_MAX_PAYLOAD = 32 * 1024 * 1024;

export interface NbdServerOptions {
  /** Named exports. Either this or `device`. */
  exports?: ReadonlyMap<string, BlockDevice | NbdExport>;
  /** A single export (with `name`, default `''`). */
  device?: BlockDevice | NbdExport;
  name?: string;
  /** The export a client gets when it asks for the empty name (default: the only export). */
  defaultExport?: string;
  /** Requests in flight per connection (default 64). */
  maxInFlight?: number;
  /** READ/WRITE payload bytes in flight per connection before reading pauses (default 64 MiB). */
  maxInFlightBytes?: number;
  /** Largest READ/WRITE payload, advertised as the maximum block size (default 32 MiB). */
  maxPayload?: number;
  /** Drop a client that has not finished option haggling after this long (default 30 s; 0 = never). */
  handshakeTimeoutMs?: number;
  /** After ending a connection, destroy it if the peer has not closed after this long (default 5 s). */
  closeTimeoutMs?: number;
}

/** Where to listen: a unix socket path, or TCP (host defaults to 127.0.0.1; port 0 = any). */
export type NbdListenTarget = { path: string } | { host?: string; port: number };

/** A bound address. */
export type NbdEndpoint = { path: string } | { host: string; port: number };

function positive(name: string, value: number | undefined, fallback: number): number {
  const v = value ?? fallback;
  if (!Number.isSafeInteger(v) || v <= 0) throw new RangeError(`Cannot create NBD server: ${name} must be a positive integer, got ${v}`);
  return v;
}

/** An NBD server; create it with {@link createNbdServer}. */
export class NbdServer {
  readonly #context: ConnectionContext;
  readonly #servers: Server[] = [];
  readonly #endpoints: NbdEndpoint[] = [];
  readonly #connections = new Set<NbdConnection>();
  #closing: Promise<void> | undefined;

  constructor(options: NbdServerOptions) {
    if ((options.exports === undefined) === (options.device === undefined)) {
      throw new TypeError('Cannot create NBD server: give exactly one of `exports` and `device`');
    }
    const maxPayload = positive('maxPayload', options.maxPayload, DEFAULT_MAX_PAYLOAD);
    const exports = options.exports ?? new Map([[options.name ?? '', options.device as BlockDevice | NbdExport]]);
    const tableOptions = options.defaultExport === undefined ? { maxPayload } : { maxPayload, defaultExport: options.defaultExport };
    const limits = {
      maxInFlight: positive('maxInFlight', options.maxInFlight, 64),
      maxInFlightBytes: positive('maxInFlightBytes', options.maxInFlightBytes, 64 * 1024 * 1024),
      maxPayload,
      handshakeTimeoutMs: options.handshakeTimeoutMs === 0 ? 0 : positive('handshakeTimeoutMs', options.handshakeTimeoutMs, 30_000),
      closeTimeoutMs: positive('closeTimeoutMs', options.closeTimeoutMs, 5_000),
      readHighWaterMark: 2 * 1024 * 1024,
    };
    // Idle buffers kept for reuse: enough for a full window of 256 KiB requests on a few connections.
    const pool = new BufferPool({ maxPooledBytes: 64 * 1024 * 1024, maxBufferBytes: 4 * 1024 * 1024 + 64 });
    this.#context = { exports: new ExportTable(exports, tableOptions), limits, pool };
  }

  /** Bound addresses, in `listen()` order. */
  get endpoints(): readonly NbdEndpoint[] {
    return this.#endpoints;
  }

  /** Open client connections (handshake or transmission). */
  get connections(): number {
    return this.#connections.size;
  }

  /** Starts listening on `target`; resolves with the bound address (the real port for port 0). */
  async listen(target: NbdListenTarget): Promise<NbdEndpoint> {
    if (this.#closing !== undefined) throw new FailedPreconditionError('Cannot listen: NBD server is closed');
    const server = createServer({ allowHalfOpen: true, pauseOnConnect: false }, (s) => this.#accept(s));
    await new Promise<void>((resolve, reject) => {
      const listening = (): void => {
        server.off('error', reject);
        resolve();
      };
      server.once('error', reject);
      if ('path' in target) server.listen({ path: target.path }, listening);
      else server.listen({ host: target.host ?? '127.0.0.1', port: target.port }, listening);
    });
    if (this.#closing !== undefined) {
      await new Promise<void>((resolve) => server.close(() => resolve()));
      throw new FailedPreconditionError('Cannot listen: NBD server was closed while binding');
    }
    server.on('error', (e) => debug('nbd: listener error: %s', e.message));
    this.#servers.push(server);
    const addr = server.address();
    const ep: NbdEndpoint =
      'path' in target ? { path: target.path } : typeof addr === 'object' && addr !== null ? { host: addr.address, port: addr.port } : { host: '', port: 0 };
    this.#endpoints.push(ep);
    debug('nbd: listening on %j', ep);
    return ep;
  }

  #accept(socket: Socket): void {
    if (this.#closing !== undefined) {
      socket.destroy();
      return;
    }
    if (socket.remoteFamily !== undefined) socket.setNoDelay(true);
    const conn = new NbdConnection(socket, this.#context);
    this.#connections.add(conn);
    void conn.closed.then(() => this.#connections.delete(conn));
    void conn.run();
  }

  /**
   * Stops listening, lets in-flight requests finish, ends every connection and resolves
   * when all sockets are closed (connections that do not close within `closeTimeoutMs`
   * are destroyed). Idempotent.
   */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    const stopped = this.#servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve())));
    for (const c of this.#connections) c.shutdown();
    await Promise.all([...stopped, ...[...this.#connections].map((c) => c.closed)]);
  }
}

/** Creates an NBD server for `options.exports` (or the single `options.device`). */
export function createNbdServer(options: NbdServerOptions): NbdServer {
  return new NbdServer(options);
}
