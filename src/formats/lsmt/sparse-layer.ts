/**
 * The sparse writable layer (lsmt.md §6.3, §9): one data file holding a 4096-byte header
 * (flags 0x13) followed by the raw virtual device, logical byte x at file byte 4096 + x.
 * Nothing but the data is persisted; the index is rebuilt at open from the file's
 * allocated extents.
 *
 * Node has neither `lseek(SEEK_DATA/SEEK_HOLE)` nor `fallocate(PUNCH_HOLE)`; both come
 * from the native binding, as upstream uses them:
 *
 * - open: {@link seekDataExtents} walks SEEK_DATA/SEEK_HOLE, so explicitly written zero
 *   blocks stay mapped (and mask lower layers) and punched ranges are unmapped;
 * - trim: punches a hole (PUNCH_HOLE|KEEP_SIZE) at 4096 + offset and maps the range as
 *   zeroed in memory, so it reads zeros until reopen and falls through afterwards.
 *
 * Where the file system cannot punch holes (EOPNOTSUPP), trim instead writes zeros over
 * the parts of the range that the in-memory index maps to data (the rest of the file
 * reads zero already): no space is reclaimed and, after reopen, those zero blocks stay
 * mapped; upstream fails the trim there. Both operations are injectable
 * ({@link SparseLayerHooks}), e.g. {@link scanNonZeroExtents}, which treats all-zero
 * 4 KiB blocks as holes, for tests or file systems without SEEK_DATA.
 */
import type { FileHandle } from 'node:fs/promises';
import { getSystemErrorName } from 'node:util';
import { DataCorruptionError, FailedPreconditionError, InvalidArgumentError } from '../../io/errors.ts';
import { native } from '../../native/index.ts';
import type { WritableLayer } from './layer.ts';
import {
  encodeHeaderTrailer,
  FLAG_DATA,
  FLAG_HEADER,
  FLAG_SPARSE,
  HEADER_TRAILER_SIZE,
  isSparse,
  newHeaderTrailer,
  validateHeaderTrailer,
} from './header-trailer.ts';
import { RwIndex } from './rw-index.ts';
import { MAX_SEGMENT_LENGTH, SECTOR, type Segment } from './segment.ts';
import {
  checkAligned,
  createExclusive,
  LayerFileReader,
  layerIdentity,
  MAX_IO,
  openExisting,
  readHeader,
  readUpTo,
  writeAll,
} from './_layer-file.ts';

/** Granularity of the zero scan (a file-system block). */
const SCAN_BLOCK = 4096;
/** Bytes read per step of the zero scan. */
const SCAN_CHUNK = 4 << 20;
const EOPNOTSUPP = 95;

/** A byte range `[begin, end)` of a file. */
export type Extent = readonly [begin: number, end: number];

/**
 * Platform hooks of a sparse layer.
 *
 * `findExtents(fh, start, end)` lists the data extents of `[start, end)` in increasing
 * order (SEEK_DATA/SEEK_HOLE semantics). `punchHole(fh, offset, length)` deallocates a
 * byte range, keeping the file size (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE), or
 * resolves `false` when it cannot, and the layer then writes zeros over the mapped data.
 */
export interface SparseLayerHooks {
  findExtents?: (fh: FileHandle, start: number, end: number) => Promise<Extent[]>;
  punchHole?: (fh: FileHandle, offset: number, length: number) => Promise<boolean | void>;
}

/** Options of {@link createSparseLayer}. */
export interface CreateSparseLayerOptions {
  data: string;
  /** Created empty (exclusively) when given, as `overlaybd-create -s` does. */
  index?: string;
  virtualSize: number;
  parentUuid?: string;
  uuid?: string;
  hooks?: SparseLayerHooks;
}

/** Options of {@link openSparseLayer}. */
export interface OpenSparseLayerOptions {
  data: string;
  /** Unused; accepted for symmetry with append-mode layers. */
  index?: string;
  hooks?: SparseLayerHooks;
  /** Open read-only: writes, trims and resizes reject. */
  readOnly?: boolean;
}

interface SparseLayerInit {
  dataPath: string;
  fh: FileHandle;
  index: RwIndex;
  virtualSize: number;
  uuid: string;
  parentUuid: string;
  fileSize: number;
  hooks: SparseLayerHooks;
  readOnly: boolean;
}

/** An open sparse writable layer. Obtain with {@link createSparseLayer} or {@link openSparseLayer}. */
export class SparseLayer implements WritableLayer {
  readonly uuid: string;
  readonly parentUuid: string;
  readonly sparse = true;
  readonly data: LayerFileReader;
  /** Kept for symmetry with append-mode layers; a sparse layer persists no index entries. */
  rwTag = 0;
  #fh: FileHandle | undefined;
  #index: RwIndex;
  #virtualSize: number;
  #fileSize: number;
  #hooks: SparseLayerHooks;
  #inFlight = new Set<Promise<unknown>>();
  #closed = false;
  #readOnly: boolean;

  constructor(init: SparseLayerInit) {
    this.#readOnly = init.readOnly;
    this.uuid = init.uuid;
    this.parentUuid = init.parentUuid;
    this.#fh = init.fh;
    this.#index = init.index;
    this.#virtualSize = init.virtualSize;
    this.#fileSize = init.fileSize;
    this.#hooks = init.hooks;
    this.data = new LayerFileReader(
      init.dataPath,
      () => this.#fh,
      () => this.#fileSize,
    );
  }

  get virtualSize(): number {
    return this.#virtualSize;
  }

  segments(): Segment[] {
    return this.#index.segments();
  }

  lookup(offset: number, length: number, out: Segment[]): void {
    this.#index.lookup(offset, length, out);
  }

  /** Writes in place at file byte 4096 + `offset`, in pieces of at most 4 MiB (§9). */
  async write(buf: Uint8Array, offset: number): Promise<void> {
    this.#checkWritable('write');
    checkAligned('write', offset, buf.length);
    return this.#track(async () => {
      const fh = this.#fh as FileHandle;
      await Promise.all(
        pieces(buf.length, MAX_IO).map(async ([done, n]) => {
          const pos = HEADER_TRAILER_SIZE + offset + done;
          await writeAll(fh, buf.subarray(done, done + n), pos);
          this.#fileSize = Math.max(this.#fileSize, pos + n);
          this.#index.insert({ offset: (offset + done) / SECTOR, length: n / SECTOR, moffset: pos / SECTOR, zeroed: false, tag: 0 });
        }),
      );
      this.#virtualSize = Math.max(this.#virtualSize, offset + buf.length);
    });
  }

  /** Punches `[offset, offset+length)` and maps it as zeroed until reopen (§9). */
  async trim(offset: number, length: number): Promise<void> {
    this.#checkWritable('trim');
    checkAligned('trim', offset, length);
    return this.#track(async () => {
      const fh = this.#fh as FileHandle;
      if (length === 0) return;
      const punch = this.#hooks.punchHole ?? nativePunchHole;
      if ((await punch(fh, HEADER_TRAILER_SIZE + offset, length)) === false) {
        await this.#zeroMapped(fh, offset / SECTOR, length / SECTOR);
      }
      for (const [done, n] of pieces(length / SECTOR, MAX_SEGMENT_LENGTH)) {
        const sector = offset / SECTOR + done;
        this.#index.insert({
          offset: sector,
          length: n,
          moffset: HEADER_TRAILER_SIZE / SECTOR + sector,
          zeroed: true,
          tag: 0,
        });
      }
    });
  }

  async flush(): Promise<void> {
    this.#checkOpen('flush');
    if (this.#readOnly) return;
    await Promise.allSettled([...this.#inFlight]);
    await (this.#fh as FileHandle).sync();
  }

  /** Rewrites the header and truncates the file to `bytes + 4096` (§9). */
  async setVirtualSize(bytes: number): Promise<void> {
    this.#checkWritable('resize');
    if (!Number.isSafeInteger(bytes) || bytes < 0) {
      throw new InvalidArgumentError(`Cannot resize layer to ${bytes} bytes: size is not a non-negative integer`);
    }
    await Promise.allSettled([...this.#inFlight]);
    const fh = this.#fh as FileHandle;
    const header = await readHeader(fh, 'LSMT header');
    await writeAll(fh, encodeHeaderTrailer({ ...header, virtualSize: bytes }), 0);
    await fh.truncate(bytes + HEADER_TRAILER_SIZE);
    this.#fileSize = bytes + HEADER_TRAILER_SIZE;
    this.#virtualSize = bytes;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await Promise.allSettled([...this.#inFlight]);
    const fh = this.#fh;
    this.#fh = undefined;
    await fh?.close();
  }

  /** Fallback hole punch: zero the data the index maps inside `[sector, sector+count)`. */
  async #zeroMapped(fh: FileHandle, sector: number, count: number): Promise<void> {
    const mapped: Segment[] = [];
    this.#index.lookup(sector, count, mapped);
    let zeros: Uint8Array | undefined;
    for (const s of mapped) {
      if (s.zeroed) continue;
      for (const [done, n] of pieces(s.length * SECTOR, MAX_IO)) {
        zeros ??= new Uint8Array(MAX_IO);
        await writeAll(fh, zeros.subarray(0, n), s.moffset * SECTOR + done);
      }
    }
  }

  #track(fn: () => Promise<void>): Promise<void> {
    const p = fn();
    this.#inFlight.add(p);
    const done = (): void => {
      this.#inFlight.delete(p);
    };
    p.then(done, done);
    return p;
  }

  #checkOpen(action: string): void {
    if (this.#closed) throw new FailedPreconditionError(`Cannot ${action} layer ${this.uuid}: layer is closed`);
  }

  #checkWritable(action: string): void {
    this.#checkOpen(action);
    if (this.#readOnly) {
      throw new FailedPreconditionError(`Cannot ${action} layer ${this.uuid}: layer is open read-only`);
    }
  }
}

/** Splits `total` into `[start, length]` pieces of at most `max`. */
function pieces(total: number, max: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (let done = 0; done < total; done += max) out.push([done, Math.min(max, total - done)]);
  return out;
}

/**
 * Creates a sparse layer (`overlaybd-create -s`, lsmt.md §9): the data file exclusively
 * (mode 0644) with header flags 0x13, truncated to `virtualSize + 4096`; the index file,
 * when given, exclusively and empty.
 */
export async function createSparseLayer(options: CreateSparseLayerOptions): Promise<SparseLayer> {
  const fields = layerIdentity(options);
  const fh = await createExclusive(options.data, 'layer data file');
  try {
    const header = newHeaderTrailer({ ...fields, flags: FLAG_HEADER | FLAG_DATA | FLAG_SPARSE });
    await writeAll(fh, encodeHeaderTrailer(header), 0);
    await fh.truncate(fields.virtualSize + HEADER_TRAILER_SIZE);
    if (options.index !== undefined) await (await createExclusive(options.index, 'layer index file')).close();
  } catch (e) {
    await fh.close();
    throw e;
  }
  return new SparseLayer({
    dataPath: options.data,
    fh,
    index: new RwIndex(),
    ...fields,
    fileSize: fields.virtualSize + HEADER_TRAILER_SIZE,
    hooks: options.hooks ?? {},
    readOnly: false,
  });
}

/**
 * Opens a sparse layer (lsmt.md §9): every data extent `[b, e)` after the header becomes
 * segments `{(b−4096)/512, len, b/512}` of at most 16383 sectors. Virtual size and UUIDs
 * come from the data-file header.
 */
export async function openSparseLayer(options: OpenSparseLayerOptions): Promise<SparseLayer> {
  const what = `LSMT data file ${options.data}`;
  const readOnly = options.readOnly === true;
  const fh = await openExisting(options.data, 'layer data file', readOnly ? 'r' : 'r+');
  try {
    const header = await readHeader(fh, what);
    validateHeaderTrailer(header, { header: true, what });
    if (!isSparse(header)) throw new DataCorruptionError(`Cannot open ${what} as a sparse layer: sparse flag is clear`);
    const hooks = options.hooks ?? {};
    const fileSize = (await fh.stat()).size;
    const extents = await (hooks.findExtents ?? seekDataExtents)(fh, HEADER_TRAILER_SIZE, fileSize);
    const index = new RwIndex();
    for (const [begin, end] of extents) {
      const b = Math.floor(begin / SECTOR);
      const e = Math.ceil(end / SECTOR);
      for (const [done, n] of pieces(e - b, MAX_SEGMENT_LENGTH)) {
        index.insert({ offset: b + done - HEADER_TRAILER_SIZE / SECTOR, length: n, moffset: b + done, zeroed: false, tag: 0 });
      }
    }
    return new SparseLayer({
      dataPath: options.data,
      fh,
      index,
      virtualSize: header.virtualSize,
      uuid: header.uuid,
      parentUuid: header.parentUuid,
      fileSize,
      hooks,
      readOnly,
    });
  } catch (e) {
    await fh.close();
    throw e;
  }
}

/** An `Error` like Node's system errors, for a negative errno `r` of the native binding. */
function systemError(errno: number, action: string): Error {
  const code = getSystemErrorName(errno);
  return Object.assign(new Error(`${action}: ${code}`), { code, errno });
}

/** The default hole punch: native fallocate; `false` on EOPNOTSUPP. */
async function nativePunchHole(fh: FileHandle, offset: number, length: number): Promise<boolean> {
  const r = native.punchHole(fh.fd, offset, length);
  if (r === -EOPNOTSUPP) return false;
  if (r < 0) throw systemError(r, `Cannot punch ${length} bytes at offset ${offset} of an LSMT data file`);
  return true;
}

/**
 * The default extent finder: the data extents of `[start, end)` by SEEK_DATA/SEEK_HOLE
 * (lsmt.md §9). A file system without hole support reports everything as data.
 */
export async function seekDataExtents(fh: FileHandle, start: number, end: number): Promise<Extent[]> {
  const out: Array<[number, number]> = [];
  let pos = start;
  while (pos < end) {
    const data = native.seekData(fh.fd, pos);
    if (data === -1) break; // ENXIO: no data at or after pos
    if (data < 0) throw systemError(data + 1000, `Cannot find the data extents of LSMT data file at ${pos}`);
    if (data >= end) break;
    const hole = native.seekHole(fh.fd, data);
    if (hole < 0) throw systemError(hole + 1000, `Cannot find the data extents of LSMT data file at ${data}`);
    out.push([data, Math.min(hole, end)]);
    pos = hole;
  }
  return out;
}

/**
 * An alternative extent finder: reads `[start, end)` and reports runs of 4 KiB blocks
 * (aligned to the file) that contain a non-zero byte. Unlike SEEK_DATA it unmaps
 * explicitly written zeros, and it reads the holes too.
 */
export async function scanNonZeroExtents(fh: FileHandle, start: number, end: number): Promise<Extent[]> {
  const out: Array<[number, number]> = [];
  const buf = new Uint8Array(SCAN_CHUNK);
  let runBegin = -1;
  let pos = start;
  while (pos < end) {
    const n = await readUpTo(fh, buf.subarray(0, Math.min(SCAN_CHUNK, end - pos)), pos);
    if (n === 0) break;
    const chunk = buf.subarray(0, n);
    if (native.isAllZero(chunk)) {
      if (runBegin >= 0) out.push([runBegin, pos]);
      runBegin = -1;
    } else {
      // Blocks are aligned to the file, so the first one may be short when `start` is not.
      for (let b = pos; b < pos + n; ) {
        const blockEnd = Math.min(pos + n, (Math.floor(b / SCAN_BLOCK) + 1) * SCAN_BLOCK);
        const zero = native.isAllZero(chunk.subarray(b - pos, blockEnd - pos));
        if (!zero && runBegin < 0) runBegin = b;
        if (zero && runBegin >= 0) {
          out.push([runBegin, b]);
          runBegin = -1;
        }
        b = blockEnd;
      }
    }
    pos += n;
  }
  if (runBegin >= 0) out.push([runBegin, pos]);
  return out;
}
