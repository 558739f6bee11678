/**
 * The one place where domain errors become NBD error values (STYLE.md §4).
 *
 * | thrown by the device | NBD errno |
 * |---|---|
 * | `InvalidArgumentError` (`ERR_INVALID_ARGUMENT`) | EINVAL |
 * | `FailedPreconditionError` (`ERR_FAILED_PRECONDITION`: read-only, sealed, closed) | EPERM |
 * | `UnsupportedError` (`ERR_UNSUPPORTED`) | ENOTSUP |
 * | Node system error `ENOSPC`, `EDQUOT`, `EFBIG` | ENOSPC |
 * | Node system error `EROFS`, `EPERM`, `EACCES` | EPERM |
 * | Node system error `ENOMEM` | ENOMEM |
 * | everything else (`DataCorruptionError`, `UnavailableError`, `NotFoundError`, other I/O errors, programming errors) | EIO |
 *
 * @example
 * ```ts
 * nbdErrnoOf(new FailedPreconditionError('Cannot write: device is read-only')); // 1 (EPERM)
 * ```
 */
import { ObdError } from '../io/errors.ts';
import type { ObdErrorCode } from '../io/errors.ts';
import { ERRNO } from './protocol.ts';
import type { NbdErrno } from './protocol.ts';

const BY_CODE: Record<ObdErrorCode, NbdErrno> = {
  ERR_INVALID_ARGUMENT: ERRNO.EINVAL,
  ERR_FAILED_PRECONDITION: ERRNO.EPERM,
  ERR_UNSUPPORTED: ERRNO.ENOTSUP,
  ERR_NOT_FOUND: ERRNO.EIO,
  ERR_ALREADY_EXISTS: ERRNO.EIO,
  ERR_UNAVAILABLE: ERRNO.EIO,
  ERR_DATA_CORRUPTION: ERRNO.EIO,
  ERR_PERMISSION_DENIED: ERRNO.EIO,
};

const BY_SYSTEM_CODE: Record<string, NbdErrno> = {
  ENOSPC: ERRNO.ENOSPC,
  EDQUOT: ERRNO.ENOSPC,
  EFBIG: ERRNO.ENOSPC,
  EROFS: ERRNO.EPERM,
  EPERM: ERRNO.EPERM,
  EACCES: ERRNO.EPERM,
  ENOMEM: ERRNO.ENOMEM,
};

/** The NBD error value to send for an error thrown while serving a request. */
export function nbdErrnoOf(error: unknown): NbdErrno {
  if (error instanceof ObdError) return BY_CODE[error.code as ObdErrorCode] ?? ERRNO.EIO;
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code === 'string') return BY_SYSTEM_CODE[code] ?? ERRNO.EIO;
  return ERRNO.EIO;
}
