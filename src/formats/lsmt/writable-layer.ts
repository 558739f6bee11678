/**
 * The append-mode writable layer (lsmt.md §6.2, §8): a data file that only grows
 * (header, then every write payload in arrival order) and an index file that logs one
 * 16-byte entry per write or trim, later entries overriding earlier ones (§8.3).
 *
 * Durability contract: every write appends its payload first and its index entry only
 * after the payload write completed, in call order; `flush()` then fsyncs the data file
 * before the index file. So after `flush()` resolves, a crash (even `kill -9` in the
 * middle of later writes) loses nothing that was flushed, and an index entry on disk
 * never refers to data that was not written — except after a power loss between
 * flushes, which can leave a torn index tail.
 *
 * Deviation from upstream (§8.4 step 4): upstream refuses to open a layer whose index
 * ends with a partial entry or with entries whose data lies beyond the data file's end.
 * `openWritableLayer` instead drops such a torn *tail* (only trailing entries; a bad
 * entry followed by good ones is still corruption) and truncates the index file to the
 * entries kept, so that the next append starts on an entry boundary.
 *
 * Concurrency: writes may be issued concurrently. Data positions are reserved
 * synchronously at call time (they never collide), payloads are written in parallel,
 * and index appends plus in-memory inserts happen one at a time in call order.
 */
import { rm, type FileHandle } from 'node:fs/promises';
import { DataCorruptionError, FailedPreconditionError, InvalidArgumentError } from '../../io/errors.ts';
import type { WritableLayer } from './layer.ts';
import {
  encodeHeaderTrailer,
  FLAG_DATA,
  FLAG_HEADER,
  HEADER_TRAILER_SIZE,
  isSparse,
  newHeaderTrailer,
  validateHeaderTrailer,
} from './header-trailer.ts';
import { RwIndex } from './rw-index.ts';
import {
  decodeSegment,
  encodeSegment,
  INVALID_OFFSET,
  MAX_SEGMENT_LENGTH,
  SECTOR,
  SEGMENT_SIZE,
  type Segment,
} from './segment.ts';
import {
  alignUp,
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
import { createSparseLayer, openSparseLayer, type SparseLayer, type SparseLayerHooks } from './sparse-layer.ts';

/** Most entries an RW index file may hold (lsmt.md §8.4, §18). */
const MAX_RW_ENTRIES = 128_000_000;
/** Entries decoded per read while loading an index file. */
const LOAD_BATCH = 65536;

/** Options of {@link createWritableLayer}. */
export interface CreateWritableLayerOptions {
  /** Data file path; created exclusively, mode 0644. */
  data: string;
  /** Index file path; created exclusively, mode 0644 (left empty for a sparse layer). */
  index: string;
  /** Size of the virtual device in bytes. */
  virtualSize: number;
  /** UUID of the layer below; absent or invalid → nil, like `overlaybd-create -u`. */
  parentUuid?: string;
  /** This layer's UUID; default a random version-4 UUID (stored upper-case). */
  uuid?: string;
  /** Create a sparse layer (lsmt.md §9, `overlaybd-create -s`) instead. */
  sparse?: boolean;
}

/** Options of {@link openWritableLayer}. */
export interface OpenWritableLayerOptions {
  data: string;
  index: string;
  /** Tag stored in appended index entries: number of RO layers below when stacked (§11). */
  rwTag?: number;
  /** Extent scanner / hole puncher of a sparse layer (see sparse-layer.ts). */
  sparseHooks?: SparseLayerHooks;
  /**
   * Open the files read-only (for commit or inspection): writes, trims and resizes
   * reject, and a torn index tail is dropped in memory but not truncated on disk.
   */
  readOnly?: boolean;
}

interface AppendLayerInit {
  dataPath: string;
  dataFh: FileHandle;
  indexFh: FileHandle;
  index: RwIndex;
  virtualSize: number;
  uuid: string;
  parentUuid: string;
  /** Bytes: where the next payload goes (a multiple of 512). */
  dataEnd: number;
  /** Bytes: where the next index entry goes. */
  indexEnd: number;
  rwTag: number;
  readOnly: boolean;
}

/**
 * An open append-mode writable layer. Obtain with {@link createWritableLayer} or
 * {@link openWritableLayer}.
 */
export class AppendLayer implements WritableLayer {
  readonly uuid: string;
  readonly parentUuid: string;
  readonly sparse = false;
  readonly data: LayerFileReader;
  #dataFh: FileHandle | undefined;
  #indexFh: FileHandle | undefined;
  #index: RwIndex;
  #virtualSize: number;
  /** Reserved end of the data file (bytes). */
  #dataEnd: number;
  /** End of the data covered by appended entries (bytes): `moffset` of zeroed entries. */
  #appendedDataEnd: number;
  #indexEnd: number;
  #rwTag: number;
  /** Serialises index appends and header rewrites; never rejects. */
  #tail: Promise<void> = Promise.resolve();
  #closed = false;
  #readOnly: boolean;

  constructor(init: AppendLayerInit) {
    this.#readOnly = init.readOnly;
    this.uuid = init.uuid;
    this.parentUuid = init.parentUuid;
    this.#dataFh = init.dataFh;
    this.#indexFh = init.indexFh;
    this.#index = init.index;
    this.#virtualSize = init.virtualSize;
    this.#dataEnd = init.dataEnd;
    this.#appendedDataEnd = init.dataEnd;
    this.#indexEnd = init.indexEnd;
    this.#rwTag = init.rwTag;
    this.data = new LayerFileReader(
      init.dataPath,
      () => this.#dataFh,
      () => this.#dataEnd,
    );
  }

  /** In-memory size: the header's `virtual_size`, grown by writes past it (§8.2). */
  get virtualSize(): number {
    return this.#virtualSize;
  }

  /** Tag written into new index-file entries (in-memory segments keep tag 0). */
  get rwTag(): number {
    return this.#rwTag;
  }

  set rwTag(tag: number) {
    if (!Number.isInteger(tag) || tag < 0 || tag > 255) {
      throw new InvalidArgumentError(`Cannot set layer tag ${tag}: tag is not an integer in 0..255`);
    }
    this.#rwTag = tag;
  }

  segments(): Segment[] {
    return this.#index.segments();
  }

  lookup(offset: number, length: number, out: Segment[]): void {
    this.#index.lookup(offset, length, out);
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    this.#checkWritable('write');
    checkAligned('write', offset, buf.length);
    const links: Promise<void>[] = [];
    for (let done = 0; done < buf.length; done += MAX_IO) {
      const piece = buf.subarray(done, Math.min(buf.length, done + MAX_IO));
      const pos = this.#dataEnd;
      this.#dataEnd += piece.length;
      const written = writeAll(this.#dataFh as FileHandle, piece, pos);
      written.catch(() => {}); // observed by the link below
      const segment: Segment = {
        offset: (offset + done) / SECTOR,
        length: piece.length / SECTOR,
        moffset: pos / SECTOR,
        zeroed: false,
        tag: 0,
      };
      links.push(
        this.#enqueue(async () => {
          await written;
          this.#appendedDataEnd = Math.max(this.#appendedDataEnd, pos + piece.length);
          await this.#record(segment);
        }),
      );
    }
    this.#virtualSize = Math.max(this.#virtualSize, offset + buf.length);
    await Promise.all(links);
  }

  async trim(offset: number, length: number): Promise<void> {
    this.#checkWritable('trim');
    checkAligned('trim', offset, length);
    const links: Promise<void>[] = [];
    const end = (offset + length) / SECTOR;
    for (let s = offset / SECTOR; s < end; s += MAX_SEGMENT_LENGTH) {
      const n = Math.min(MAX_SEGMENT_LENGTH, end - s);
      links.push(
        this.#enqueue(() =>
          this.#record({ offset: s, length: n, moffset: this.#appendedDataEnd / SECTOR, zeroed: true, tag: 0 }),
        ),
      );
    }
    await Promise.all(links);
  }

  async flush(): Promise<void> {
    this.#checkOpen('flush');
    if (this.#readOnly) return;
    await this.#tail;
    await (this.#dataFh as FileHandle).sync();
    await (this.#indexFh as FileHandle).sync();
  }

  async setVirtualSize(bytes: number): Promise<void> {
    this.#checkWritable('resize');
    if (!Number.isSafeInteger(bytes) || bytes < 0) {
      throw new InvalidArgumentError(`Cannot resize layer to ${bytes} bytes: size is not a non-negative integer`);
    }
    await this.#enqueue(async () => {
      for (const fh of [this.#dataFh as FileHandle, this.#indexFh as FileHandle]) {
        const header = await readHeader(fh, 'LSMT header');
        await writeAll(fh, encodeHeaderTrailer({ ...header, virtualSize: bytes }), 0);
      }
      this.#virtualSize = bytes;
    });
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#tail;
    const data = this.#dataFh;
    const index = this.#indexFh;
    this.#dataFh = undefined;
    this.#indexFh = undefined;
    await Promise.all([data?.close(), index?.close()]);
  }

  /**
   * Appends the entry of `segment` (with the RW tag) to the index file, then inserts it in
   * memory. Runs inside the chain, so a failed append leaves no trace: the next entry
   * reuses its slot and the in-memory index never shows what the file does not hold.
   */
  async #record(segment: Segment): Promise<void> {
    const bytes = new Uint8Array(SEGMENT_SIZE);
    encodeSegment({ ...segment, tag: this.#rwTag }, new DataView(bytes.buffer), 0);
    await writeAll(this.#indexFh as FileHandle, bytes, this.#indexEnd);
    this.#indexEnd += SEGMENT_SIZE;
    this.#index.insert(segment);
  }

  #enqueue(fn: () => Promise<void>): Promise<void> {
    const link = this.#tail.then(fn);
    this.#tail = link.catch(() => {});
    return link;
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

/**
 * Creates a writable layer (`overlaybd-create DATA INDEX VSIZE`, lsmt.md §8.1): both files
 * exclusively with mode 0644, data header flags 0x03, index header flags 0x01 with
 * `index_offset` 4096. With `sparse: true`, creates a sparse layer (§9) instead.
 *
 * @example
 * ```ts
 * const layer = await createWritableLayer({ data: 'l.data', index: 'l.index', virtualSize: 1 << 30 });
 * await layer.write(new Uint8Array(4096).fill(1), 0);
 * await layer.flush();
 * await layer.close();
 * ```
 */
export async function createWritableLayer(options: CreateWritableLayerOptions): Promise<AppendLayer | SparseLayer> {
  if (options.sparse === true) return createSparseLayer(options);
  const fields = layerIdentity(options);
  const dataFh = await createExclusive(options.data, 'layer data file');
  let indexFh: FileHandle;
  try {
    indexFh = await createExclusive(options.index, 'layer index file');
  } catch (e) {
    await dataFh.close();
    await rm(options.data, { force: true });
    throw e;
  }
  try {
    await writeAll(dataFh, encodeHeaderTrailer(newHeaderTrailer({ ...fields, flags: FLAG_HEADER | FLAG_DATA })), 0);
    const indexHeader = newHeaderTrailer({ ...fields, flags: FLAG_HEADER, indexOffset: HEADER_TRAILER_SIZE });
    await writeAll(indexFh, encodeHeaderTrailer(indexHeader), 0);
  } catch (e) {
    await Promise.all([dataFh.close(), indexFh.close()]);
    throw e;
  }
  return new AppendLayer({
    dataPath: options.data,
    dataFh,
    indexFh,
    index: new RwIndex(),
    ...fields,
    dataEnd: HEADER_TRAILER_SIZE,
    indexEnd: HEADER_TRAILER_SIZE,
    rwTag: 0,
    readOnly: false,
  });
}

/**
 * Reopens a writable layer (lsmt.md §8.4); a data file with the sparse bit opens as a
 * sparse layer (§9). Index entries are replayed in file order with tags reset to 0, then
 * checked against the data file. A torn tail of the index file is dropped and truncated
 * away (deviation, see the module comment).
 */
export async function openWritableLayer(options: OpenWritableLayerOptions): Promise<AppendLayer | SparseLayer> {
  const dataWhat = `LSMT data file ${options.data}`;
  const readOnly = options.readOnly === true;
  const flags = readOnly ? 'r' : 'r+';
  const dataFh = await openExisting(options.data, 'layer data file', flags);
  let sparse: boolean;
  try {
    const header = await readHeader(dataFh, dataWhat);
    validateHeaderTrailer(header, { header: true, what: dataWhat });
    sparse = isSparse(header);
  } catch (e) {
    await dataFh.close();
    throw e;
  }
  if (sparse) {
    await dataFh.close();
    return openSparseLayer({
      data: options.data,
      index: options.index,
      readOnly,
      ...(options.sparseHooks === undefined ? {} : { hooks: options.sparseHooks }),
    });
  }
  let indexFh: FileHandle | undefined;
  try {
    const indexWhat = `LSMT index file ${options.index}`;
    indexFh = await openExisting(options.index, 'layer index file', flags);
    const indexHeader = await readHeader(indexFh, indexWhat);
    validateHeaderTrailer(indexHeader, { header: true, data: false, sealed: false, what: indexWhat });
    if (indexHeader.indexOffset !== HEADER_TRAILER_SIZE) {
      throw new DataCorruptionError(`Cannot open ${indexWhat}: index_offset is ${indexHeader.indexOffset}, not 4096`);
    }
    const dataSize = (await dataFh.stat()).size;
    const { index, kept } = await loadIndex(indexFh, { dataSize, what: indexWhat });
    const indexEnd = HEADER_TRAILER_SIZE + kept * SEGMENT_SIZE;
    if (!readOnly && (await indexFh.stat()).size !== indexEnd) await indexFh.truncate(indexEnd);
    return new AppendLayer({
      dataPath: options.data,
      dataFh,
      indexFh,
      index,
      virtualSize: indexHeader.virtualSize,
      uuid: indexHeader.uuid,
      parentUuid: indexHeader.parentUuid,
      dataEnd: alignUp(dataSize),
      indexEnd,
      rwTag: options.rwTag ?? 0,
      readOnly,
    });
  } catch (e) {
    await Promise.all([dataFh.close(), indexFh?.close()]);
    throw e;
  }
}

/**
 * Replays an index file. Returns the index and how many file entries were kept (all but
 * a torn tail).
 */
async function loadIndex(
  fh: FileHandle,
  context: { dataSize: number; what: string },
): Promise<{ index: RwIndex; kept: number }> {
  const fileSize = (await fh.stat()).size;
  const count = Math.floor((fileSize - HEADER_TRAILER_SIZE) / SEGMENT_SIZE);
  if (count > MAX_RW_ENTRIES) {
    throw new DataCorruptionError(`Cannot open ${context.what}: ${count} entries, more than ${MAX_RW_ENTRIES}`);
  }
  const dataSectors = Math.floor(context.dataSize / SECTOR);
  const index = new RwIndex();
  /** Entry number of the first entry that points beyond the data; -1 while none. */
  let tornAt = -1;
  const buf = new Uint8Array(LOAD_BATCH * SEGMENT_SIZE);
  const view = new DataView(buf.buffer);
  for (let first = 0; first < count; first += LOAD_BATCH) {
    const n = Math.min(LOAD_BATCH, count - first);
    const got = await readUpTo(fh, buf.subarray(0, n * SEGMENT_SIZE), HEADER_TRAILER_SIZE + first * SEGMENT_SIZE);
    if (got < n * SEGMENT_SIZE) throw new DataCorruptionError(`Cannot read ${context.what}: file shrank while reading`);
    for (let i = 0; i < n; i++) {
      const s = decodeSegment(view, i * SEGMENT_SIZE);
      if (s.offset === INVALID_OFFSET) continue;
      s.tag = 0;
      const problem = checkEntry(s, dataSectors);
      const at = first + i;
      if (problem === undefined) {
        if (tornAt >= 0) {
          throw new DataCorruptionError(
            `Cannot open ${context.what}: entry ${tornAt} points beyond the data file but entry ${at} does not`,
          );
        }
        index.insert(s);
      } else if (problem === 'beyond-end') {
        if (tornAt < 0) tornAt = at;
      } else {
        throw new DataCorruptionError(`Cannot open ${context.what}: entry ${at} ${problem}`);
      }
    }
  }
  return { index, kept: tornAt < 0 ? count : tornAt };
}

/** lsmt.md §8.4 step 4: `undefined` when the entry fits the data file. */
function checkEntry(s: Segment, dataSectors: number): string | undefined {
  const first = HEADER_TRAILER_SIZE / SECTOR;
  if (s.moffset < first) return `has moffset ${s.moffset}, inside the header`;
  if (s.zeroed) return s.moffset > dataSectors ? 'beyond-end' : undefined;
  return s.moffset + s.length > dataSectors ? 'beyond-end' : undefined;
}
