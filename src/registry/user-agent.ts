/**
 * Adds a `User-Agent` header to every request that has none.
 */
import type { HttpRequest, HttpTransport } from './transport.ts';

/** The default user agent: `overlaybd-ts node/<version>`. */
export const DEFAULT_USER_AGENT = `overlaybd-ts node/${process.versions.node}`;

/** Wraps `next` so that requests carry `userAgent` unless they set their own. */
export function withUserAgent(next: HttpTransport, userAgent = DEFAULT_USER_AGENT): HttpTransport {
  return (request: HttpRequest) => {
    const headers = request.headers ?? {};
    if (Object.keys(headers).some((h) => h.toLowerCase() === 'user-agent')) return next(request);
    return next({ ...request, headers: { ...headers, 'user-agent': userAgent } });
  };
}
