/**
 * The wire transport over Node's global `fetch` (undici inside): keep-alive pooling,
 * no redirect following (`redirect: 'manual'` returns the 3xx itself), streaming
 * request bodies. Network failures become domain errors (`networkError`), also when
 * they happen while the body streams.
 */
import { networkError } from './errors.ts';
import { wrapBody } from './_body.ts';
import type { HttpRequest, HttpResponse, HttpTransport } from './transport.ts';

function abortReason(signal: AbortSignal | undefined): unknown {
  return signal?.aborted === true ? signal.reason : undefined;
}

/** Creates a transport that sends each request with the global `fetch`. */
export function createFetchTransport(): HttpTransport {
  return async (request: HttpRequest): Promise<HttpResponse> => {
    const init: RequestInit & { duplex?: 'half' } = {
      method: request.method,
      redirect: 'manual',
      ...(request.headers === undefined ? {} : { headers: request.headers }),
      ...(request.signal === undefined ? {} : { signal: request.signal }),
    };
    if (request.body !== undefined) {
      init.body = request.body;
      if (!(request.body instanceof Uint8Array)) init.duplex = 'half';
    }
    let res: Response;
    try {
      res = await fetch(request.url, init);
    } catch (e) {
      throw abortReason(request.signal) ?? networkError(e, request);
    }
    const body =
      res.body === null
        ? null
        : wrapBody(res.body as ReadableStream<Uint8Array>, { mapError: (e) => abortReason(request.signal) ?? networkError(e, request) });
    return { status: res.status, headers: res.headers, url: request.url, body };
  };
}
