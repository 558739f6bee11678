/**
 * One device request of the FUSE handler (READ, WRITE, FSYNC, DISCARD) run on the device:
 * the serving thread's path for every request the reader threads (JavaScript or native)
 * hand over. Resolves with the byte count or a negative errno; publishes
 * `obd:fuse:request` events while someone subscribes.
 */
import { constants } from 'node:os';
import { debuglog } from 'node:util';
import diagnostics from 'node:diagnostics_channel';
import type { AlignedAccess } from './_aligned-access.ts';
import { errnoFor } from './_errno.ts';
import { DeviceOpCode } from './request-handler.ts';

const log = debuglog('obd');
const E = constants.errno;
const requestChannel = diagnostics.channel('obd:fuse:request');
const OP_NAMES: Record<number, string> = { 1: 'READ', 2: 'WRITE', 3: 'FSYNC', 4: 'DISCARD' };

/** A device request: its code, range, and the bytes to read into or write from. */
export interface DeviceOp {
  code: number;
  offset: number;
  length: number;
  data: Uint8Array;
}

/** Runs `op` on `access`; never rejects. */
export async function runDeviceOp(access: AlignedAccess, op: DeviceOp): Promise<number> {
  const { code, offset, length, data } = op;
  const started = requestChannel.hasSubscribers ? performance.now() : 0;
  let result: number;
  try {
    switch (code) {
      case DeviceOpCode.READ:
        result = await access.read(data, offset);
        break;
      case DeviceOpCode.WRITE:
        result = await access.write(data, offset);
        break;
      case DeviceOpCode.FLUSH:
        await access.flush();
        result = 0;
        break;
      case DeviceOpCode.TRIM:
        await access.discard(offset, length);
        result = 0;
        break;
      default:
        result = -E.EINVAL;
    }
  } catch (e) {
    result = -errnoFor(e, code);
    log('fuse: %s of %d bytes at %d failed with errno %d: %s', OP_NAMES[code] ?? code, length, offset, -result, (e as Error).message);
  }
  if (requestChannel.hasSubscribers) requestChannel.publish({ op: OP_NAMES[code], offset, length, result, ms: performance.now() - started });
  return result;
}
