/**
 * A FUSE reader thread: blocks in `read(2)` on `/dev/fuse`, answers metadata requests
 * itself, hands data requests to the serving thread (see `_channel.ts`) and writes every
 * reply with one `write(2)`. Runs as a worker_threads entry point; never on the libuv
 * pool, whose 4 threads a blocking device read would starve (platform notes).
 *
 * With local reads (a read-only device), the thread opens its own copy of the device
 * from the module named in `workerData` and serves READ itself: no hand-off, no wake-up
 * of another thread. The module's reads are meant to be synchronous underneath (sync
 * `pread`), so awaiting them only runs microtasks; if the copy cannot be opened, READ
 * goes to the serving thread like everything else.
 *
 * A parked reader (workerData `{ parked: true }`, see `prepareFuseReaders`) boots with
 * nothing to serve and takes its `WorkerInit` from the serving thread's first message.
 *
 * Exit: ENODEV from read or write (unmounted or aborted), or the shared STOP flag while
 * waiting for the mount (reads fail with EPERM until it attaches) or for the serving
 * thread.
 */
import { readSync, writeSync } from 'node:fs';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import { parentPort, workerData } from 'node:worker_threads';
import { constants } from 'node:os';
import type { BlockDevice } from '../io/block-device.ts';
import { CTL_F64_AT, Ctl, CtlF64, Shared, SlotState } from './_channel.ts';
import { isParked } from './_channel.ts';
import type { ReaderAssignment, WorkerData, WorkerInit, WorkerMessage } from './_channel.ts';
import { AlignedAccess } from './_aligned-access.ts';
import { errnoFor } from './_errno.ts';
import { DeviceOpCode, FuseRequestHandler } from './request-handler.ts';
import type { DeviceRequest } from './request-handler.ts';
import { Opcode, opcodeName, viewOf } from './protocol.ts';

const E = constants.errno;
const MOUNT_POLL_MS = 2;
const SERVE_POLL_MS = 200;

const port = parentPort;
if (port === null) throw new TypeError('Cannot start the FUSE reader: not running in a worker thread');

const post = (m: WorkerMessage): void => port.postMessage(m);
const nap = new Int32Array(new SharedArrayBuffer(4));
// Set by begin(): from workerData, or from the serving thread's first message when parked.
let init!: WorkerInit;
let slot!: Uint8Array;
let slotView!: DataView;
let ctl!: Int32Array;
let ctlF64!: Float64Array;
let shared!: Int32Array;
let handler!: FuseRequestHandler;

function stopped(): boolean {
  return Atomics.load(shared, Shared.STOP) !== 0;
}

function errnoOf(e: unknown): number {
  const errno = (e as { errno?: unknown }).errno;
  return typeof errno === 'number' ? Math.abs(errno) : E.EIO;
}

/** Reads one request; returns its length, 0 to retry, -1 to exit. */
function readRequest(): number {
  try {
    return readSync(init.fd, slot, 0, slot.length, null);
  } catch (e) {
    const errno = errnoOf(e);
    if (errno === E.ENODEV) return -1;
    if (errno === E.EPERM) {
      // Not mounted yet (or never will be: the STOP flag says so).
      if (stopped()) return -1;
      Atomics.wait(nap, 0, 0, MOUNT_POLL_MS);
      return 0;
    }
    // ENOENT: the request was interrupted while being read; EINTR/EAGAIN: retry.
    if (errno === E.ENOENT || errno === E.EINTR || errno === E.EAGAIN) return 0;
    throw e;
  }
}

/** Writes a reply; false once the connection is gone. */
function writeReply(bytes: Uint8Array): boolean {
  try {
    writeSync(init.fd, bytes, 0, bytes.length);
    return true;
  } catch (e) {
    const errno = errnoOf(e);
    if (errno === E.ENODEV) return false;
    // ENOENT: the request was aborted or interrupted meanwhile; nobody waits for it.
    if (errno !== E.ENOENT) post({ t: 'log', text: `fuse: cannot write a reply: ${(e as Error).message}` });
    return true;
  }
}

/** Hands `request` to the serving thread and waits; returns its result or undefined on STOP. */
function runOnDevice(request: DeviceRequest): number | undefined {
  ctl[Ctl.CODE] = request.code;
  ctl[Ctl.DATA_AT] = request.dataAt;
  ctl[Ctl.RESULT] = 0;
  ctlF64[CtlF64.OFFSET] = request.offset;
  ctlF64[CtlF64.LENGTH] = request.length;
  Atomics.store(ctl, Ctl.STATE, SlotState.PENDING);
  post(init.index);
  while (Atomics.load(ctl, Ctl.STATE) === SlotState.PENDING) {
    Atomics.wait(ctl, Ctl.STATE, SlotState.PENDING, SERVE_POLL_MS);
    if (Atomics.load(ctl, Ctl.STATE) === SlotState.PENDING && stopped()) return undefined;
  }
  const result = ctl[Ctl.RESULT] as number;
  Atomics.store(ctl, Ctl.STATE, SlotState.IDLE);
  return result;
}

/** Opens this thread's own copy of the device, or undefined (READ then goes to the serving thread). */
async function openLocalReads(): Promise<{ access: AlignedAccess; device: BlockDevice } | undefined> {
  const spec = init.localReads;
  if (spec === undefined) return undefined;
  try {
    let mod: Record<string, unknown>;
    if (spec.code !== undefined) {
      // The CommonJS bundle of the module (run from source); its only requires are node builtins.
      const m = { exports: {} as Record<string, unknown> };
      const require = createRequire(pathToFileURL(`${process.cwd()}/`).href);
      new Function('module', 'exports', 'require', spec.code)(m, m.exports, require);
      mod = m.exports;
    } else {
      mod = (await import(spec.module)) as Record<string, unknown>;
    }
    const open = mod[spec.exportName];
    if (typeof open !== 'function') throw new TypeError(`${spec.module} exports no function ${spec.exportName}`);
    const device = (await open(spec.args)) as BlockDevice;
    if (device.size !== init.config.size) {
      await device.close();
      throw new RangeError(`its copy of the device has ${device.size} bytes, not ${init.config.size}`);
    }
    return { access: new AlignedAccess(device, init.alignment), device };
  } catch (e) {
    post({ t: 'log', text: `fuse[${init.index}]: cannot serve reads locally, handing them over: ${(e as Error).message}` });
    return undefined;
  }
}

async function readLocally(access: AlignedAccess, request: DeviceRequest): Promise<number> {
  try {
    return await access.read(slot.subarray(request.dataAt, request.dataAt + request.length), request.offset);
  } catch (e) {
    post({ t: 'log', text: `fuse: READ of ${request.length} bytes at ${request.offset} failed: ${(e as Error).message}` });
    return -errnoFor(e, DeviceOpCode.READ);
  }
}

async function serve(): Promise<string> {
  const local = await openLocalReads();
  post({ t: 'ready' });
  try {
    for (;;) {
      const n = readRequest();
      if (n < 0) return stopped() ? 'stopped' : 'unmounted';
      if (n === 0) continue;
      const opcode = slotView.getUint32(4, true);
      if (init.trace) post({ t: 'log', text: `fuse[${init.index}]: ${opcodeName(opcode)} (${n} bytes)` });
      // Bit 63 of `unique` (FUSE_UNIQUE_RESEND): an earlier server read this request and died.
      if ((slotView.getUint32(12, true) & 0x80000000) !== 0) post({ t: 'log', text: `fuse: serving a resent ${opcodeName(opcode)}` });
      const action = handler.handle(slot, n);
      if (action.kind === 'none') continue;
      let reply: Uint8Array;
      if (action.kind === 'reply') {
        reply = action.bytes;
      } else {
        const request = action.request;
        const result = local !== undefined && request.code === DeviceOpCode.READ ? await readLocally(local.access, request) : runOnDevice(request);
        if (result === undefined) return 'stopped';
        reply = handler.complete(request, result, slot);
      }
      if (!writeReply(reply)) return 'unmounted';
      if (opcode === Opcode.INIT && handler.negotiated !== undefined) post({ t: 'init', init: handler.negotiated });
    }
  } finally {
    await local?.device.close().catch(() => {});
  }
}

function begin(data: WorkerInit): void {
  init = data;
  slot = new Uint8Array(init.slot);
  slotView = viewOf(slot);
  ctl = new Int32Array(init.ctl, 0, 4);
  ctlF64 = new Float64Array(init.ctl, CTL_F64_AT, 2);
  shared = new Int32Array(init.shared);
  handler = new FuseRequestHandler(init.config, init.initialized !== undefined ? { negotiated: init.initialized } : {});
  serve().then(
    (reason) => post({ t: 'exit', reason }),
    (e: unknown) => post({ t: 'exit', reason: `failed: ${(e as Error).message}` }),
  );
}

const data = workerData as WorkerData;
if (isParked(data)) port.once('message', (m: ReaderAssignment) => begin(m.init));
else begin(data);
