/**
 * Per-request timeouts through an `AbortSignal`: the response headers must arrive within
 * `timeoutMs`, and each read of the body must deliver data within `timeoutMs` (an idle
 * timeout that runs only while a read is pending, so a slow consumer never trips it).
 * A timeout rejects with `UnavailableError` (temporary); the caller's own `signal`
 * still aborts with its reason.
 */
import { UnavailableError } from '../io/errors.ts';
import { wrapBody } from './_body.ts';
import { redactUrl } from './_redact.ts';
import type { HttpRequest, HttpResponse, HttpTransport } from './transport.ts';

/** Default per-request timeout (upstream: 30 s per file operation). */
export const DEFAULT_TIMEOUT_MS = 30_000;

export interface TimeoutOptions {
  /** Milliseconds (default {@link DEFAULT_TIMEOUT_MS}); `request.timeoutMs` overrides it. */
  readonly timeoutMs?: number;
}

/** Wraps `next` with header and body-idle timeouts. */
export function withTimeout(next: HttpTransport, options: TimeoutOptions = {}): HttpTransport {
  return async (request: HttpRequest): Promise<HttpResponse> => {
    const ms = request.timeoutMs ?? options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const outer = request.signal;
    if (outer?.aborted === true) throw outer.reason;
    const ac = new AbortController();
    const where = `${request.method} ${redactUrl(request.url)}`;
    const expire = (what: string) => (): void => {
      ac.abort(new UnavailableError(`Cannot ${where}: ${what} within ${ms} ms`));
    };
    const onAbort = (): void => ac.abort(outer?.reason);
    outer?.addEventListener('abort', onAbort, { once: true });
    const cleanup = (): void => outer?.removeEventListener('abort', onAbort);

    const timer = setTimeout(expire('no response'), ms);
    let res: HttpResponse;
    try {
      res = await next({ ...request, signal: ac.signal });
    } catch (e) {
      cleanup();
      throw ac.signal.aborted ? ac.signal.reason : e;
    } finally {
      clearTimeout(timer);
    }
    if (res.body === null) {
      cleanup();
      return res;
    }
    let idle: ReturnType<typeof setTimeout> | undefined;
    const body = wrapBody(res.body, {
      beforeRead: () => {
        idle = setTimeout(expire('no response data'), ms);
      },
      afterRead: () => clearTimeout(idle),
      onDone: () => {
        clearTimeout(idle);
        cleanup();
      },
      mapError: (e) => (ac.signal.aborted ? ac.signal.reason : e),
    });
    return { ...res, body };
  };
}
