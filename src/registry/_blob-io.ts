/**
 * Small helpers for blob transfers: `Content-Range` parsing, strong ETags, skipping a
 * prefix of a body, and re-chunking an upload source.
 */

export interface ContentRange {
  readonly start: number;
  readonly end: number;
  /** Total size, undefined for `*`. */
  readonly total: number | undefined;
}

/** Parses `bytes START-END/TOTAL` (TOTAL may be `*`). */
export function parseContentRange(value: string | null): ContentRange | undefined {
  const m = /^\s*bytes\s+(\d+)-(\d+)\/(\d+|\*)\s*$/i.exec(value ?? '');
  if (m === null) return undefined;
  const start = Number(m[1]);
  const end = Number(m[2]);
  if (end < start) return undefined;
  return { start, end, total: m[3] === '*' ? undefined : Number(m[3]) };
}

/** The ETag when it is strong (usable with `If-Match`), else undefined. */
export function strongEtag(value: string | null): string | undefined {
  if (value === null || value.startsWith('W/') || !/^".*"$/.test(value)) return undefined;
  return value;
}

/**
 * Discards the first `count` bytes of `body` and returns a stream of the rest (for
 * servers that answer a range request with the whole blob). Rejects with `onShort()`
 * if the body ends first.
 */
export async function skipBytes(body: ReadableStream<Uint8Array>, count: number, onShort: () => Error): Promise<ReadableStream<Uint8Array>> {
  const reader = body.getReader();
  let left = count;
  let carry: Uint8Array | undefined;
  try {
    while (left > 0) {
      const { done, value } = await reader.read();
      if (done) throw onShort();
      if (value.length > left) carry = value.subarray(left);
      left -= Math.min(left, value.length);
    }
  } catch (e) {
    await reader.cancel().catch(() => undefined);
    throw e;
  }
  return new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        if (carry !== undefined) {
          controller.enqueue(carry);
          carry = undefined;
          return;
        }
        const { done, value } = await reader.read();
        if (done) controller.close();
        else controller.enqueue(value);
      },
      cancel: (reason) => reader.cancel(reason),
    },
    { highWaterMark: 0 },
  );
}

/** Yields the bytes of `source` in chunks of exactly `size` bytes (the last may be shorter). */
export async function* rechunk(source: AsyncIterable<Uint8Array>, size: number): AsyncGenerator<Uint8Array> {
  let buf = new Uint8Array(size);
  let fill = 0;
  for await (const piece of source) {
    let off = 0;
    while (off < piece.length) {
      const n = Math.min(size - fill, piece.length - off);
      buf.set(piece.subarray(off, off + n), fill);
      fill += n;
      off += n;
      if (fill === size) {
        yield buf;
        buf = new Uint8Array(size);
        fill = 0;
      }
    }
  }
  if (fill > 0) yield buf.subarray(0, fill);
}
