/**
 * One client connection: fixed-newstyle option haggling, then the transmission phase
 * with pipelined requests (bounded in flight, replies in completion order).
 */
import type { Socket } from 'node:net';
import { channel } from 'node:diagnostics_channel';
import { debuglog } from 'node:util';
import { DataCorruptionError, InvalidArgumentError } from '../io/errors.ts';
import { nbdErrnoOf } from './errno.ts';
import type { ExportTable, ServedExport } from './_export-table.ts';
import { SocketReader } from './_socket-reader.ts';
import type { BufferPool } from './_buffer-pool.ts';
import {
  CLIENT_FLAG,
  CLIENT_FLAGS_SIZE,
  CMD,
  CMD_FLAG,
  ERRNO,
  HANDSHAKE_FLAG,
  INFO,
  MAGIC,
  OFFSET_DATA_START,
  OPT,
  OPTION_HEADER_SIZE,
  REP,
  REQUEST_HEADER_SIZE,
  SIMPLE_REPLY_HEADER_SIZE,
  TRANSMISSION_FLAG,
  commandName,
  decodeInfoRequest,
  decodeMetaContextRequest,
  decodeOptionHeader,
  decodeRequestHeader,
  decodeString,
  encodeErrorChunk,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoString,
  encodeOptionReply,
  encodeServerReplyData,
  encodeSimpleReply,
  encodeString,
  writeOffsetDataHeader,
  writeSimpleReplyHeader,
} from './protocol.ts';
import type { RequestHeader } from './protocol.ts';

const debug = debuglog('obd');
const requestChannel = channel('obd:nbd:request');

/** Option data larger than this is skipped and answered with NBD_REP_ERR_TOO_BIG. */
const MAX_OPTION_DATA = 64 * 1024;
/** Options per handshake before the server gives up on the client (denial of service). */
const MAX_OPTIONS = 16384;
/** Chunk size for writing explicit zeros (WRITE_ZEROES with NO_HOLE, unaligned edges). */
const ZERO_CHUNK = 1 << 20;

/** Limits shared by every connection of a server. */
export interface ConnectionLimits {
  maxInFlight: number;
  maxInFlightBytes: number;
  maxPayload: number;
  handshakeTimeoutMs: number;
  closeTimeoutMs: number;
  readHighWaterMark: number;
}

/** What every connection of a server shares. */
export interface ConnectionContext {
  exports: ExportTable;
  limits: ConnectionLimits;
  pool: BufferPool;
}

/** What `obd:nbd:request` publishes after each request. */
export interface NbdRequestEvent {
  export: string;
  command: string;
  flags: number;
  offset: number;
  length: number;
  /** 0 on success, else the NBD errno sent. */
  error: number;
  durationMs: number;
}

/** A failure answered with an NBD error value and a message for the client. */
class RequestError extends Error {
  readonly errno: number;
  constructor(errno: number, message: string) {
    super(message);
    this.errno = errno;
  }
}

function alignDown(n: number, a: number): number {
  return n - (n % a);
}

function alignUp(n: number, a: number): number {
  const r = n % a;
  return r === 0 ? n : n + a - r;
}

export class NbdConnection {
  readonly closed: Promise<void>;
  readonly #socket: Socket;
  readonly #exports: ExportTable;
  readonly #limits: ConnectionLimits;
  readonly #pool: BufferPool;
  readonly #reader: SocketReader;
  #structured = false;
  #noZeroes = false;
  #export: ServedExport | undefined;
  #stopping = false;
  #inTransmission = false;
  #inFlight = 0;
  #inFlightBytes = 0;
  #wake: (() => void) | undefined;
  #closeTimer: NodeJS.Timeout | undefined;

  constructor(socket: Socket, context: ConnectionContext) {
    this.#socket = socket;
    this.#exports = context.exports;
    this.#limits = context.limits;
    this.#pool = context.pool;
    const pool = context.pool;
    this.#reader = new SocketReader(socket, { highWaterMark: context.limits.readHighWaterMark, alloc: (n) => pool.acquire(n) });
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.on('error', (e) => debug('nbd: connection error: %s', e.message));
    void this.closed.then(() => {
      if (this.#closeTimer !== undefined) clearTimeout(this.#closeTimer);
    });
  }

  /** Runs the connection to its end; never rejects. */
  async run(): Promise<void> {
    const timer =
      this.#limits.handshakeTimeoutMs > 0
        ? setTimeout(() => {
            debug('nbd: handshake timed out');
            this.#socket.destroy();
          }, this.#limits.handshakeTimeoutMs).unref()
        : undefined;
    try {
      const entered = await this.#handshake();
      clearTimeout(timer);
      if (entered) await this.#transmission();
      else this.#end();
    } catch (e) {
      clearTimeout(timer);
      debug('nbd: connection failed: %s', (e as Error).message);
      this.#socket.destroy();
    }
  }

  /**
   * Server shutdown: during the handshake the connection is dropped; during transmission
   * no further request is read, in-flight ones are answered, then the socket ends.
   */
  shutdown(): void {
    if (!this.#inTransmission) {
      this.#socket.destroy();
      return;
    }
    this.#stopping = true;
    this.#reader.stop();
    this.#wakeUp();
    this.#armCloseTimer();
  }

  // ---------------------------------------------------------------- handshake

  #write(b: Uint8Array): void {
    this.#socket.write(b);
  }

  #optionReply(option: number, type: number, data?: Uint8Array | string): void {
    const bytes = typeof data === 'string' ? encodeString(data) : data;
    this.#write(encodeOptionReply(option, type, bytes));
  }

  /** True when transmission was entered; false when the client (or we) ended the session. */
  async #handshake(): Promise<boolean> {
    this.#write(encodeGreeting(HANDSHAKE_FLAG.FIXED_NEWSTYLE | HANDSHAKE_FLAG.NO_ZEROES));
    const cf = await this.#reader.read(CLIENT_FLAGS_SIZE);
    if (cf === undefined) return false;
    const clientFlags = cf.readUInt32BE(0);
    if ((clientFlags & ~(CLIENT_FLAG.FIXED_NEWSTYLE | CLIENT_FLAG.NO_ZEROES)) !== 0) {
      debug('nbd: client sent unknown flags 0x%s; closing', clientFlags.toString(16));
      return false;
    }
    if ((clientFlags & CLIENT_FLAG.FIXED_NEWSTYLE) === 0) {
      debug('nbd: client does not speak fixed newstyle; closing');
      return false;
    }
    this.#noZeroes = (clientFlags & CLIENT_FLAG.NO_ZEROES) !== 0;

    for (let n = 0; n < MAX_OPTIONS; n++) {
      const hb = await this.#reader.read(OPTION_HEADER_SIZE);
      if (hb === undefined) return false;
      const h = decodeOptionHeader(hb);
      if (h.magic !== MAGIC.IHAVEOPT) {
        debug('nbd: bad option magic 0x%s; closing', h.magic.toString(16));
        return false;
      }
      if (h.length > MAX_OPTION_DATA) {
        if (!(await this.#reader.skip(h.length))) return false;
        this.#optionReply(h.option, REP.ERR_TOO_BIG, `Cannot accept option ${h.option}: ${h.length} bytes of data`);
        continue;
      }
      const data = h.length === 0 ? Buffer.alloc(0) : await this.#reader.read(h.length);
      if (data === undefined) return false;
      const outcome = this.#option(h.option, data);
      if (outcome !== 'continue') return outcome === 'transmission';
    }
    debug('nbd: client sent more than %d options; closing', MAX_OPTIONS);
    return false;
  }

  #flagsFor(e: ServedExport): number {
    let flags = TRANSMISSION_FLAG.HAS_FLAGS | TRANSMISSION_FLAG.CAN_MULTI_CONN;
    if (e.device.readOnly) flags |= TRANSMISSION_FLAG.READ_ONLY;
    else {
      flags |=
        TRANSMISSION_FLAG.SEND_FLUSH |
        TRANSMISSION_FLAG.SEND_FUA |
        TRANSMISSION_FLAG.SEND_TRIM |
        TRANSMISSION_FLAG.SEND_WRITE_ZEROES;
    }
    if (this.#structured) flags |= TRANSMISSION_FLAG.SEND_DF;
    return flags;
  }

  #option(option: number, data: Buffer): 'continue' | 'transmission' | 'end' {
    switch (option) {
      case OPT.EXPORT_NAME: {
        const name = decodeString(data);
        const e = name === undefined ? undefined : this.#exports.lookup(name);
        if (e === undefined) {
          debug('nbd: NBD_OPT_EXPORT_NAME for unknown export; closing');
          return 'end';
        }
        this.#export = e;
        this.#write(encodeExportNameReply(e.device.size, this.#flagsFor(e), this.#noZeroes));
        return 'transmission';
      }
      case OPT.ABORT:
        this.#optionReply(option, REP.ACK);
        return 'end';
      case OPT.LIST:
        if (data.length !== 0) {
          this.#optionReply(option, REP.ERR_INVALID, 'Cannot list exports: NBD_OPT_LIST carries no data');
          return 'continue';
        }
        for (const e of this.#exports.list()) {
          this.#optionReply(option, REP.SERVER, encodeServerReplyData(e.name, e.description));
        }
        this.#optionReply(option, REP.ACK);
        return 'continue';
      case OPT.INFO:
      case OPT.GO:
        return this.#info(option, data);
      case OPT.STRUCTURED_REPLY:
        if (data.length !== 0) {
          this.#optionReply(option, REP.ERR_INVALID, 'Cannot enable structured replies: option carries no data');
          return 'continue';
        }
        this.#structured = true;
        this.#optionReply(option, REP.ACK);
        return 'continue';
      case OPT.LIST_META_CONTEXT:
      case OPT.SET_META_CONTEXT: {
        const req = decodeMetaContextRequest(data);
        if (req === undefined) {
          this.#optionReply(option, REP.ERR_INVALID, 'Cannot select metadata contexts: malformed request');
        } else if (!this.#structured) {
          this.#optionReply(option, REP.ERR_INVALID, 'Cannot select metadata contexts: structured replies not negotiated');
        } else if (this.#exports.lookup(req.name) === undefined) {
          this.#optionReply(option, REP.ERR_UNKNOWN, `Cannot select metadata contexts: no export named '${req.name}'`);
        } else {
          // No metadata context (not even base:allocation) is offered: a bare ACK.
          this.#optionReply(option, REP.ACK);
        }
        return 'continue';
      }
      default:
        this.#optionReply(option, REP.ERR_UNSUP, `Cannot handle option ${option}: not supported by this server`);
        return 'continue';
    }
  }

  #info(option: number, data: Buffer): 'continue' | 'transmission' {
    const req = decodeInfoRequest(data);
    if (req === undefined) {
      this.#optionReply(option, REP.ERR_INVALID, 'Cannot negotiate export: malformed NBD_OPT_INFO/GO data');
      return 'continue';
    }
    const e = this.#exports.lookup(req.name);
    if (e === undefined) {
      this.#optionReply(option, REP.ERR_UNKNOWN, `Cannot open export '${req.name}': no such export`);
      return 'continue';
    }
    this.#optionReply(option, REP.INFO, encodeInfoExport(e.device.size, this.#flagsFor(e)));
    if (req.requests.includes(INFO.NAME)) this.#optionReply(option, REP.INFO, encodeInfoString(INFO.NAME, e.name));
    if (req.requests.includes(INFO.DESCRIPTION) && e.description !== '') {
      this.#optionReply(option, REP.INFO, encodeInfoString(INFO.DESCRIPTION, e.description));
    }
    // Sent whether requested or not (allowed by the INFO extension); unaligned requests
    // from clients that did not ask are still served, by read-modify-write.
    this.#optionReply(option, REP.INFO, encodeInfoBlockSize(e.blockSizes));
    this.#optionReply(option, REP.ACK);
    if (option === OPT.INFO) return 'continue';
    this.#export = e;
    return 'transmission';
  }

  // ---------------------------------------------------------------- transmission

  #atBound(): boolean {
    return this.#inFlight >= this.#limits.maxInFlight || this.#inFlightBytes >= this.#limits.maxInFlightBytes;
  }

  #wakeUp(): void {
    const w = this.#wake;
    this.#wake = undefined;
    w?.();
  }

  #sleep(): Promise<void> {
    return new Promise((resolve) => {
      this.#wake = resolve;
    });
  }

  async #transmission(): Promise<void> {
    this.#inTransmission = true;
    const e = this.#export as ServedExport;
    debug('nbd: transmission on export %j (structured replies: %s)', e.name, this.#structured);
    const reader = this.#reader;
    let hard = false;
    for (;;) {
      while (this.#atBound() && !this.#stopping) await this.#sleep();
      if (this.#stopping) break;
      const hb = await reader.read(REQUEST_HEADER_SIZE);
      if (hb === undefined) {
        if (reader.buffered > 0) debug('nbd: connection ended inside a request header');
        break;
      }
      const h = decodeRequestHeader(hb);
      if (h.magic !== MAGIC.REQUEST) {
        debug('nbd: bad request magic 0x%s; closing', h.magic.toString(16));
        hard = true;
        break;
      }
      if (h.type === CMD.DISC) break;
      let payload: Buffer | undefined;
      if (h.type === CMD.WRITE) {
        if (h.length > e.blockSizes.maximum) {
          if (!(await reader.skip(h.length))) break;
        } else {
          payload = await reader.read(h.length);
          if (payload === undefined) {
            debug('nbd: connection ended inside a write payload');
            break;
          }
        }
      }
      this.#dispatch(e, h, payload);
    }
    reader.stop();
    if (hard) {
      this.#socket.destroy();
      return;
    }
    while (this.#inFlight > 0) await this.#sleep();
    this.#end();
  }

  /** Ends the socket gracefully; destroys it if the peer does not close in time. */
  #end(): void {
    this.#socket.end();
    this.#armCloseTimer();
  }

  #armCloseTimer(): void {
    if (this.#closeTimer !== undefined || this.#socket.destroyed) return;
    this.#closeTimer = setTimeout(() => this.#socket.destroy(), this.#limits.closeTimeoutMs).unref();
  }

  #dispatch(e: ServedExport, h: RequestHeader, payload: Buffer | undefined): void {
    const cost = h.type === CMD.READ || h.type === CMD.WRITE ? Math.min(h.length, e.blockSizes.maximum) : 0;
    this.#inFlight++;
    this.#inFlightBytes += cost;
    const started = requestChannel.hasSubscribers ? performance.now() : 0;
    void this.#serve(e, h, payload).then(({ reply, error }) => {
      if (payload !== undefined) this.#pool.release(payload);
      if (requestChannel.hasSubscribers) {
        const event: NbdRequestEvent = {
          export: e.name,
          command: commandName(h.type),
          flags: h.flags,
          offset: h.offset,
          length: h.length,
          error,
          durationMs: performance.now() - started,
        };
        requestChannel.publish(event);
      }
      // The slot is released once the reply has left for the kernel: a client that does
      // not read its replies stops the server from reading further requests.
      this.#socket.write(reply, () => {
        this.#pool.release(reply);
        this.#inFlight--;
        this.#inFlightBytes -= cost;
        this.#wakeUp();
      });
    });
  }

  async #serve(e: ServedExport, h: RequestHeader, payload: Buffer | undefined): Promise<{ reply: Buffer; error: number }> {
    try {
      if (h.type === CMD.READ) return { reply: await this.#read(e, h), error: 0 };
      await this.#command(e, h, payload);
      return { reply: encodeSimpleReply(h.cookie, 0), error: 0 };
    } catch (err) {
      const errno = err instanceof RequestError ? err.errno : nbdErrnoOf(err);
      const message = (err as Error)?.message ?? String(err);
      if (!(err instanceof RequestError)) debug('nbd: %s failed: %s', commandName(h.type), message);
      const reply = this.#structured ? encodeErrorChunk(h.cookie, errno, message) : encodeSimpleReply(h.cookie, errno);
      return { reply, error: errno };
    }
  }

  #checkFlags(h: RequestHeader, allowed: number): void {
    if ((h.flags & ~allowed) !== 0) {
      throw new RequestError(ERRNO.EINVAL, `Cannot serve ${commandName(h.type)}: command flags 0x${h.flags.toString(16)} not allowed`);
    }
  }

  #checkRange(e: ServedExport, h: RequestHeader, beyond: number): void {
    const verb = commandName(h.type);
    if (h.length === 0) throw new RequestError(ERRNO.EINVAL, `Cannot serve ${verb} at offset ${h.offset}: length is 0`);
    if (h.offset + h.length > e.device.size) {
      throw new RequestError(
        beyond,
        `Cannot serve ${verb} of ${h.length} bytes at offset ${h.offset}: export '${e.name}' ends at ${e.device.size}`,
      );
    }
  }

  #checkWritable(e: ServedExport, h: RequestHeader): void {
    if (e.device.readOnly) {
      throw new RequestError(ERRNO.EPERM, `Cannot serve ${commandName(h.type)}: export '${e.name}' is read-only`);
    }
  }

  async #read(e: ServedExport, h: RequestHeader): Promise<Buffer> {
    this.#checkFlags(h, CMD_FLAG.FUA | (this.#structured ? CMD_FLAG.DF : 0));
    if (h.length > e.blockSizes.maximum) {
      throw new RequestError(ERRNO.EOVERFLOW, `Cannot read ${h.length} bytes: more than the maximum ${e.blockSizes.maximum}`);
    }
    this.#checkRange(e, h, ERRNO.EINVAL);
    const start = this.#structured ? OFFSET_DATA_START : SIMPLE_REPLY_HEADER_SIZE;
    const reply = this.#pool.acquire(start + h.length);
    if (this.#structured) writeOffsetDataHeader(reply, h.cookie, h);
    else writeSimpleReplyHeader(reply, h.cookie, 0);
    try {
      await readRange(e, reply.subarray(start), h.offset);
    } catch (err) {
      this.#pool.release(reply);
      throw err;
    }
    return reply;
  }

  async #command(e: ServedExport, h: RequestHeader, payload: Buffer | undefined): Promise<void> {
    const dev = e.device;
    switch (h.type) {
      case CMD.WRITE:
        this.#checkWritable(e, h);
        this.#checkFlags(h, CMD_FLAG.FUA);
        if (payload === undefined) {
          throw new RequestError(ERRNO.EOVERFLOW, `Cannot write ${h.length} bytes: more than the maximum ${e.blockSizes.maximum}`);
        }
        this.#checkRange(e, h, ERRNO.ENOSPC);
        await writeRange(e, payload, h.offset);
        break;
      case CMD.FLUSH:
        this.#checkFlags(h, CMD_FLAG.FUA);
        if (h.offset !== 0 || h.length !== 0) {
          throw new RequestError(ERRNO.EINVAL, 'Cannot flush: offset and length must be 0');
        }
        if (!dev.readOnly) await dev.flush();
        return;
      case CMD.TRIM: {
        this.#checkWritable(e, h);
        this.#checkFlags(h, CMD_FLAG.FUA);
        this.#checkRange(e, h, ERRNO.ENOSPC);
        // Trim is advisory: only whole blocks inside the range are discarded.
        const a = e.blockSizes.minimum;
        const s = alignUp(h.offset, a);
        const t = alignDown(h.offset + h.length, a);
        if (s < t) await dev.trim(s, t - s);
        break;
      }
      case CMD.WRITE_ZEROES:
        this.#checkWritable(e, h);
        this.#checkFlags(h, CMD_FLAG.FUA | CMD_FLAG.NO_HOLE);
        this.#checkRange(e, h, ERRNO.ENOSPC);
        await zeroRange(e, h, (h.flags & CMD_FLAG.NO_HOLE) !== 0);
        break;
      default:
        throw new RequestError(ERRNO.EINVAL, `Cannot serve ${commandName(h.type)}: unknown or unsupported command`);
    }
    if ((h.flags & CMD_FLAG.FUA) !== 0) await dev.flush();
  }
}

/** Reads `dst.length` bytes at `offset`, widening to the export's alignment when needed. */
async function readRange(e: ServedExport, dst: Uint8Array, offset: number): Promise<void> {
  const a = e.blockSizes.minimum;
  const end = offset + dst.length;
  if (offset % a === 0 && dst.length % a === 0) {
    const n = await e.device.readAt(dst, offset);
    if (n !== dst.length) throw shortRead(e, { offset, wanted: dst.length }, n);
    return;
  }
  const a0 = alignDown(offset, a);
  const tmp = new Uint8Array(alignUp(end, a) - a0);
  const n = await e.device.readAt(tmp, a0);
  if (n < end - a0) throw shortRead(e, { offset: a0, wanted: tmp.length }, n);
  dst.set(tmp.subarray(offset - a0, end - a0));
}

function shortRead(e: ServedExport, at: { offset: number; wanted: number }, got: number): Error {
  return new DataCorruptionError(
    `Cannot read ${at.wanted} bytes at offset ${at.offset} of export '${e.name}': device returned ${got} bytes`,
  );
}

/**
 * Writes `src` at `offset`. Partial blocks at either end are read, patched and written
 * back as whole blocks, serialised per export so two unaligned writes sharing a block
 * cannot lose each other's bytes.
 */
async function writeRange(e: ServedExport, src: Uint8Array, offset: number): Promise<void> {
  const a = e.blockSizes.minimum;
  const end = offset + src.length;
  if (offset % a === 0 && src.length % a === 0) {
    await e.device.writeAt(src, offset);
    return;
  }
  const a0 = alignDown(offset, a);
  const a1 = alignUp(end, a);
  if (a1 > e.device.size) {
    throw new InvalidArgumentError(
      `Cannot write ${src.length} bytes at offset ${offset}: the last block of export '${e.name}' is partial`,
    );
  }
  await e.rmwLock.run(async () => {
    const tmp = new Uint8Array(a1 - a0);
    if (a0 !== offset) await readEdge(e, tmp.subarray(0, a), a0);
    if (a1 !== end && (a1 - a > a0 || a0 === offset)) await readEdge(e, tmp.subarray(tmp.length - a), a1 - a);
    tmp.set(src, offset - a0);
    await e.device.writeAt(tmp, a0);
  });
}

async function readEdge(e: ServedExport, dst: Uint8Array, offset: number): Promise<void> {
  const n = await e.device.readAt(dst, offset);
  if (n !== dst.length) throw shortRead(e, { offset, wanted: dst.length }, n);
}

/** WRITE_ZEROES: explicit zeros at partial edges; whole blocks trimmed, or written when `noHole`. */
async function zeroRange(e: ServedExport, h: RequestHeader, noHole: boolean): Promise<void> {
  const a = e.blockSizes.minimum;
  const end = h.offset + h.length;
  const s = alignUp(h.offset, a);
  const t = alignDown(end, a);
  if (s >= t) {
    await writeRange(e, new Uint8Array(h.length), h.offset);
    return;
  }
  if (h.offset < s) await writeRange(e, new Uint8Array(s - h.offset), h.offset);
  if (t < end) await writeRange(e, new Uint8Array(end - t), t);
  if (!noHole) {
    await e.device.trim(s, t - s);
    return;
  }
  for (let at = s; at < t; at += ZERO_CHUNK) {
    await e.device.writeAt(new Uint8Array(Math.min(ZERO_CHUNK, t - at)), at);
  }
}
