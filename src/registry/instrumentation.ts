/**
 * Publishes one `node:diagnostics_channel` event per HTTP request on the wire, so tests
 * and benchmarks can count requests and bytes (STYLE.md §12):
 * channel {@link REQUEST_CHANNEL}, message {@link RegistryRequestEvent}.
 *
 * The event is published when the response body ends, is cancelled or fails (`bytes`
 * is then the body bytes received), right away for bodiless answers, and with
 * `status: 0` when no response arrived. URLs are redacted (no credentials).
 *
 * @example
 * ```ts
 * import { subscribe } from 'node:diagnostics_channel';
 * subscribe(REQUEST_CHANNEL, (e) => { requests.push(e as RegistryRequestEvent); });
 * ```
 */
import { channel } from 'node:diagnostics_channel';
import { wrapBody } from './_body.ts';
import { redactUrl } from './_redact.ts';
import { networkCode } from './errors.ts';
import type { HttpRequest, HttpResponse, HttpTransport } from './transport.ts';

export const REQUEST_CHANNEL = 'obd:registry:request';

export interface RegistryRequestEvent {
  readonly method: string;
  /** Request URL without credentials. */
  readonly url: string;
  /** HTTP status, 0 when the request failed before a response. */
  readonly status: number;
  /** Response body bytes received. */
  readonly bytes: number;
  /** Request body bytes sent (known sizes only). */
  readonly sentBytes: number;
  readonly durationMs: number;
  /** Whether the request carried an `Authorization` header. */
  readonly authorized: boolean;
  /** Error code (or name) when the request or its body failed. */
  readonly error?: string;
}

const requests = channel(REQUEST_CHANNEL);

function errorLabel(e: unknown): string {
  return networkCode(e) ?? (e instanceof Error ? e.name : 'Error');
}

/** Wraps `next` so that every request it sends is published on {@link REQUEST_CHANNEL}. */
export function withInstrumentation(next: HttpTransport): HttpTransport {
  return async (request: HttpRequest): Promise<HttpResponse> => {
    if (!requests.hasSubscribers) return next(request);
    const started = performance.now();
    const base = {
      method: request.method,
      url: redactUrl(request.url),
      sentBytes: request.body instanceof Uint8Array ? request.body.length : 0,
      authorized: Object.keys(request.headers ?? {}).some((h) => h.toLowerCase() === 'authorization'),
    };
    const publish = (status: number, bytes: number, error?: unknown): void => {
      const event: RegistryRequestEvent = {
        ...base,
        status,
        bytes,
        durationMs: performance.now() - started,
        ...(error === undefined ? {} : { error: errorLabel(error) }),
      };
      requests.publish(event);
    };
    let res: HttpResponse;
    try {
      res = await next(request);
    } catch (e) {
      publish(0, 0, e);
      throw e;
    }
    if (res.body === null) {
      publish(res.status, 0);
      return res;
    }
    let bytes = 0;
    const body = wrapBody(res.body, {
      onChunk: (c) => {
        bytes += c.length;
      },
      onDone: (how, error) => publish(res.status, bytes, how === 'error' ? error : undefined),
    });
    return { ...res, body };
  };
}
