/**
 * The HTTP contract every layer of the registry client speaks (STYLE.md §6): a
 * transport is one async function from request to response, and each concern (auth,
 * retry, timeout, user agent, instrumentation) is a function that wraps a transport
 * and returns another one.
 *
 * Lifecycle of a response: the caller must either read `body` to the end or cancel it
 * (`await res.body?.cancel()`); wrappers publish events and release timers then.
 * Transports never follow redirects: a 3xx is returned as is.
 *
 * Errors: a transport rejects with `UnavailableError` for network failures and
 * timeouts, `FailedPreconditionError` for TLS trust failures, and with the caller's
 * `signal.reason` when the caller aborted. HTTP error statuses are responses, not
 * rejections.
 *
 * @example
 * ```ts
 * const t = withRetry(withTimeout(createFetchTransport(), { timeoutMs: 30_000 }));
 * const res = await t({ method: 'GET', url: new URL('https://registry-1.docker.io/v2/') });
 * await res.body?.cancel();
 * ```
 */

export type HttpMethod = 'GET' | 'HEAD' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';

/** What the auth layer needs to authenticate a request. */
export interface RequestAuth {
  /** Token scopes, e.g. `repository:library/alpine:pull`. */
  readonly scopes: readonly string[];
  /** Origin whose credentials apply (default: the request URL's origin; differs for P2P proxies). */
  readonly origin?: string;
}

export interface HttpRequest {
  readonly method: HttpMethod;
  readonly url: URL;
  readonly headers?: Readonly<Record<string, string>>;
  /** A `Uint8Array` can be replayed (retry, auth refresh); a stream cannot. */
  readonly body?: Uint8Array | ReadableStream<Uint8Array>;
  readonly signal?: AbortSignal;
  /** Present when the request may carry registry credentials; absent for redirect targets. */
  readonly auth?: RequestAuth;
  /** Overrides the per-request timeout (ms) of the timeout layer. */
  readonly timeoutMs?: number;
  /** Whether repeating the request is harmless (default: GET, HEAD, PUT, DELETE). */
  readonly idempotent?: boolean;
}

export interface HttpResponse {
  readonly status: number;
  readonly headers: Headers;
  readonly url: URL;
  /** Null for HEAD and bodiless answers. */
  readonly body: ReadableStream<Uint8Array> | null;
}

export type HttpTransport = (request: HttpRequest) => Promise<HttpResponse>;

/** Whether the request body can be sent again (absent or a `Uint8Array`; streams cannot). */
export function hasReplayableBody(request: HttpRequest): boolean {
  return request.body === undefined || request.body instanceof Uint8Array;
}

/** Whether repeating `request` after a failure is harmless: replayable body and idempotent. */
export function isRetryable(request: HttpRequest): boolean {
  return hasReplayableBody(request) && (request.idempotent ?? ['GET', 'HEAD', 'PUT', 'DELETE'].includes(request.method));
}
