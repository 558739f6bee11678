/** errno for a failed device call: the one place device errors meet FUSE (serving thread and readers). */
import { constants } from 'node:os';
import { ObdError } from '../io/errors.ts';
import { DeviceOpCode } from './request-handler.ts';

const E = constants.errno;

/** The errno a FUSE reply carries for error `e` of device operation `code`. */
export function errnoFor(e: unknown, code: number): number {
  if (e instanceof ObdError) {
    switch (e.code) {
      case 'ERR_INVALID_ARGUMENT':
        return E.EINVAL;
      case 'ERR_FAILED_PRECONDITION':
        return code === DeviceOpCode.READ ? E.EIO : E.EROFS;
      case 'ERR_UNSUPPORTED':
        return E.EOPNOTSUPP;
      default:
        return E.EIO;
    }
  }
  return E.EIO;
}
