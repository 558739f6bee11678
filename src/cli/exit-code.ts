import { ObdError } from '../io/errors.ts';

/** Error codes → process exit codes; the only place they are mapped. */
const EXIT_CODES: Record<string, number> = {
  ERR_INVALID_ARGUMENT: 2,
  ERR_NOT_FOUND: 3,
  ERR_ALREADY_EXISTS: 4,
  ERR_DATA_CORRUPTION: 5,
  ERR_FAILED_PRECONDITION: 6,
  ERR_UNAVAILABLE: 7,
  ERR_UNSUPPORTED: 8,
  ERR_PERMISSION_DENIED: 9,
};

export function exitCodeOf(e: unknown): number {
  return e instanceof ObdError ? (EXIT_CODES[e.code] ?? 1) : 1;
}
