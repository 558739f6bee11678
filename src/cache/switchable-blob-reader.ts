/**
 * A `BlobReader` that starts on one reader (typically the cached remote reader of a
 * layer blob) and can be switched, once the blob has been downloaded and verified, to
 * another with the same bytes (a `FileReader` of `<dir>/overlaybd.commit`), as upstream
 * `switch_file` does (runtime.md §7.5). Reads started before the switch finish on the old
 * reader, which is closed once they have; reads started after go to the new one.
 *
 * `evict()` goes to the current reader when it is `Evictable` and is a no-op otherwise
 * (a verified local file has no cached copy to drop).
 *
 * @example
 * ```ts
 * const layer = new SwitchableBlobReader(await CachedBlobReader.open(cache, remote, { digest }));
 * // … later, from the background download:
 * await layer.switchTo(await FileReader.open(join(dir, 'overlaybd.commit')));
 * ```
 */
import type { BlobReader, Evictable } from '../io/blob-reader.ts';
import { isEvictable } from '../io/blob-reader.ts';
import { DataCorruptionError, FailedPreconditionError } from '../io/errors.ts';

export class SwitchableBlobReader implements BlobReader, Evictable {
  readonly size: number;
  #current: BlobReader | undefined;
  #switched = false;
  /** Reads in flight per reader, so that a replaced reader is closed only when idle. */
  #reads = new Map<BlobReader, Set<Promise<unknown>>>();
  #retiring = new Set<Promise<void>>();

  constructor(initial: BlobReader) {
    this.size = initial.size;
    this.#current = initial;
  }

  /** True once {@link switchTo} has happened. */
  get switched(): boolean {
    return this.#switched;
  }

  /** The reader that serves new reads (undefined once closed). */
  get current(): BlobReader | undefined {
    return this.#current;
  }

  async readAt(buf: Uint8Array, offset: number): Promise<number> {
    const r = this.#open();
    let set = this.#reads.get(r);
    if (set === undefined) this.#reads.set(r, (set = new Set()));
    const p = r.readAt(buf, offset);
    set.add(p);
    try {
      return await p;
    } finally {
      set.delete(p);
      if (set.size === 0 && this.#reads.get(r) === set) this.#reads.delete(r);
    }
  }

  async evict(offset: number, length: number): Promise<void> {
    const r = this.#open();
    if (isEvictable(r)) await r.evict(offset, length);
  }

  /**
   * Serves all later reads from `next` (which must have the same size) and closes the
   * previous reader once its reads in flight have finished. On error `next` is closed
   * and the reader is unchanged.
   */
  async switchTo(next: BlobReader): Promise<void> {
    if (this.#current === undefined) {
      await next.close();
      throw new FailedPreconditionError('Cannot switch reader: it is closed');
    }
    if (next.size !== this.size) {
      await next.close();
      throw new DataCorruptionError(`Cannot switch reader: new source has ${next.size} bytes, blob has ${this.size}`);
    }
    const old = this.#current;
    this.#current = next;
    this.#switched = true;
    await this.#retire(old);
  }

  /** Closes the current reader (after its reads in flight) and any being retired. Idempotent. */
  async close(): Promise<void> {
    const r = this.#current;
    this.#current = undefined;
    if (r !== undefined) await this.#retire(r);
    await Promise.allSettled([...this.#retiring]);
  }

  #retire(r: BlobReader): Promise<void> {
    const reads = [...(this.#reads.get(r) ?? [])];
    const p = Promise.allSettled(reads).then(() => r.close());
    this.#retiring.add(p);
    const done = (): void => void this.#retiring.delete(p);
    p.then(done, done);
    return p;
  }

  #open(): BlobReader {
    const r = this.#current;
    if (r === undefined) throw new FailedPreconditionError('Cannot read: switchable reader is closed');
    return r;
  }
}
