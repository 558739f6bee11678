/**
 * Serves a BlockDevice on an already open `/dev/fuse` fd, whoever mounted it: the
 * server half of `serveFuse`, and what a restartable serving process runs on the fd it
 * inherits from its supervisor (README.md, "Surviving a restart of the serving process").
 *
 * Threads: K reader workers block in `read(2)` on the fd and answer metadata requests
 * themselves; READ/WRITE/FSYNC/FALLOCATE go to this (the serving) thread, which owns
 * the device, runs the async device call on the worker's shared buffer in place and
 * wakes the worker, which writes the reply. Nothing touches the libuv pool.
 *
 * A server that takes over a connection from a dead one passes `initialized` (the INIT
 * reply the kernel got; it sends INIT once per connection) and `resend: true`: before the
 * readers start, it writes FUSE_NOTIFY_RESEND, and the kernel queues again every request
 * the dead server had read but not answered.
 *
 * @example
 * ```ts
 * const fuse = await openFuse(dir);
 * const service = await serveFuseFd(device, { fd: fuse.fd, config: fuseFileConfig(device) });
 * await fuse.mount({ readOnly: device.readOnly });
 * await service.initialized;
 * ```
 */
import { writeSync } from 'node:fs';
import type { Worker } from 'node:worker_threads';
import { debuglog } from 'node:util';
import type { BlockDevice } from '../io/block-device.ts';
import { InvalidArgumentError } from '../io/errors.ts';
import { runDeviceOp } from './_device-op.ts';
import { AlignedAccess } from './_aligned-access.ts';
import { bundleModule, prepareWorkers, startWorker } from './_start-worker.ts';
import { NativeServer } from './_native-server.ts';
import { CTL_BYTES, CTL_F64_AT, Ctl, CtlF64, SHARED_BYTES, Shared, SlotState } from './_channel.ts';
import type { ReaderAssignment, WorkerInit, WorkerLocalReads, WorkerMessage } from './_channel.ts';
import { DEFAULT_MAX_IO, FUSE_PAGE_SIZE } from './request-handler.ts';
import type { FuseFileConfig } from './request-handler.ts';
import { OUT_HEADER_SIZE, encodeNotifyResend, viewOf } from './protocol.ts';
import type { InitOut } from './protocol.ts';

const log = debuglog('obd');
/** `obd:fuse:request` — one message per device request: `{ op, offset, length, result, ms }`. */
/**
 * Fewest native READ threads: a thread waits for the disk while its layer bytes are not
 * in the page cache, so reads in flight ≤ threads; 32 matches loop at qd32 (README.md).
 */
const NATIVE_MIN_THREADS = 32;
/** Reader threads of a server when its options do not say. */
export const DEFAULT_READERS = 4;

/** Options of {@link serveFuseFd}. */
export interface ServeFuseFdOptions {
  /** An open `/dev/fuse` fd; not closed by the server. */
  fd: number;
  /** The served file; every server of one connection must use the same. */
  config: FuseFileConfig;
  /** Reader threads (= device requests in flight). Default 4; the native READ path runs at least 32. */
  workers?: number;
  /** Alignment the device requires; unaligned requests are widened. Default 512. */
  alignment?: number;
  /** Log every request with `NODE_DEBUG=obd`. Device errors are always logged there. */
  debug?: boolean;
  /** The INIT reply an earlier server of this connection sent (the kernel sends INIT once). */
  initialized?: InitOut;
  /** Write FUSE_NOTIFY_RESEND before the readers start (taking over from a dead server). */
  resend?: boolean;
  /**
   * Read-only devices: every reader thread opens its own copy of the device through this
   * module and answers READ itself, without handing it to the serving thread (the
   * hand-off costs two cross-thread wake-ups per request). `device` still serves
   * whatever a reader cannot.
   */
  localReads?: FuseLocalReads;
}

/**
 * A module each reader thread loads to open its own read-only copy of the device. Its
 * reads should end in synchronous `pread`s: the thread has nothing else to do meanwhile,
 * and no other thread needs waking.
 */
export interface FuseLocalReads {
  /** URL of an ES module (a .ts file when running from source: bundled for the threads). */
  module: string;
  /** The export to call: `(args) => Promise<BlockDevice>`. Default `openReadDevice`. */
  exportName?: string;
  /** Its argument; must survive structured cloning. */
  args: unknown;
  /**
   * The device flattened for the native READ path: when given (and the native binding
   * loads), C threads serve the connection instead of the reader workers and answer
   * aligned READs from this table; every other request (and any READ they cannot
   * serve) is answered on the serving thread with `device`. `module` is then unused.
   */
  extents?: FuseExtentTable;
}

/**
 * What each sector range of a read-only device reads from — the merged index of an
 * LSMT stack over local files, resolved down to file bytes — for the native READ path.
 * Extents are sorted and do not overlap; a gap reads as zeros.
 */
export interface FuseExtentTable {
  /** First sector (512 bytes) of each extent. */
  offset: Float64Array;
  /** Sectors of each extent. */
  length: Uint32Array;
  /** Sector in the source where the extent's bytes start. */
  moffset: Float64Array;
  /** 1: the extent reads as zeros. */
  zeroed: Uint8Array;
  /** Index into `sources`. */
  source: Uint8Array;
  sources: FuseExtentSource[];
}

/** A source of {@link FuseExtentTable}: plain bytes at `base` of a file, or a ZFile there. */
export interface FuseExtentSource {
  path: string;
  /** The size the file must have (checked when the server starts). */
  fileSize: number;
  /** File offset of the source's first byte (after a tar wrapper's headers). */
  base: number;
  /** The source is a ZFile: its decoded bytes are what extents address. */
  zfile?: {
    algorithm: 'lz4' | 'zstd';
    blockSize: number;
    /** Blocks end with a CRC-32C. */
    verify: boolean;
    /** Decoded size. */
    size: number;
    /** Block i is stored at [starts[i], starts[i+1]) from `base`; block count + 1 entries. */
    starts: Float64Array;
  };
}

/**
 * Why a server ended: `unmounted` — a reader saw ENODEV (the connection was unmounted
 * or aborted: it is over); `stopped` — {@link FuseService.stop}; `failed` — every reader
 * failed (the connection may still be alive).
 */
export type FuseServiceEnd = 'unmounted' | 'stopped' | 'failed';

/** A running server. */
export interface FuseService {
  /** Resolves with INIT's reply once answered (at once with `initialized`), or undefined if the readers stopped first. */
  readonly initialized: Promise<InitOut | undefined>;
  /** Resolves when every reader has exited. Never rejects. */
  readonly done: Promise<FuseServiceEnd>;
  /** Resolves when every reader thread is running (about to read requests), or when they all exited. */
  readonly ready: Promise<void>;
  /**
   * Makes every reader stop at its next chance (waiting for the mount or for the
   * device). A reader blocked in `read(2)` leaves only with a request or ENODEV.
   */
  stop(): void;
}

/** The description of the file a device is served as (node 2 in the mount root). */
export function fuseFileConfig(device: { size: number; readOnly: boolean }, options: { name?: string; directIo?: boolean } = {}): FuseFileConfig {
  return {
    name: options.name ?? 'block',
    size: device.size,
    readOnly: device.readOnly,
    directIo: options.directIo ?? true,
    uid: process.getuid?.() ?? 0,
    gid: process.getgid?.() ?? 0,
    time: Math.floor(Date.now() / 1000),
    maxIo: DEFAULT_MAX_IO,
  };
}

interface Channel {
  bytes: Uint8Array;
  ctl: Int32Array;
  f64: Float64Array;
}

class FdServer implements FuseService {
  readonly initialized: Promise<InitOut | undefined>;
  readonly done: Promise<FuseServiceEnd>;
  readonly ready: Promise<void>;
  readonly #fd: number;
  readonly #config: FuseFileConfig;
  readonly #access: AlignedAccess;
  readonly #shared = new Int32Array(new SharedArrayBuffer(SHARED_BYTES));
  readonly #channels: Channel[] = [];
  #resolveDone: (end: FuseServiceEnd) => void = () => {};
  readonly #ends = new Set<string>();
  #resolveInit: (init: InitOut | undefined) => void = () => {};
  #resolveReady: () => void = () => {};
  #running = 0;
  #readers = 0;
  #count = 0;

  constructor(device: BlockDevice, options: { fd: number; config: FuseFileConfig; alignment: number; initialized: InitOut | undefined }) {
    this.#fd = options.fd;
    this.#config = options.config;
    this.#access = new AlignedAccess(device, options.alignment);
    this.done = new Promise((resolve) => (this.#resolveDone = resolve));
    this.initialized = new Promise((resolve) => (this.#resolveInit = resolve));
    this.ready = new Promise((resolve) => (this.#resolveReady = resolve));
    if (options.initialized !== undefined) this.#resolveInit(options.initialized);
    void this.done.then(() => {
      this.#resolveInit(undefined);
      this.#resolveReady();
    });
  }

  stop(): void {
    Atomics.store(this.#shared, Shared.STOP, 1);
  }

  async start(count: number, options: { debug: boolean; initialized: InitOut | undefined; alignment: number; localReads: WorkerLocalReads | undefined }): Promise<void> {
    const slotBytes = (this.#config.maxIo ?? DEFAULT_MAX_IO) + FUSE_PAGE_SIZE;
    const shared = this.#shared.buffer as SharedArrayBuffer;
    this.#running = count; // Counted up front: an early exit must not look like the last one.
    this.#count = count;
    const exited = (): void => {
      if (--this.#running > 0) return;
      this.#resolveDone(this.#ends.has('unmounted') ? 'unmounted' : this.#ends.has('stopped') ? 'stopped' : 'failed');
    };
    for (let index = 0; index < count; index++) {
      const slot = new SharedArrayBuffer(slotBytes);
      const ctl = new SharedArrayBuffer(CTL_BYTES);
      this.#channels.push({ bytes: new Uint8Array(slot), ctl: new Int32Array(ctl, 0, 4), f64: new Float64Array(ctl, CTL_F64_AT, 2) });
      const init: WorkerInit = {
        fd: this.#fd,
        index,
        slot,
        ctl,
        shared,
        config: this.#config,
        trace: options.debug,
        alignment: options.alignment,
        ...(options.initialized !== undefined ? { initialized: options.initialized } : {}),
        ...(options.localReads !== undefined ? { localReads: options.localReads } : {}),
      };
      let worker;
      try {
        worker = adoptParkedReader(init) ?? (await startWorker(init));
      } catch (e) {
        this.stop();
        this.#ends.add('stopped');
        for (let i = index; i < count; i++) exited();
        throw e;
      }
      worker.on('message', (m: WorkerMessage) => this.#onMessage(m));
      worker.on('error', (e) => log('fuse: reader %d failed: %s', index, e.message));
      worker.on('exit', exited);
    }
  }

  #onMessage(m: WorkerMessage): void {
    if (typeof m === 'number') {
      void this.#run(m);
    } else if (m.t === 'init') {
      this.#resolveInit(m.init);
    } else if (m.t === 'ready') {
      if (++this.#readers === this.#count) this.#resolveReady();
    } else if (m.t === 'log') {
      log('%s', m.text);
    } else if (m.t === 'exit') {
      this.#ends.add(m.reason.startsWith('failed') ? 'failed' : m.reason);
      if (m.reason.startsWith('failed')) log('fuse: reader %s', m.reason);
    }
  }

  async #run(index: number): Promise<void> {
    const ch = this.#channels[index] as Channel;
    const code = ch.ctl[Ctl.CODE] as number;
    const dataAt = ch.ctl[Ctl.DATA_AT] as number;
    const offset = ch.f64[CtlF64.OFFSET] as number;
    const length = ch.f64[CtlF64.LENGTH] as number;
    const result = await runDeviceOp(this.#access, { code, offset, length, data: ch.bytes.subarray(dataAt, dataAt + length) });
    ch.ctl[Ctl.RESULT] = result;
    Atomics.store(ch.ctl, Ctl.STATE, SlotState.DONE);
    Atomics.notify(ch.ctl, Ctl.STATE);
  }
}

/**
 * Loads what the reader threads need ahead of time (and, from source, bundles the
 * local-reads `modules` they will load), so that a later {@link serveFuseFd} starts
 * them quickly. With `parked: N` it also starts N reader threads that wait for a
 * {@link serveFuseFd} of this process to adopt them: a thread's start (a V8 isolate and
 * node's bootstrap, 0.3–0.9 s of CPU on a small machine) then lies before the device is
 * needed, not on a container's start path.
 */
export async function prepareFuseReaders(modules: readonly string[] = [], options: { parked?: number } = {}): Promise<void> {
  await Promise.all([prepareWorkers(), ...modules.map((m) => bundleModule(m))]);
  const want = Math.min(options.parked ?? 0, 64);
  while (parkedReaders.length < want) {
    const worker = await startWorker({ parked: true });
    const forget = (): void => {
      const i = parkedReaders.indexOf(worker);
      if (i >= 0) parkedReaders.splice(i, 1);
    };
    worker.on('error', (e) => log('fuse: parked reader failed: %s', e.message));
    worker.once('exit', forget);
    // Idle until adopted: it must not keep the process alive.
    worker.unref();
    parkedReaders.push(worker);
  }
}

/** Reader threads started ahead of need by {@link prepareFuseReaders}, booting or waiting for their assignment. */
const parkedReaders: Worker[] = [];

/** How many parked reader threads wait to be adopted. */
export function parkedReaderCount(): number {
  return parkedReaders.length;
}

/** A parked reader, given `init` to serve; undefined when none is left. */
function adoptParkedReader(init: WorkerInit): Worker | undefined {
  const worker = parkedReaders.shift();
  if (worker === undefined) return undefined;
  worker.ref();
  const assignment: ReaderAssignment = { t: 'assign', init };
  worker.postMessage(assignment);
  return worker;
}

/** Ends the parked readers nobody adopted (e.g. the native READ path serves instead). */
export async function releaseParkedReaders(): Promise<void> {
  const all = parkedReaders.splice(0);
  await Promise.all(all.map((w) => w.terminate()));
}

/**
 * Writes FUSE_NOTIFY_RESEND on `fd`: the kernel (≥ 6.9) queues again every request read
 * from this connection but not answered, with bit 63 of `unique` set. Returns false
 * (and logs) when the kernel refuses it.
 */
export function notifyResend(fd: number): boolean {
  const bytes = new Uint8Array(OUT_HEADER_SIZE);
  const n = encodeNotifyResend(viewOf(bytes));
  try {
    writeSync(fd, bytes, 0, n);
    return true;
  } catch (e) {
    log('fuse: FUSE_NOTIFY_RESEND refused: %s', (e as Error).message);
    return false;
  }
}

/**
 * Starts the reader threads on `options.fd` and serves `device` until the connection
 * ends (ENODEV: unmounted or aborted) or {@link FuseService.stop}. Rejects with
 * `InvalidArgumentError` for bad options; when a reader cannot start, the others stop.
 */
export async function serveFuseFd(device: BlockDevice, options: ServeFuseFdOptions): Promise<FuseService> {
  const workers = options.workers ?? DEFAULT_READERS;
  if (!Number.isSafeInteger(workers) || workers < 1 || workers > 64) {
    throw new InvalidArgumentError(`Cannot serve FUSE: workers ${workers} is not between 1 and 64`);
  }
  const alignment = options.alignment ?? 512;
  if (!Number.isSafeInteger(alignment) || alignment < 1) {
    throw new InvalidArgumentError(`Cannot serve FUSE: alignment ${alignment} is not a positive integer`);
  }
  if (options.config.size !== device.size || options.config.readOnly !== device.readOnly) {
    throw new InvalidArgumentError(
      `Cannot serve FUSE: the device (${device.size} bytes${device.readOnly ? ', read-only' : ''}) does not match the served file (${options.config.size} bytes${options.config.readOnly ? ', read-only' : ''})`,
    );
  }
  let localReads: WorkerLocalReads | undefined;
  if (options.localReads !== undefined) {
    if (!device.readOnly) throw new InvalidArgumentError('Cannot serve FUSE: local reads need a read-only device');
    const extents = options.localReads.extents;
    if (extents !== undefined && (await NativeServer.available())) {
      const server = new NativeServer(device, { fd: options.fd, config: options.config, alignment, initialized: options.initialized, debug: options.debug ?? false });
      try {
        server.prepare(extents);
        await releaseParkedReaders();
        // Before any reader runs: the kernel requeues what a dead server had read.
        if (options.resend === true) notifyResend(options.fd);
        server.start(Math.max(workers, NATIVE_MIN_THREADS));
        return server;
      } catch (e) {
        // A table that does not match its files (replaced, truncated): the reader workers open the layers themselves.
        log('fuse: no native READ path, using reader threads: %s', (e as Error).message);
      }
    }
    const { module, exportName, args } = options.localReads;
    const code = await bundleModule(module);
    localReads = { module, exportName: exportName ?? 'openReadDevice', args, ...(code !== undefined ? { code } : {}) };
  }
  const server = new FdServer(device, { fd: options.fd, config: options.config, alignment, initialized: options.initialized });
  if (options.resend === true) notifyResend(options.fd);
  await server.start(workers, { debug: options.debug ?? false, initialized: options.initialized, alignment, localReads });
  return server;
}
