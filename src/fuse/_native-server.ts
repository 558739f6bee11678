/**
 * The native READ path of `serveFuseFd` (README.md, "Native READ path"): C threads
 * (`fuseServeStart` in `native/obd-native.c`) read `/dev/fuse` and answer every aligned
 * READ of a read-only device from a {@link FuseExtentTable}; whatever they hand over
 * (metadata requests, unaligned reads, reads that failed there) is answered here, on the
 * serving thread, with the `FuseRequestHandler` and the device — the same code the
 * reader workers run, so replies are identical.
 */
import { closeSync, fstatSync, openSync, writeSync } from 'node:fs';
import { constants } from 'node:os';
import { debuglog } from 'node:util';
import type { BlockDevice } from '../io/block-device.ts';
import { FailedPreconditionError } from '../io/errors.ts';
import type { NativeBinding, NativeFuseHandle } from '../native/index.ts';
import { AlignedAccess } from './_aligned-access.ts';
import { runDeviceOp } from './_device-op.ts';
import { DEFAULT_MAX_IO, FuseRequestHandler, READ_DATA_AT } from './request-handler.ts';
import type { DeviceRequest, FuseFileConfig } from './request-handler.ts';
import { Opcode, opcodeName } from './protocol.ts';
import type { InitOut } from './protocol.ts';
import type { FuseExtentTable, FuseService, FuseServiceEnd } from './serve-fuse-fd.ts';

const log = debuglog('obd');
const E = constants.errno;
const ENDS: FuseServiceEnd[] = ['unmounted', 'stopped', 'failed'];
const ALGO = { lz4: 1, zstd: 2 } as const;

let binding: NativeBinding | null | undefined;

async function loadBinding(): Promise<NativeBinding | null> {
  try {
    const { native } = await import('../native/index.ts');
    return typeof native.fuseServeStart === 'function' ? native : null;
  } catch (e) {
    log('fuse: native READ path unavailable: %s', (e as Error).message);
    return null;
  }
}

/** The table in the flat form `fuseServeStart` takes; opens the source files (caller closes `fds`). */
function pack(table: FuseExtentTable): { extents: Float64Array; sources: Float64Array; starts: Float64Array; fds: number[] } {
  const n = table.offset.length;
  const extents = new Float64Array(5 * n);
  for (let i = 0; i < n; i++) {
    extents[5 * i] = table.offset[i] as number;
    extents[5 * i + 1] = table.length[i] as number;
    extents[5 * i + 2] = table.moffset[i] as number;
    extents[5 * i + 3] = table.zeroed[i] as number;
    extents[5 * i + 4] = table.source[i] as number;
  }
  const sources = new Float64Array(7 * table.sources.length);
  let startCount = 0;
  for (const s of table.sources) if (s.zfile !== undefined) startCount += s.zfile.starts.length;
  const starts = new Float64Array(startCount);
  const fds: number[] = [];
  try {
    let at = 0;
    for (const [i, s] of table.sources.entries()) {
      const fd = openSync(s.path, 'r');
      fds.push(fd);
      const size = fstatSync(fd).size;
      if (size !== s.fileSize) throw new FailedPreconditionError(`Cannot serve reads from ${s.path}: it has ${size} bytes, not ${s.fileSize}`);
      const z = s.zfile;
      sources.set([fd, s.base, z === undefined ? 0 : ALGO[z.algorithm], z?.blockSize ?? 0, z?.verify === true ? 1 : 0, z?.size ?? 0, z === undefined ? 0 : z.starts.length - 1], 7 * i);
      if (z !== undefined) {
        starts.set(z.starts, at);
        at += z.starts.length;
      }
    }
  } catch (e) {
    for (const fd of fds) closeSync(fd);
    throw e;
  }
  return { extents, sources, starts, fds };
}

/** A FuseService whose READs C threads answer; see the module comment. */
export class NativeServer implements FuseService {
  readonly initialized: Promise<InitOut | undefined>;
  readonly done: Promise<FuseServiceEnd>;
  readonly ready: Promise<void>;
  readonly #fd: number;
  readonly #maxIo: number;
  readonly #size: number;
  readonly #trace: boolean;
  readonly #access: AlignedAccess;
  readonly #handler: FuseRequestHandler;
  #handle: NativeFuseHandle | undefined;
  #packed: ReturnType<typeof pack> | undefined;
  #resolveDone: (end: FuseServiceEnd) => void = () => {};
  #resolveInit: (init: InitOut | undefined) => void = () => {};
  #ended = false;

  /**
   * Loads the binding once; true when it has the native READ path. Call before
   * constructing a NativeServer.
   */
  static async available(): Promise<boolean> {
    binding ??= await loadBinding();
    return binding !== null;
  }

  constructor(device: BlockDevice, options: { fd: number; config: FuseFileConfig; alignment: number; initialized: InitOut | undefined; debug: boolean }) {
    this.#fd = options.fd;
    this.#maxIo = options.config.maxIo ?? DEFAULT_MAX_IO;
    this.#size = options.config.size;
    this.#trace = options.debug;
    this.#access = new AlignedAccess(device, options.alignment);
    this.#handler = new FuseRequestHandler(options.config, options.initialized !== undefined ? { negotiated: options.initialized } : {});
    this.done = new Promise((resolve) => (this.#resolveDone = resolve));
    this.initialized = new Promise((resolve) => (this.#resolveInit = resolve));
    this.ready = Promise.resolve();
    if (options.initialized !== undefined) this.#resolveInit(options.initialized);
    void this.done.then(() => this.#resolveInit(undefined));
  }

  /** Opens and checks the table's files; throws when they do not match it. Call once, before {@link start}. */
  prepare(table: FuseExtentTable): void {
    this.#packed = pack(table);
  }

  /** Starts `threads` C threads on the prepared table. */
  start(threads: number): void {
    const native = binding;
    const packed = this.#packed;
    if (native === undefined || native === null || packed === undefined) throw new TypeError('NativeServer needs available() and prepare() before start()');
    this.#packed = undefined;
    const { extents, sources, starts, fds } = packed;
    try {
      const params = Float64Array.of(this.#fd, threads, this.#size, this.#maxIo);
      this.#handle = native.fuseServeStart(params, extents, sources, starts, (kind, arg) => this.#onEvent(kind, arg));
    } finally {
      for (const fd of fds) closeSync(fd); // the threads hold duplicates
    }
  }

  stop(): void {
    if (this.#handle !== undefined) binding?.fuseServeStop(this.#handle);
  }

  /** [READs the C threads answered, requests they handed to this thread]. */
  stats(): [number, number] {
    return this.#handle !== undefined && binding ? binding.fuseServeStats(this.#handle) : [0, 0];
  }

  #onEvent(kind: number, arg: Uint8Array | number | string): void {
    if (kind === 0 && arg instanceof Uint8Array) {
      this.#serve(arg).catch((e: unknown) => log('fuse: cannot answer a request: %s', (e as Error).message));
    } else if (kind === 1) {
      this.#ended = true;
      this.#resolveDone(ENDS[arg as number] ?? 'failed');
    } else {
      log('%s', String(arg));
    }
  }

  async #serve(request: Uint8Array): Promise<void> {
    const n = request.length;
    const view = new DataView(request.buffer, request.byteOffset, n);
    const opcode = view.getUint32(4, true);
    if (this.#trace) log('fuse[native]: %s (%d bytes)', opcodeName(opcode), n);
    if ((view.getUint32(12, true) & 0x80000000) !== 0) log('fuse: serving a resent %s', opcodeName(opcode));
    // A READ needs room for its data after the out header (the reply is built in place).
    let buf = request;
    if (opcode === Opcode.READ && n < READ_DATA_AT + this.#maxIo) {
      buf = new Uint8Array(READ_DATA_AT + this.#maxIo);
      buf.set(request);
    }
    const action = this.#handler.handle(buf, n);
    if (action.kind === 'none') return;
    if (action.kind === 'reply') {
      this.#write(action.bytes);
      if (opcode === Opcode.INIT && this.#handler.negotiated !== undefined) this.#resolveInit(this.#handler.negotiated);
      return;
    }
    const result = await this.#run(action.request, buf);
    this.#write(this.#handler.complete(action.request, result, buf));
  }

  async #run(request: DeviceRequest, buf: Uint8Array): Promise<number> {
    const { code, offset, length, dataAt } = request;
    return runDeviceOp(this.#access, { code, offset, length, data: buf.subarray(dataAt, dataAt + length) });
  }

  #write(bytes: Uint8Array): void {
    if (this.#ended) return; // the fd may be closed (or reused) by now
    try {
      writeSync(this.#fd, bytes, 0, bytes.length);
    } catch (e) {
      const errno = Math.abs(Number((e as { errno?: unknown }).errno ?? E.EIO));
      // ENODEV: the connection is gone (the threads see it too); ENOENT: the request was interrupted.
      if (errno !== E.ENODEV && errno !== E.ENOENT) log('fuse: cannot write a reply: %s', (e as Error).message);
    }
  }
}
