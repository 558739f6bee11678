/**
 * Byte-granular access to a block device that only takes aligned requests (LSMT needs
 * 512-byte multiples). Aligned requests — everything a loop device with direct I/O
 * sends — go straight to the device. Unaligned ones (a buffered `write()` of 3 bytes,
 * an O_DIRECT-less `pread` on a FOPEN_DIRECT_IO file) use a bounce buffer: reads widen
 * to whole sectors; writes read-modify-write the partial edge sectors while holding an
 * exclusive lock, so no other write can land in those sectors in between; discards
 * trim the aligned middle and write zeros over the partial edges.
 */
import type { BlockDevice } from '../io/block-device.ts';
import { readFully } from '../io/blob-reader.ts';

type Release = () => void;

/** Many shared holders or one exclusive holder, granted in arrival order. */
class SharedExclusiveLock {
  #shared = 0;
  #exclusive = false;
  readonly #queue: Array<{ exclusive: boolean; grant: () => void }> = [];

  acquire(exclusive: boolean): Promise<Release> | Release {
    if (this.#queue.length === 0 && this.#compatible(exclusive)) return this.#take(exclusive);
    return new Promise((resolve) => {
      this.#queue.push({ exclusive, grant: () => resolve(this.#take(exclusive)) });
    });
  }

  #compatible(exclusive: boolean): boolean {
    return !this.#exclusive && (!exclusive || this.#shared === 0);
  }

  #take(exclusive: boolean): Release {
    if (exclusive) this.#exclusive = true;
    else this.#shared++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      if (exclusive) this.#exclusive = false;
      else this.#shared--;
      this.#pump();
    };
  }

  #pump(): void {
    for (let next = this.#queue[0]; next !== undefined && this.#compatible(next.exclusive); next = this.#queue[0]) {
      this.#queue.shift();
      next.grant();
    }
  }
}

/** Aligned I/O on a device; callers keep every range inside `device.size`. */
export class AlignedAccess {
  readonly #device: BlockDevice;
  readonly #align: number;
  readonly #lock = new SharedExclusiveLock();

  constructor(device: BlockDevice, alignment: number) {
    if (!Number.isSafeInteger(alignment) || alignment < 1) {
      throw new RangeError(`Cannot serve device: alignment ${alignment} is not a positive integer`);
    }
    this.#device = device;
    this.#align = alignment;
  }

  #aligned(offset: number, end: number): boolean {
    return offset % this.#align === 0 && (end % this.#align === 0 || end === this.#device.size);
  }

  /** The aligned span covering `[offset, end)`, clipped to the device size. */
  #span(offset: number, end: number): { start: number; end: number } {
    const a = this.#align;
    return { start: offset - (offset % a), end: Math.min(Math.ceil(end / a) * a, this.#device.size) };
  }

  /** Fills `buf` from `offset`; returns `buf.length`. */
  async read(buf: Uint8Array, offset: number): Promise<number> {
    const end = offset + buf.length;
    if (this.#aligned(offset, end)) {
      await readFully(this.#device, buf, offset, 'device');
      return buf.length;
    }
    const span = this.#span(offset, end);
    const bounce = new Uint8Array(span.end - span.start);
    await readFully(this.#device, bounce, span.start, 'device');
    buf.set(bounce.subarray(offset - span.start, end - span.start));
    return buf.length;
  }

  /** Writes all of `buf` at `offset`; returns `buf.length`. */
  async write(buf: Uint8Array, offset: number): Promise<number> {
    const end = offset + buf.length;
    if (this.#aligned(offset, end)) {
      const release = await this.#lock.acquire(false);
      try {
        await this.#device.writeAt(buf, offset);
      } finally {
        release();
      }
      return buf.length;
    }
    const release = await this.#lock.acquire(true);
    try {
      const span = this.#span(offset, end);
      const bounce = new Uint8Array(span.end - span.start);
      if (offset > span.start) {
        const headEnd = Math.min(span.start + this.#align, span.end);
        await readFully(this.#device, bounce.subarray(0, headEnd - span.start), span.start, 'device');
      }
      if (end < span.end) {
        const tailStart = Math.max(span.start, end - (end % this.#align));
        await readFully(this.#device, bounce.subarray(tailStart - span.start), tailStart, 'device');
      }
      bounce.set(buf, offset - span.start);
      await this.#device.writeAt(bounce, span.start);
    } finally {
      release();
    }
    return buf.length;
  }

  /** Makes `[offset, offset+length)` read as zeros. */
  async discard(offset: number, length: number): Promise<void> {
    const a = this.#align;
    const end = offset + length;
    const innerStart = Math.ceil(offset / a) * a;
    const innerEnd = end === this.#device.size ? end : end - (end % a);
    if (innerStart >= innerEnd) {
      await this.write(new Uint8Array(length), offset);
      return;
    }
    if (offset < innerStart) await this.write(new Uint8Array(innerStart - offset), offset);
    if (innerEnd < end) await this.write(new Uint8Array(end - innerEnd), innerEnd);
    const release = await this.#lock.acquire(false);
    try {
      await this.#device.trim(innerStart, innerEnd - innerStart);
    } finally {
      release();
    }
  }

  flush(): Promise<void> {
    return this.#device.flush();
  }
}
