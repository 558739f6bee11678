/**
 * Response-body helpers shared by the transport wrappers: bounded reads, discarding,
 * and a pass-through wrapper with hooks that keeps backpressure (it pulls from the
 * source only when its own consumer pulls: `highWaterMark: 0`).
 */
import type { HttpResponse } from './transport.ts';

export interface BodyHooks {
  /** Called before each read from the source. */
  beforeRead?(): void;
  /** Called after each read from the source settles. */
  afterRead?(): void;
  onChunk?(chunk: Uint8Array): void;
  /** Called once when the body ends, is cancelled or fails. */
  onDone?(how: 'end' | 'cancel' | 'error', error?: unknown): void;
  /** Turns a source error into the error the consumer sees. */
  mapError?(error: unknown): unknown;
}

/** Wraps `body` so that `hooks` observe every chunk and the end, without buffering. */
export function wrapBody(body: ReadableStream<Uint8Array>, hooks: BodyHooks): ReadableStream<Uint8Array> {
  const reader = body.getReader();
  let finished = false;
  const finish = (how: 'end' | 'cancel' | 'error', error?: unknown): void => {
    if (finished) return;
    finished = true;
    hooks.onDone?.(how, error);
  };
  return new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        hooks.beforeRead?.();
        let r: Awaited<ReturnType<typeof reader.read>>;
        try {
          r = await reader.read();
        } catch (e) {
          hooks.afterRead?.();
          const mapped = hooks.mapError === undefined ? e : hooks.mapError(e);
          finish('error', mapped);
          throw mapped;
        }
        hooks.afterRead?.();
        if (r.done) {
          finish('end');
          controller.close();
          return;
        }
        hooks.onChunk?.(r.value);
        controller.enqueue(r.value);
      },
      async cancel(reason) {
        finish('cancel');
        await reader.cancel(reason).catch(() => undefined);
      },
    },
    { highWaterMark: 0 },
  );
}

/** Cancels the response body (releasing the connection); never throws. */
export async function discardBody(res: HttpResponse): Promise<void> {
  await res.body?.cancel().catch(() => undefined);
}

/**
 * Reads the whole body, at most `limit` bytes. Longer bodies are cut at `limit` when
 * `truncate` is set, otherwise `onOverflow()` is thrown. The rest is cancelled.
 */
export async function readBody(
  res: HttpResponse,
  limit: number,
  options: { truncate?: boolean; onOverflow?: () => Error } = {},
): Promise<Uint8Array> {
  if (res.body === null) return new Uint8Array(0);
  const reader = res.body.getReader();
  const parts: Uint8Array[] = [];
  let total = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (total + value.length > limit) {
        if (options.truncate !== true) throw options.onOverflow?.() ?? new RangeError(`Response body exceeds ${limit} bytes`);
        parts.push(value.subarray(0, limit - total));
        total = limit;
        await reader.cancel().catch(() => undefined);
        break;
      }
      parts.push(value);
      total += value.length;
    }
  } catch (e) {
    await reader.cancel().catch(() => undefined);
    throw e;
  } finally {
    reader.releaseLock();
  }
  if (parts.length === 1) return parts[0] as Uint8Array;
  const out = new Uint8Array(total);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}
