/**
 * The closed set of domain errors of overlaybd-ts (STYLE.md §4).
 *
 * Every error carries a stable `code`; frontends map codes to their own vocabulary
 * (CLI exit codes, NBD errno, gRPC status) and nowhere else. Programming errors use
 * the built-ins (`TypeError`, `RangeError`).
 *
 * @example
 * ```ts
 * try { await openLayer(reader); }
 * catch (e) { if (e instanceof DataCorruptionError) return { failed: e.code }; throw e; }
 * ```
 */
export abstract class ObdError extends Error {
  abstract readonly code: string;
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** A named thing (file, blob, layer, snapshot) does not exist. */
export class NotFoundError extends ObdError {
  readonly code = 'ERR_NOT_FOUND';
}

/** Creating something that already exists. */
export class AlreadyExistsError extends ObdError {
  readonly code = 'ERR_ALREADY_EXISTS';
}

/** The caller passed a value that can never work (bad flag, unaligned offset, bad config). */
export class InvalidArgumentError extends ObdError {
  readonly code = 'ERR_INVALID_ARGUMENT';
}

/** The operation is valid but not in the current state (read-only device, sealed layer). */
export class FailedPreconditionError extends ObdError {
  readonly code = 'ERR_FAILED_PRECONDITION';
}

/** The caller is not allowed: bad or missing credentials (registry 401/403). */
export class PermissionDeniedError extends ObdError {
  readonly code = 'ERR_PERMISSION_DENIED';
}

/** A temporary failure (network, registry); retrying may succeed. */
export class UnavailableError extends ObdError {
  readonly code = 'ERR_UNAVAILABLE';
}

/** Stored bytes are not what the format says: bad magic, bad CRC, bad index, truncation. */
export class DataCorruptionError extends ObdError {
  readonly code = 'ERR_DATA_CORRUPTION';
}

/** A valid file using a feature this implementation does not support. */
export class UnsupportedError extends ObdError {
  readonly code = 'ERR_UNSUPPORTED';
}

export type ObdErrorCode =
  | NotFoundError['code']
  | AlreadyExistsError['code']
  | InvalidArgumentError['code']
  | FailedPreconditionError['code']
  | UnavailableError['code']
  | PermissionDeniedError['code']
  | DataCorruptionError['code']
  | UnsupportedError['code'];

/**
 * The error class of a stable code, for an error that crossed a process boundary as
 * `{ code, message }` (a serving child, a daemon); undefined for an unknown code.
 */
export function errorClassOf(code: unknown): (new (message: string, options?: { cause?: unknown }) => ObdError) | undefined {
  switch (code) {
    case 'ERR_NOT_FOUND':
      return NotFoundError;
    case 'ERR_ALREADY_EXISTS':
      return AlreadyExistsError;
    case 'ERR_INVALID_ARGUMENT':
      return InvalidArgumentError;
    case 'ERR_FAILED_PRECONDITION':
      return FailedPreconditionError;
    case 'ERR_PERMISSION_DENIED':
      return PermissionDeniedError;
    case 'ERR_UNAVAILABLE':
      return UnavailableError;
    case 'ERR_DATA_CORRUPTION':
      return DataCorruptionError;
    case 'ERR_UNSUPPORTED':
      return UnsupportedError;
    default:
      return undefined;
  }
}

/** Converts a u64 read as bigint to a number, throwing when it is not exactly representable. */
export function toSafeNumber(value: bigint, what: string): number {
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new DataCorruptionError(`Cannot read ${what}: value ${value} exceeds 2^53`);
  }
  return Number(value);
}
