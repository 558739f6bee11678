/**
 * The contract between the serving thread (which owns the BlockDevice) and the reader
 * workers (which own nothing but a request buffer): shared memory layouts and messages.
 *
 * Each worker has a slot: a SharedArrayBuffer it reads requests into and replies from,
 * and a small control block. To hand a READ/WRITE/FSYNC/FALLOCATE to the serving
 * thread it fills the control block, sets `state = PENDING`, posts its index and
 * `Atomics.wait`s. The serving thread runs the device call on the slot's bytes in place,
 * stores the result, sets `state = DONE` and `Atomics.notify`s.
 */
import type { FuseFileConfig } from './request-handler.ts';
import type { InitOut } from './protocol.ts';

/** Int32 indexes into a control block. */
export const Ctl = {
  STATE: 0,
  CODE: 1,
  /** Bytes done, or a negative errno. */
  RESULT: 2,
  DATA_AT: 3,
} as const;
/** Float64 indexes into the control block's second half (byte 16). */
export const CtlF64 = { OFFSET: 0, LENGTH: 1 } as const;
export const CTL_BYTES = 32;
export const CTL_F64_AT = 16;

export const SlotState = { IDLE: 0, PENDING: 1, DONE: 2 } as const;

/** Int32 indexes into the block shared by all workers. */
export const Shared = {
  /** 1 once the server gives up (mount failed, connection aborted): readers stop. */
  STOP: 0,
} as const;
export const SHARED_BYTES = 8;

/**
 * Reads served by the reader threads themselves: each loads `module` (or, from source,
 * the CommonJS bundle of it in `code`) and opens its own read-only copy of the device
 * with `module[exportName](args)`.
 */
export interface WorkerLocalReads {
  module: string;
  exportName: string;
  args: unknown;
  code?: string;
}

/** `workerData` of a reader worker. */
export interface WorkerInit {
  fd: number;
  index: number;
  slot: SharedArrayBuffer;
  ctl: SharedArrayBuffer;
  shared: SharedArrayBuffer;
  config: FuseFileConfig;
  /** Post a trace line per request. */
  trace: boolean;
  /** INIT was answered by an earlier server of this connection: its reply. */
  initialized?: InitOut;
  /** Serve READ in this thread from its own copy of the device. */
  localReads?: WorkerLocalReads;
  /** Alignment the device requires (local reads widen unaligned ones). */
  alignment: number;
}

/** `workerData` of a parked reader: started ahead of need, it waits for a {@link ReaderAssignment}. */
export interface WorkerParked {
  parked: true;
}

export type WorkerData = WorkerInit | WorkerParked;

export function isParked(data: WorkerData): data is WorkerParked {
  return (data as Partial<WorkerParked>).parked === true;
}

/** Serving thread → parked reader, once: what to serve. */
export interface ReaderAssignment {
  t: 'assign';
  init: WorkerInit;
}

/** Worker → serving thread. A bare number is "slot N has a device request pending". */
export type WorkerMessage =
  | number
  | { t: 'init'; init: InitOut }
  | { t: 'log'; text: string }
  | { t: 'ready' }
  | { t: 'exit'; reason: string };
