/**
 * Opening a sealed read-only LSMT layer (lsmt.md §7): a committed blob (§6.1), a file
 * sealed in place (§14), or an old writer's blob.
 *
 * The blob handed in is the plain LSMT bytes (after tar unwrapping and ZFile decoding).
 * The layer owns it from a successful open on: `close()` closes it. When the open
 * fails, the blob stays open and the caller closes it.
 *
 * @example
 * ```ts
 * const layer = await openRoLayer(await openFileReader('L1.commit'));
 * layer.segments;        // sorted entries, tags 0
 * layer.trailer.flags;   // 0x06
 * await layer.close();
 * ```
 */
import type { BlobReader } from '../../io/blob-reader.ts';
import { readBytes } from '../../io/blob-reader.ts';
import { DataCorruptionError } from '../../io/errors.ts';
import type { HeaderTrailer } from './header-trailer.ts';
import { decodeHeaderTrailer, HEADER_TRAILER_SIZE, validateHeaderTrailer } from './header-trailer.ts';
import type { ReadOnlyLayer } from './layer.ts';
import { MergedIndex } from './merged-index.ts';
import type { Segment } from './segment.ts';
import { decodeSegment, INVALID_OFFSET, SECTOR, SEGMENT_SIZE } from './segment.ts';

/** Most index entries (padding included) a sealed blob may declare (lsmt.md §7 step 3). */
export const MAX_RO_INDEX_ENTRIES = 1_000_000;
/** First sector of the data area: the header occupies sectors 0..7. */
const DATA_START_SECTOR = HEADER_TRAILER_SIZE / SECTOR;

/** A sealed layer as opened by {@link openRoLayer}, with the records `obd info` shows. */
export interface RoLayer extends ReadOnlyLayer {
  /** The record at offset 0 (flags 0x07 for a commit, 0x03/0x13 when sealed in place). */
  readonly header: HeaderTrailer;
  /** The record at size − 4096; the layer's attributes come from it. */
  readonly trailer: HeaderTrailer;
  /** `index_size` of the trailer: entries stored, padding included. */
  readonly indexEntries: number;
  /** Mapped, non-zeroed sectors (the `fstat` block count, lsmt.md §12). */
  readonly dataSectors: number;
}

/** Options of {@link openRoLayer}. */
export interface OpenRoLayerOptions {
  /** Names the blob in error messages; default "LSMT layer". */
  what?: string;
}

class SealedLayer implements RoLayer {
  readonly header: HeaderTrailer;
  readonly trailer: HeaderTrailer;
  readonly segments: readonly Segment[];
  readonly blob: BlobReader;
  readonly indexEntries: number;
  #index: MergedIndex | undefined;
  #dataSectors: number | undefined;

  constructor(fields: { header: HeaderTrailer; trailer: HeaderTrailer; segments: Segment[]; blob: BlobReader }) {
    this.header = fields.header;
    this.trailer = fields.trailer;
    this.segments = fields.segments;
    this.blob = fields.blob;
    this.indexEntries = fields.trailer.indexSize;
  }

  get virtualSize(): number {
    return this.trailer.virtualSize;
  }
  get uuid(): string {
    return this.trailer.uuid;
  }
  get parentUuid(): string {
    return this.trailer.parentUuid;
  }

  get dataSectors(): number {
    if (this.#dataSectors === undefined) {
      let sum = 0;
      for (const s of this.segments) if (!s.zeroed) sum += s.length;
      this.#dataSectors = sum;
    }
    return this.#dataSectors;
  }

  lookup(offset: number, length: number, out: Segment[]): void {
    this.#index ??= MergedIndex.fromSorted(this.segments);
    this.#index.lookupSegments(offset, length, out);
  }

  close(): Promise<void> {
    return this.blob.close();
  }
}

/**
 * Opens a sealed read-only LSMT layer (lsmt.md §7). Checks the header (magics, header
 * and data-file bits) and the trailer (magics, trailer, data-file and sealed bits), the
 * index bounds, the entry order and every entry's mapped range, and throws a
 * `DataCorruptionError` naming the on-disk entry number on any violation. Padding
 * entries are dropped and tags reset to 0.
 */
export async function openRoLayer(blob: BlobReader, options: OpenRoLayerOptions = {}): Promise<RoLayer> {
  const what = options.what ?? 'LSMT layer';
  const size = blob.size;
  if (size < 2 * HEADER_TRAILER_SIZE) {
    throw new DataCorruptionError(
      `Cannot open ${what}: blob is ${size} bytes, smaller than a header and a trailer (${2 * HEADER_TRAILER_SIZE})`,
    );
  }
  const header = decodeHeaderTrailer(
    await readBytes(blob, 0, HEADER_TRAILER_SIZE, `${what} header`),
    `${what} header`,
  );
  validateHeaderTrailer(header, { header: true, data: true, what: `${what} header` });

  const trailerOffset = size - HEADER_TRAILER_SIZE;
  const trailer = decodeHeaderTrailer(
    await readBytes(blob, trailerOffset, HEADER_TRAILER_SIZE, `${what} trailer`),
    `${what} trailer`,
  );
  validateHeaderTrailer(trailer, { header: false, data: true, sealed: true, what: `${what} trailer` });

  const { indexOffset, indexSize } = trailer;
  if (indexSize > MAX_RO_INDEX_ENTRIES) {
    throw new DataCorruptionError(
      `Cannot open ${what}: index has ${indexSize} entries, at most ${MAX_RO_INDEX_ENTRIES}`,
    );
  }
  if (indexOffset > trailerOffset || SEGMENT_SIZE * indexSize > trailerOffset - indexOffset) {
    throw new DataCorruptionError(
      `Cannot open ${what}: index of ${indexSize} entries at byte ${indexOffset} does not fit before the trailer at byte ${trailerOffset}`,
    );
  }
  const bytes = await readBytes(blob, indexOffset, SEGMENT_SIZE * indexSize, `${what} index`);
  const segments = decodeIndex(bytes, { dataEnd: Math.floor(indexOffset / SECTOR), what });
  return new SealedLayer({ header, trailer, segments, blob });
}

/**
 * Decodes and validates a sealed index (lsmt.md §7 steps 5-6): drops padding entries,
 * zeroes tags, checks order and that data entries lie inside sectors
 * `[8, dataEnd)` (zeroed entries: `8 ≤ moffset ≤ dataEnd`).
 */
function decodeIndex(bytes: Uint8Array, ctx: { dataEnd: number; what: string }): Segment[] {
  const { dataEnd, what } = ctx;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const count = bytes.length / SEGMENT_SIZE;
  const out: Segment[] = [];
  let prev: Segment | undefined;
  let prevNo = -1;
  for (let no = 0; no < count; no++) {
    const s = decodeSegment(view, no * SEGMENT_SIZE);
    if (s.offset === INVALID_OFFSET) continue;
    s.tag = 0;
    if (prev !== undefined && prev.offset + prev.length > s.offset) {
      const relation = s.offset < prev.offset ? 'is out of order after' : 'overlaps';
      throw new DataCorruptionError(
        `Cannot open ${what}: index entry ${no} ${relation} entry ${prevNo} (sectors ${s.offset}+${s.length} after ${prev.offset}+${prev.length})`,
      );
    }
    const mend = s.moffset + s.length;
    const inside = s.zeroed
      ? DATA_START_SECTOR <= s.moffset && s.moffset <= dataEnd
      : DATA_START_SECTOR <= s.moffset && s.moffset < dataEnd && DATA_START_SECTOR < mend && mend <= dataEnd;
    if (!inside) {
      const where = s.zeroed
        ? `zeroed entry ${no} has moffset ${s.moffset} outside the data area [${DATA_START_SECTOR}, ${dataEnd}]`
        : `entry ${no} maps sectors [${s.moffset}, ${mend}) outside the data area [${DATA_START_SECTOR}, ${dataEnd})`;
      throw new DataCorruptionError(`Cannot open ${what}: index ${where}`);
    }
    out.push(s);
    prev = s;
    prevNo = no;
  }
  return out;
}
