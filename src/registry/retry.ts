/**
 * Retries temporary failures with exponential backoff and full jitter (STYLE.md §6):
 * network errors and timeouts (`UnavailableError`) and the statuses 408, 429, 500, 502,
 * 503, 504. Only retryable requests (idempotent, replayable body) are repeated. Attempts
 * and the total time are bounded; `Retry-After` is honoured when it fits the budget.
 * After the last attempt the final response (or error) is passed on unchanged.
 */
import { debuglog } from 'node:util';
import { discardBody } from './_body.ts';
import { redactUrl } from './_redact.ts';
import { isTemporary, parseRetryAfter } from './errors.ts';
import { isRetryable } from './transport.ts';
import type { HttpRequest, HttpResponse, HttpTransport } from './transport.ts';

const debug = debuglog('obd');

const RETRY_STATUSES = new Set([408, 429, 500, 502, 503, 504]);

export interface RetryOptions {
  /** Total tries including the first (default 4). */
  readonly attempts?: number;
  /** First backoff ceiling in ms (default 100), doubled per attempt. */
  readonly baseDelayMs?: number;
  /** Largest backoff in ms (default 4000). */
  readonly maxDelayMs?: number;
  /** Give up when the next try would start later than this after the first (default 60000 ms). */
  readonly budgetMs?: number;
  /** Random source in [0, 1) for the jitter (tests pass a fixed one). */
  readonly random?: () => number;
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted === true) {
      reject(signal.reason);
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** Backoff before try `attempt + 1` (attempt ≥ 1): full jitter over an exponential ceiling. */
export function backoffDelay(attempt: number, options: RetryOptions = {}): number {
  const base = options.baseDelayMs ?? 100;
  const max = options.maxDelayMs ?? 4000;
  const ceiling = Math.min(max, base * 2 ** (attempt - 1));
  return Math.floor((options.random ?? Math.random)() * ceiling);
}

/** Wraps `next` so that temporary failures of retryable requests are retried. */
export function withRetry(next: HttpTransport, options: RetryOptions = {}): HttpTransport {
  const attempts = Math.max(1, options.attempts ?? 4);
  const budget = options.budgetMs ?? 60_000;
  return async (request: HttpRequest): Promise<HttpResponse> => {
    if (!isRetryable(request)) return next(request);
    const started = Date.now();
    for (let attempt = 1; ; attempt++) {
      let res: HttpResponse | undefined;
      let error: unknown;
      try {
        res = await next(request);
        if (!RETRY_STATUSES.has(res.status)) return res;
      } catch (e) {
        if (request.signal?.aborted === true || !isTemporary(e)) throw e;
        error = e;
      }
      const retryAfter = res === undefined ? undefined : parseRetryAfter(res.headers.get('retry-after'));
      const delay = retryAfter ?? backoffDelay(attempt, options);
      if (attempt >= attempts || Date.now() - started + delay > budget) {
        if (res !== undefined) return res;
        throw error;
      }
      if (res !== undefined) await discardBody(res);
      debug('registry: retry %d/%d of %s %s in %d ms (%s)', attempt, attempts - 1, request.method, redactUrl(request.url), delay, res?.status ?? (error as Error).message);
      await sleep(delay, request.signal);
    }
  };
}
