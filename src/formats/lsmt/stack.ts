/**
 * The stacked LSMT device: read-only layers merged into one index (lsmt.md §10), with
 * an optional writable layer on top (§11), served as a `BlockDevice` (§12).
 *
 * Files by tag (what a merged entry's `tag` selects, and what flatten/commit copies
 * from): `[top lower, …, bottom lower, upper data]`; the upper's tag is the number of
 * lowers, as upstream's `rw_tag`.
 *
 * Reads: offset and length must be multiples of 512. A request is cut into pieces of at
 * most 4 MiB; in each piece the upper's entries win, gaps are filled from the merged
 * read-only index, and what no layer maps (or a zeroed entry masks) reads as zeros.
 * All data reads of one request run concurrently, adjacent ranges of the same file
 * being coalesced into one read.
 *
 * @example
 * ```ts
 * const dev = await LsmtStack.create({ lowers: [l1, l2] });
 * const buf = new Uint8Array(4096);
 * await dev.readAt(buf, 0);
 * await dev.close(); // closes l1 and l2
 * ```
 */
import type { BlobReader } from '../../io/blob-reader.ts';
import { clampRead } from '../../io/blob-reader.ts';
import type { BlockDevice } from '../../io/block-device.ts';
import { DataCorruptionError, FailedPreconditionError, InvalidArgumentError } from '../../io/errors.ts';
import type { ReadOnlyLayer, WritableLayer } from './layer.ts';
import { LookupResult, MAX_STACK_LAYERS, MergedIndex } from './merged-index.ts';
import type { Segment } from './segment.ts';
import { SECTOR } from './segment.ts';

/** Largest piece one read is cut into (lsmt.md §12). */
export const MAX_IO_SIZE = 4 * 1024 * 1024;

/** What {@link LsmtStack.create} stacks. */
export interface LsmtStackOptions {
  /** Read-only layers, **bottom first** (as `config.v1.json` lists them). */
  lowers: readonly ReadOnlyLayer[];
  /** Writable layer on top; its virtual size is set to the stack's when it is 0. */
  upper?: WritableLayer;
}

/** One pending data read: `length` bytes of `file` at `position` into `buf[at..]`. */
interface ReadTask {
  file: BlobReader;
  position: number;
  at: number;
  length: number;
}

function checkAligned(action: string, offset: number, length: number): void {
  if (!(Number.isSafeInteger(offset) && offset >= 0 && offset % SECTOR === 0 && length % SECTOR === 0)) {
    throw new InvalidArgumentError(
      `Cannot ${action} LSMT device: offset ${offset} and length ${length} must be non-negative multiples of ${SECTOR}`,
    );
  }
}

/**
 * Reads `dst.length` bytes of `file` at `position`. A short read is retried once for
 * the remainder; when the retry returns 0 (end of file) the remainder reads as zeros,
 * as upstream does; any other outcome fails the read (upstream mishandles it).
 */
async function readData(file: BlobReader, dst: Uint8Array, position: number): Promise<void> {
  const n = await file.readAt(dst, position);
  if (n === dst.length) return;
  let got = `${n}`;
  if (n >= 0 && n < dst.length) {
    const rest = dst.subarray(n);
    const m = await file.readAt(rest, position + n);
    if (m === 0) {
      rest.fill(0);
      return;
    }
    if (m === rest.length) return;
    got = `${n} then ${m}`;
  }
  throw new DataCorruptionError(
    `Cannot read LSMT layer data: ${dst.length} bytes wanted at byte ${position}, got ${got}`,
  );
}

/** A stack of LSMT layers as a block device. */
export class LsmtStack implements BlockDevice {
  #lowers: readonly ReadOnlyLayer[];
  #upper: WritableLayer | undefined;
  #index: MergedIndex;
  /** Lower blobs by tag (0 = top lower). */
  #files: BlobReader[];
  #size: number;
  #closed = false;
  /** Scratch lookup result; only used synchronously while planning a read. */
  #scratch = new LookupResult(256);

  private constructor(lowers: readonly ReadOnlyLayer[], upper: WritableLayer | undefined, size: number) {
    this.#lowers = lowers;
    this.#upper = upper;
    this.#index = MergedIndex.build(lowers.map((l) => l.segments));
    this.#files = lowers.map((l) => l.blob).reverse();
    this.#size = size;
  }

  /**
   * Stacks `lowers` (bottom first) and an optional `upper`. The size is the upper's
   * (after setting a zero size to the lowers' size, lsmt.md §11), else that of the
   * topmost lower whose size is not zero (§10 step 2). The stack owns the layers:
   * `close()` closes them.
   */
  static async create(options: LsmtStackOptions): Promise<LsmtStack> {
    const { lowers, upper } = options;
    if (lowers.length === 0 && upper === undefined) {
      throw new InvalidArgumentError('Cannot stack LSMT layers: no layers given');
    }
    if (lowers.length > MAX_STACK_LAYERS) {
      throw new InvalidArgumentError(
        `Cannot stack LSMT layers: ${lowers.length} read-only layers given, at most ${MAX_STACK_LAYERS}`,
      );
    }
    let size = 0;
    for (let i = lowers.length - 1; i >= 0; i--) {
      const v = (lowers[i] as ReadOnlyLayer).virtualSize;
      if (v > 0) {
        size = v;
        break;
      }
    }
    if (upper !== undefined) {
      if (upper.virtualSize === 0 && size > 0) await upper.setVirtualSize(size);
      size = upper.virtualSize;
    }
    return new LsmtStack([...lowers], upper, size);
  }

  /** Virtual size in bytes. */
  get size(): number {
    return this.#size;
  }

  get readOnly(): boolean {
    return this.#upper === undefined;
  }

  /** The read-only layers, bottom first. */
  get lowers(): readonly ReadOnlyLayer[] {
    return this.#lowers;
  }

  get upper(): WritableLayer | undefined {
    return this.#upper;
  }

  /** The merged index of the read-only layers (tag 0 = top lower). */
  get index(): MergedIndex {
    return this.#index;
  }

  /**
   * The files entries point into, by tag: `[top lower blob, …, bottom lower blob]`,
   * then the upper's data file when there is an upper (tag = number of lowers).
   */
  files(): BlobReader[] {
    const files = [...this.#files];
    if (this.#upper !== undefined) files.push(this.#upper.data);
    return files;
  }

  /**
   * The whole device's index, sorted: the upper's entries (tag = number of lowers) win
   * over the merged read-only entries (tag = lower number from the top). The input of
   * merge/flatten (lsmt.md §15) together with {@link LsmtStack.files}.
   */
  segments(): Segment[] {
    const upper = this.#upper;
    if (upper === undefined) return this.#index.segments();
    // Merge again with the upper on top: merged tag 0 = upper, k = lower k-1 from the top.
    const merged = MergedIndex.build([...this.#lowers.map((l) => l.segments), upper.segments()]).segments();
    const rwTag = this.#lowers.length;
    for (const s of merged) s.tag = s.tag === 0 ? rwTag : s.tag - 1;
    return merged;
  }

  async readAt(buf: Uint8Array, offset: number): Promise<number> {
    if (this.#closed) throw new FailedPreconditionError('Cannot read: LSMT device is closed');
    checkAligned('read', offset, buf.length);
    const n = clampRead(this.#size, offset, buf.length);
    if (n === 0) return 0;
    const tasks: ReadTask[] = [];
    for (let at = 0; at < n; at += MAX_IO_SIZE) {
      this.#plan(buf, { at, length: Math.min(MAX_IO_SIZE, n - at), offset: offset + at }, tasks);
    }
    await Promise.all(tasks.map((t) => readData(t.file, buf.subarray(t.at, t.at + t.length), t.position)));
    return n;
  }

  /**
   * Fills holes and zeroed ranges of one piece (`buf[at, at+length)` = device bytes
   * from `offset`) with zeros and appends its data reads to `tasks`. Synchronous.
   */
  #plan(buf: Uint8Array, piece: { at: number; length: number; offset: number }, tasks: ReadTask[]): void {
    const first = piece.offset / SECTOR;
    const sectors = Math.ceil(piece.length / SECTOR);
    const limit = piece.at + piece.length;
    // Byte position in buf of logical sector `s`.
    const pos = (s: number): number => Math.min(limit, piece.at + (s - first) * SECTOR);
    // Sectors [from, to) read from `src` (file and first sector), or as zeros without one.
    const emit = (from: number, to: number, src?: { file: BlobReader; moffset: number }): void => {
      const a = pos(from);
      const b = pos(to);
      if (a >= b) return;
      if (src === undefined) {
        buf.fill(0, a, b);
        return;
      }
      const file = src.file;
      const position = src.moffset * SECTOR;
      const last = tasks[tasks.length - 1];
      const contiguous =
        last !== undefined && last.file === file && last.at + last.length === a && last.position + last.length === position;
      if (contiguous) {
        last.length += b - a;
        return;
      }
      tasks.push({ file, position, at: a, length: b - a });
    };
    const fillLower = (from: number, to: number): void => {
      if (from >= to) return;
      const r = this.#scratch;
      r.clear();
      const count = this.#index.lookup(from, to - from, r);
      let cursor = from;
      for (let i = 0; i < count; i++) {
        const o = r.offset[i] as number;
        const e = o + (r.length[i] as number);
        emit(cursor, o);
        if (r.zeroed[i] === 1) emit(o, e);
        else emit(o, e, { file: this.#files[r.tag[i] as number] as BlobReader, moffset: r.moffset[i] as number });
        cursor = e;
      }
      emit(cursor, to);
    };
    const upper = this.#upper;
    if (upper === undefined) {
      fillLower(first, first + sectors);
      return;
    }
    const found: Segment[] = [];
    upper.lookup(first, sectors, found);
    let cursor = first;
    for (const s of found) {
      fillLower(cursor, s.offset);
      if (s.zeroed) emit(s.offset, s.offset + s.length);
      else emit(s.offset, s.offset + s.length, { file: upper.data, moffset: s.moffset });
      cursor = s.offset + s.length;
    }
    fillLower(cursor, first + sectors);
  }

  async writeAt(buf: Uint8Array, offset: number): Promise<void> {
    const upper = this.#writable('write');
    checkAligned('write', offset, buf.length);
    if (buf.length > 0) await upper.write(buf, offset);
  }

  async trim(offset: number, length: number): Promise<void> {
    const upper = this.#writable('trim');
    checkAligned('trim', offset, length);
    if (length > 0) await upper.trim(offset, length);
  }

  async flush(): Promise<void> {
    await this.#writable('flush').flush();
  }

  #writable(action: string): WritableLayer {
    if (this.#closed) throw new FailedPreconditionError(`Cannot ${action}: LSMT device is closed`);
    if (this.#upper === undefined) throw new FailedPreconditionError(`Cannot ${action}: device is read-only`);
    return this.#upper;
  }

  /** Closes the upper and every lower; a second call does nothing. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const layers: { close(): Promise<void> }[] = [...this.#lowers];
    if (this.#upper !== undefined) layers.push(this.#upper);
    const results = await Promise.allSettled(layers.map((l) => l.close()));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed !== undefined) throw failed.reason;
  }
}

/** The merge/flatten input of `stack`: its sorted index with file tags (see {@link LsmtStack.segments}). */
export function mergedSegments(stack: LsmtStack): Segment[] {
  return stack.segments();
}
