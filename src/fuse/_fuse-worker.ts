/**
 * A FUSE reader thread: blocks in `read(2)` on `/dev/fuse`, answers metadata requests
 * itself, hands data requests to the serving thread (see `_channel.ts`) and writes every
 * reply with one `write(2)`. Runs as a worker_threads entry point; never on the libuv
 * pool, whose 4 threads a blocking device read would starve (platform notes).
 *
 * Exit: ENODEV from read or write (unmounted or aborted), or the shared STOP flag while
 * waiting for the mount (reads fail with EPERM until it attaches) or for the serving
 * thread.
 */
import { readSync, writeSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { constants } from 'node:os';
import { CTL_F64_AT, Ctl, CtlF64, Shared, SlotState } from './_channel.ts';
import type { WorkerInit, WorkerMessage } from './_channel.ts';
import { FuseRequestHandler } from './request-handler.ts';
import type { DeviceRequest } from './request-handler.ts';
import { Opcode, opcodeName, viewOf } from './protocol.ts';

const E = constants.errno;
const MOUNT_POLL_MS = 2;
const SERVE_POLL_MS = 200;

const init = workerData as WorkerInit;
const port = parentPort;
if (port === null) throw new TypeError('Cannot start the FUSE reader: not running in a worker thread');

const post = (m: WorkerMessage): void => port.postMessage(m);
const slot = new Uint8Array(init.slot);
const slotView = viewOf(slot);
const ctl = new Int32Array(init.ctl, 0, 4);
const ctlF64 = new Float64Array(init.ctl, CTL_F64_AT, 2);
const shared = new Int32Array(init.shared);
const nap = new Int32Array(new SharedArrayBuffer(4));
const handler = new FuseRequestHandler(init.config, init.initialized !== undefined ? { negotiated: init.initialized } : {});

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

function serve(): string {
  for (;;) {
    const n = readRequest();
    if (n < 0) return stopped() ? 'stopped' : 'unmounted';
    if (n === 0) continue;
    const opcode = slotView.getUint32(4, true);
    if (init.trace) post({ t: 'log', text: `fuse[${init.index}]: ${opcodeName(opcode)} (${n} bytes)` });
    const action = handler.handle(slot, n);
    if (action.kind === 'none') continue;
    let reply: Uint8Array;
    if (action.kind === 'reply') {
      reply = action.bytes;
    } else {
      const result = runOnDevice(action.request);
      if (result === undefined) return 'stopped';
      reply = handler.complete(action.request, result, slot);
    }
    if (!writeReply(reply)) return 'unmounted';
    if (opcode === Opcode.INIT && handler.negotiated !== undefined) post({ t: 'init', init: handler.negotiated });
  }
}

let reason: string;
try {
  reason = serve();
} catch (e) {
  reason = `failed: ${(e as Error).message}`;
}
post({ t: 'exit', reason });
