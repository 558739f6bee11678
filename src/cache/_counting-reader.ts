/**
 * In-process fake source for the cache tests: a `MemoryReader` that counts its reads,
 * can be slowed down, made to fail, or made to corrupt what it returns.
 */
import { setTimeout as delay } from 'node:timers/promises';
import { MemoryReader } from '../io/memory-reader.ts';
import { UnavailableError } from '../io/errors.ts';

export class CountingReader extends MemoryReader {
  /** `readAt` calls. */
  reads = 0;
  /** Bytes returned. */
  bytes = 0;
  /** `[offset, length]` of every call, in call order. */
  calls: Array<[offset: number, length: number]> = [];
  /** Milliseconds each read takes. */
  delayMs = 0;
  /** The next this-many reads throw `UnavailableError`. */
  failNext = 0;
  /** Every read throws `UnavailableError`. */
  failAll = false;
  /** Called on the returned bytes of each read (to corrupt them). */
  mutate: ((bytes: Uint8Array, offset: number) => void) | undefined;

  override async readAt(buf: Uint8Array, offset: number): Promise<number> {
    this.reads++;
    this.calls.push([offset, buf.length]);
    if (this.delayMs > 0) await delay(this.delayMs);
    if (this.failAll || this.failNext > 0) {
      if (this.failNext > 0) this.failNext--;
      throw new UnavailableError(`Cannot read fake source at offset ${offset}: injected failure`);
    }
    const n = await super.readAt(buf, offset);
    this.bytes += n;
    this.mutate?.(buf.subarray(0, n), offset);
    return n;
  }
}

/** Deterministic test content: xorshift bytes of any length. */
export function blobBytes(size: number, seed: number): Uint8Array {
  const out = new Uint8Array(size);
  const view = new DataView(out.buffer);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < size; i += 4) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    if (i + 4 <= size) view.setUint32(i, x, true);
    else for (let k = 0; i + k < size; k++) out[i + k] = (x >>> (8 * k)) & 0xff;
  }
  return out;
}
