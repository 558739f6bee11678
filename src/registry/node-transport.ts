/**
 * The wire transport over `node:http`/`node:https` (the registry client's, see
 * `RegistryClient`), with per-host TLS settings (a private CA, a client certificate, or
 * no verification for `insecure` hosts). Keep-alive agents, no redirect following,
 * streaming bodies with backpressure (`drain`).
 */
import { Agent as HttpAgent, request as httpRequest } from 'node:http';
import type { ClientRequest, IncomingMessage } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { Readable } from 'node:stream';
import { networkError } from './errors.ts';
import { wrapBody } from './_body.ts';
import type { HttpRequest, HttpResponse, HttpTransport } from './transport.ts';

/** TLS settings for one host. PEM contents, not paths. */
export interface TlsOptions {
  /** Skip certificate verification (self-signed registries). */
  readonly insecure?: boolean;
  /** Trust only these CA certificates. */
  readonly ca?: string | Buffer;
  /** Client certificate and key (both or neither). */
  readonly cert?: string | Buffer;
  readonly key?: string | Buffer;
}

/** A transport plus the means to drop its pooled connections. */
export interface ClosableTransport {
  readonly transport: HttpTransport;
  close(): void;
}

function headersOf(res: IncomingMessage): Headers {
  const h = new Headers();
  const raw = res.rawHeaders;
  for (let i = 0; i + 1 < raw.length; i += 2) h.append(raw[i] as string, raw[i + 1] as string);
  return h;
}

async function writeStream(req: ClientRequest, body: ReadableStream<Uint8Array>): Promise<void> {
  const reader = body.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (!req.write(value)) {
        await new Promise<void>((resolve, reject) => {
          const onDrain = (): void => {
            req.off('error', onError);
            resolve();
          };
          const onError = (e: Error): void => {
            req.off('drain', onDrain);
            reject(e);
          };
          req.once('drain', onDrain);
          req.once('error', onError);
        });
      }
    }
    req.end();
  } finally {
    reader.releaseLock();
  }
}

/**
 * Loads what the first request would load (the WHATWG `Headers` class responses carry is
 * undici's, loaded on first use: ~70 ms of CPU on a small machine), for a process that
 * waits before its first request is urgent.
 */
export function warmHttp(): void {
  void new Headers();
}

/** Creates a `node:http(s)` transport with the given TLS settings. */
export function createNodeTransport(tls: TlsOptions = {}): ClosableTransport {
  const httpAgent = new HttpAgent({ keepAlive: true });
  const httpsAgent = new HttpsAgent({
    keepAlive: true,
    rejectUnauthorized: tls.insecure !== true,
    ...(tls.ca === undefined ? {} : { ca: tls.ca }),
    ...(tls.cert === undefined ? {} : { cert: tls.cert }),
    ...(tls.key === undefined ? {} : { key: tls.key }),
  });
  const transport = (request: HttpRequest): Promise<HttpResponse> =>
    new Promise<HttpResponse>((resolve, reject) => {
      const https = request.url.protocol === 'https:';
      const send = https ? httpsRequest : httpRequest;
      const fail = (e: unknown): unknown => (request.signal?.aborted === true ? request.signal.reason : networkError(e, request));
      const req = send(request.url, {
        method: request.method,
        headers: request.headers ?? {},
        agent: https ? httpsAgent : httpAgent,
        ...(request.signal === undefined ? {} : { signal: request.signal }),
      });
      req.once('error', (e) => reject(fail(e)));
      req.once('response', (res) => {
        const status = res.statusCode ?? 0;
        const bodyless = request.method === 'HEAD' || status === 204 || status === 304;
        let body: ReadableStream<Uint8Array> | null = null;
        if (bodyless) res.resume();
        else body = wrapBody(Readable.toWeb(res) as ReadableStream<Uint8Array>, { mapError: fail });
        resolve({ status, headers: headersOf(res), url: request.url, body });
      });
      const b = request.body;
      if (b === undefined) req.end();
      else if (b instanceof Uint8Array) req.end(b);
      else writeStream(req, b).catch((e: unknown) => req.destroy(e instanceof Error ? e : new Error(String(e))));
    });
  return {
    transport,
    close() {
      httpAgent.destroy();
      httpsAgent.destroy();
    },
  };
}
