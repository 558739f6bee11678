/**
 * Registry errors are data (STYLE.md §5).
 *
 * A failed registry answer becomes a {@link RegistryError} — status, the parsed
 * distribution-spec `errors` array, method and a credential-free URL — which is then
 * attached as the `cause` of one of the domain errors of `src/io/errors.ts` (or
 * {@link PermissionDeniedError}), so callers branch on `instanceof NotFoundError` and
 * still reach the HTTP details through `registryErrorOf(e)`.
 *
 * | answer | thrown |
 * |---|---|
 * | 404, `BLOB_UNKNOWN`, `MANIFEST_UNKNOWN`, `NAME_UNKNOWN`, `BLOB_UPLOAD_UNKNOWN` | `NotFoundError` |
 * | 401, 403, `UNAUTHORIZED`, `DENIED` | `PermissionDeniedError` |
 * | 408, 429, 5xx, `TOOMANYREQUESTS`, `UNAVAILABLE`; network failures, timeouts | `UnavailableError` |
 * | 400 and `*_INVALID`, 416 | `InvalidArgumentError` |
 * | 405, `UNSUPPORTED` | `UnsupportedError` |
 * | anything else | `FailedPreconditionError` |
 *
 * No message built here contains credentials: URLs go through `redactUrl`, headers are
 * never rendered, and error bodies are only parsed for their `errors` array.
 *
 * @example
 * ```ts
 * try { await client.getManifest(ref); }
 * catch (e) { if (e instanceof NotFoundError) return registryErrorOf(e)?.errors[0]?.code; throw e; }
 * ```
 */
import {
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  ObdError,
  UnavailableError,
  UnsupportedError,
} from '../io/errors.ts';
import { readBody } from './_body.ts';
import { redactUrl } from './_redact.ts';
import type { HttpRequest, HttpResponse } from './transport.ts';

/** Error bodies are read up to this many bytes. */
export const MAX_ERROR_BODY = 64 * 1024;

import { PermissionDeniedError } from '../io/errors.ts';
export { PermissionDeniedError };

/** One entry of a distribution-spec error body: `{"errors":[{code,message,detail}]}`. */
export interface RegistryErrorEntry {
  readonly code: string;
  readonly message: string;
  readonly detail?: unknown;
}

const TEMPORARY_STATUSES = new Set([408, 429, 500, 502, 503, 504]);
const TEMPORARY_CODES = new Set(['TOOMANYREQUESTS', 'UNAVAILABLE']);
const NOT_FOUND_CODES = new Set(['BLOB_UNKNOWN', 'MANIFEST_UNKNOWN', 'NAME_UNKNOWN', 'BLOB_UPLOAD_UNKNOWN']);
const DENIED_CODES = new Set(['UNAUTHORIZED', 'DENIED']);

/** A failed registry answer as data. */
export class RegistryError extends Error {
  readonly status: number;
  readonly errors: readonly RegistryErrorEntry[];
  readonly method: string;
  /** The request URL without credentials. */
  readonly url: string;
  /** Delay asked for by a `Retry-After` header, in ms. */
  readonly retryAfterMs: number | undefined;

  constructor(init: { status: number; errors?: readonly RegistryErrorEntry[]; method: string; url: URL | string; retryAfterMs?: number }) {
    const url = redactUrl(init.url);
    const errors = init.errors ?? [];
    super(`${init.method} ${url} answered ${init.status}${describeEntries(errors)}`);
    this.name = 'RegistryError';
    this.status = init.status;
    this.errors = errors;
    this.method = init.method;
    this.url = url;
    this.retryAfterMs = init.retryAfterMs;
  }

  /** Whether retrying may succeed (429, 408, 5xx, or a temporary error code). */
  isTemporary(): boolean {
    if (TEMPORARY_STATUSES.has(this.status)) return true;
    return this.errors.length > 0 && this.errors.every((e) => TEMPORARY_CODES.has(e.code));
  }
}

function describeEntries(errors: readonly RegistryErrorEntry[]): string {
  if (errors.length === 0) return '';
  return ` ${errors.map((e) => (e.message === '' ? e.code : `${e.code} (${e.message})`)).join(', ')}`;
}

/** Parses a distribution-spec error body; anything else yields no entries. */
export function parseErrorBody(bytes: Uint8Array): RegistryErrorEntry[] {
  let doc: unknown;
  try {
    doc = JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return [];
  }
  const list = (doc as { errors?: unknown } | null)?.errors;
  if (!Array.isArray(list)) return [];
  const out: RegistryErrorEntry[] = [];
  for (const item of list) {
    if (item === null || typeof item !== 'object') continue;
    const { code, message, detail } = item as { code?: unknown; message?: unknown; detail?: unknown };
    if (typeof code !== 'string') continue;
    const entry: RegistryErrorEntry = { code, message: typeof message === 'string' ? message : '' };
    out.push(detail === undefined ? entry : { ...entry, detail });
  }
  return out;
}

/** Parses `Retry-After` (seconds or HTTP date) into ms, if present and sane. */
export function parseRetryAfter(value: string | null, now = Date.now()): number | undefined {
  if (value === null) return undefined;
  const v = value.trim();
  if (/^\d+$/.test(v)) return Number(v) * 1000;
  const t = Date.parse(v);
  return Number.isNaN(t) ? undefined : Math.max(0, t - now);
}

/** Maps a registry error to the domain error class for its status and codes. */
export function toDomainError(error: RegistryError, action: string): ObdError {
  const codes = new Set(error.errors.map((e) => e.code));
  const has = (set: Set<string>): boolean => [...codes].some((c) => set.has(c));
  const message = `Cannot ${action}: registry answered ${error.status}${describeEntries(error.errors)}`;
  const options = { cause: error };
  if (error.status === 404 || has(NOT_FOUND_CODES)) return new NotFoundError(message, options);
  if (error.status === 401 || error.status === 403 || has(DENIED_CODES)) return new PermissionDeniedError(message, options);
  if (error.isTemporary()) return new UnavailableError(message, options);
  if (error.status === 405 || codes.has('UNSUPPORTED')) return new UnsupportedError(message, options);
  if (error.status === 400 || error.status === 416 || [...codes].some((c) => c.endsWith('_INVALID'))) {
    return new InvalidArgumentError(message, options);
  }
  return new FailedPreconditionError(message, options);
}

/**
 * Builds the domain error for a failed response: reads at most 64 KiB of the body,
 * parses it, and maps it (`action` completes "Cannot …").
 */
export async function errorFromResponse(res: HttpResponse, request: Pick<HttpRequest, 'method' | 'url'>, action: string): Promise<ObdError> {
  let entries: RegistryErrorEntry[] = [];
  try {
    entries = parseErrorBody(await readBody(res, MAX_ERROR_BODY, { truncate: true }));
  } catch {
    // A broken error body leaves only the status.
  }
  const retryAfterMs = parseRetryAfter(res.headers.get('retry-after'));
  const error = new RegistryError({
    status: res.status,
    errors: entries,
    method: request.method,
    url: request.url,
    ...(retryAfterMs === undefined ? {} : { retryAfterMs }),
  });
  return toDomainError(error, action);
}

/** Finds the `RegistryError` in the cause chain of `e`. */
export function registryErrorOf(e: unknown): RegistryError | undefined {
  for (let cur = e, depth = 0; cur instanceof Error && depth < 8; cur = cur.cause, depth++) {
    if (cur instanceof RegistryError) return cur;
  }
  return undefined;
}

/** Whether retrying the failed operation may succeed. */
export function isTemporary(e: unknown): boolean {
  const reg = registryErrorOf(e);
  if (reg !== undefined) return reg.isTemporary();
  return e instanceof UnavailableError;
}

const TLS_TRUST_CODES = new Set([
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'CERT_UNTRUSTED',
  'ERR_TLS_CERT_ALTNAME_INVALID',
  'HOSTNAME_MISMATCH',
]);

const NETWORK_TEXT: Record<string, string> = {
  ECONNREFUSED: 'connection refused',
  ECONNRESET: 'connection reset',
  EPIPE: 'connection closed while sending',
  ETIMEDOUT: 'connection timed out',
  ENOTFOUND: 'host not found',
  EAI_AGAIN: 'temporary DNS failure',
  EHOSTUNREACH: 'host unreachable',
  ENETUNREACH: 'network unreachable',
  UND_ERR_SOCKET: 'connection closed by the server',
  UND_ERR_CONNECT_TIMEOUT: 'connection timed out',
  UND_ERR_HEADERS_TIMEOUT: 'no response headers in time',
  UND_ERR_BODY_TIMEOUT: 'response body stalled',
};

/** The most specific `code` in an error's cause chain (Node and undici errors). */
export function networkCode(e: unknown): string | undefined {
  let found: string | undefined;
  for (let cur = e, depth = 0; cur instanceof Error && depth < 8; cur = cur.cause, depth++) {
    const code = (cur as { code?: unknown }).code;
    if (typeof code === 'string') found = code;
  }
  return found;
}

/**
 * Turns a network-level failure of `METHOD url` into a domain error: TLS trust failures
 * are `FailedPreconditionError` (retrying cannot help), everything else `UnavailableError`.
 * The message names the redacted URL and the error code, never headers.
 */
export function networkError(e: unknown, request: Pick<HttpRequest, 'method' | 'url'>): ObdError {
  if (e instanceof ObdError) return e;
  const code = networkCode(e);
  const where = `${request.method} ${redactUrl(request.url)}`;
  if (code !== undefined && TLS_TRUST_CODES.has(code)) {
    return new FailedPreconditionError(`Cannot ${where}: TLS certificate not trusted (${code}); give the registry CA or mark the host insecure`, {
      cause: e,
    });
  }
  const text = code === undefined ? 'network failure' : `${NETWORK_TEXT[code] ?? 'network failure'} (${code})`;
  return new UnavailableError(`Cannot ${where}: ${text}`, { cause: e });
}
