/**
 * A raw NBD client for tests: byte-level control over the handshake and requests, so
 * tests can send what real clients never do (bad magic, truncated requests, unaligned or
 * oversized I/O) and check the exact replies. Not used by the server.
 */
import { connect } from 'node:net';
import type { Socket } from 'node:net';
import { SocketReader } from './_socket-reader.ts';
import {
  CLIENT_FLAG,
  GREETING_SIZE,
  INFO,
  MAGIC,
  OPT,
  OPTION_REPLY_HEADER_SIZE,
  REP,
  SIMPLE_REPLY_HEADER_SIZE,
  STRUCTURED_REPLY_HEADER_SIZE,
  encodeRequestHeader,
} from './protocol.ts';
import type { NbdEndpoint } from './nbd-server.ts';

export interface OptionReply {
  option: number;
  type: number;
  data: Buffer;
}

export interface ReplyMessage {
  kind: 'simple' | 'chunk';
  cookie: bigint;
  /** Simple reply: the error field. Chunk: error of an error chunk, else 0. */
  error: number;
  /** Chunk flags (0 for simple replies). */
  flags: number;
  /** Chunk type (-1 for simple replies). */
  type: number;
  /** Simple READ data, or the chunk payload. */
  data: Buffer;
}

export interface RawRequest {
  type: number;
  flags?: number;
  cookie: bigint;
  offset: number;
  length: number;
  payload?: Uint8Array;
}

export class RawNbdClient {
  readonly socket: Socket;
  readonly #reader: SocketReader;
  readonly #timeoutMs: number;
  readonly #closed: Promise<void>;
  /** Data length expected in simple replies to READs, by cookie. */
  readonly #readLengths = new Map<bigint, number>();

  private constructor(socket: Socket, timeoutMs: number) {
    this.socket = socket;
    this.#timeoutMs = timeoutMs;
    this.#reader = new SocketReader(socket, { highWaterMark: 1 << 20 });
    this.#closed = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.on('error', () => undefined);
  }

  static async connect(ep: NbdEndpoint, timeoutMs = 10_000): Promise<RawNbdClient> {
    const socket = 'path' in ep ? connect({ path: ep.path }) : connect({ host: ep.host, port: ep.port });
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    return new RawNbdClient(socket, timeoutMs);
  }

  /** Exactly `n` bytes, or throws on end of stream or timeout. */
  async read(n: number): Promise<Buffer> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`Timed out waiting for ${n} bytes`)), this.#timeoutMs);
    });
    try {
      const b = await Promise.race([this.#reader.read(n), timeout]);
      if (b === undefined) throw new Error(`Connection ended while waiting for ${n} bytes`);
      return b;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Resolves true when the server closes the connection within the timeout. */
  async closedWithin(ms = this.#timeoutMs): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    const t = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(false), ms);
    });
    const r = await Promise.race([this.#closed.then(() => true), t]);
    clearTimeout(timer);
    return r;
  }

  send(b: Uint8Array): boolean {
    return this.socket.write(b);
  }

  destroy(): void {
    this.socket.destroy();
  }

  /** Reads the greeting and answers with `clientFlags`. Returns the handshake flags. */
  async greet(clientFlags = CLIENT_FLAG.FIXED_NEWSTYLE | CLIENT_FLAG.NO_ZEROES): Promise<number> {
    const g = await this.read(GREETING_SIZE);
    if (g.readBigUInt64BE(0) !== MAGIC.INIT_PASSWD || g.readBigUInt64BE(8) !== MAGIC.IHAVEOPT) {
      throw new Error('Bad greeting');
    }
    const f = Buffer.alloc(4);
    f.writeUInt32BE(clientFlags);
    this.send(f);
    return g.readUInt16BE(16);
  }

  sendOption(option: number, data: Uint8Array = new Uint8Array(0)): void {
    const h = Buffer.alloc(16);
    h.writeBigUInt64BE(MAGIC.IHAVEOPT, 0);
    h.writeUInt32BE(option, 8);
    h.writeUInt32BE(data.length, 12);
    this.send(Buffer.concat([h, data]));
  }

  async readOptionReply(): Promise<OptionReply> {
    const h = await this.read(OPTION_REPLY_HEADER_SIZE);
    if (h.readBigUInt64BE(0) !== MAGIC.OPTION_REPLY) throw new Error('Bad option reply magic');
    const len = h.readUInt32BE(16);
    const data = len === 0 ? Buffer.alloc(0) : await this.read(len);
    return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data };
  }

  /** Sends an option and collects replies up to the final one (ACK or an error). */
  async option(option: number, data?: Uint8Array): Promise<OptionReply[]> {
    this.sendOption(option, data);
    const out: OptionReply[] = [];
    for (let i = 0; i < 1000; i++) {
      const r = await this.readOptionReply();
      out.push(r);
      if (r.type === REP.ACK || r.type >= 0x80000000) return out;
    }
    throw new Error('Too many option replies');
  }

  /** Greets, optionally enables structured replies, then NBD_OPT_GO on `name`. */
  async open(name: string, options: { structured?: boolean } = {}): Promise<{ size: number; flags: number }> {
    await this.greet();
    if (options.structured === true) {
      const r = await this.option(OPT.STRUCTURED_REPLY);
      if (r[0]?.type !== REP.ACK) throw new Error('Structured replies refused');
    }
    const replies = await this.option(OPT.GO, encodeGoData(name, [INFO.BLOCK_SIZE]));
    const last = replies.at(-1);
    if (last?.type !== REP.ACK) throw new Error(`NBD_OPT_GO failed with reply type 0x${last?.type.toString(16)}`);
    const exp = replies.find((r) => r.type === REP.INFO && r.data.readUInt16BE(0) === INFO.EXPORT);
    if (exp === undefined) throw new Error('No NBD_INFO_EXPORT');
    return { size: Number(exp.data.readBigUInt64BE(2)), flags: exp.data.readUInt16BE(10) };
  }

  request(r: RawRequest): boolean {
    if (r.type === 0) this.#readLengths.set(r.cookie, r.length);
    const h = encodeRequestHeader({ flags: r.flags ?? 0, type: r.type, cookie: r.cookie, offset: r.offset, length: r.length });
    return this.send(r.payload === undefined ? h : Buffer.concat([h, r.payload]));
  }

  /** Reads one reply message (a simple reply, or one structured chunk). */
  async readReply(): Promise<ReplyMessage> {
    const head = await this.read(4);
    const magic = head.readUInt32BE(0);
    if (magic === MAGIC.SIMPLE_REPLY) {
      const rest = await this.read(SIMPLE_REPLY_HEADER_SIZE - 4);
      const error = rest.readUInt32BE(0);
      const cookie = rest.readBigUInt64BE(4);
      const want = this.#readLengths.get(cookie);
      this.#readLengths.delete(cookie);
      const data = error === 0 && want !== undefined ? await this.read(want) : Buffer.alloc(0);
      return { kind: 'simple', cookie, error, flags: 0, type: -1, data };
    }
    if (magic === MAGIC.STRUCTURED_REPLY) {
      const rest = await this.read(STRUCTURED_REPLY_HEADER_SIZE - 4);
      const flags = rest.readUInt16BE(0);
      const type = rest.readUInt16BE(2);
      const cookie = rest.readBigUInt64BE(4);
      const len = rest.readUInt32BE(12);
      const data = len === 0 ? Buffer.alloc(0) : await this.read(len);
      const error = (type & 0x8000) !== 0 ? data.readUInt32BE(0) : 0;
      return { kind: 'chunk', cookie, error, flags, type, data };
    }
    throw new Error(`Bad reply magic 0x${magic.toString(16)}`);
  }
}

/** NBD_OPT_GO / NBD_OPT_INFO data for `name` requesting `infos`. */
export function encodeGoData(name: string, infos: number[] = []): Buffer {
  const n = Buffer.from(name, 'utf8');
  const b = Buffer.alloc(4 + n.length + 2 + 2 * infos.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  b.writeUInt16BE(infos.length, 4 + n.length);
  infos.forEach((t, i) => b.writeUInt16BE(t, 6 + n.length + 2 * i));
  return b;
}
