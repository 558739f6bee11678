/**
 * Seal in place (`overlaybd-commit --seal`, lsmt.md §14): turns a writable layer's data
 * file into a sealed read-only LSMT file without copying data, by appending the sorted
 * index and a trailer. The header at offset 0 is left unchanged.
 *
 * Deviation from upstream: the index bytes are padded to a multiple of 512 with zeros;
 * upstream writes uninitialised memory there (readers never look at it).
 */
import { FailedPreconditionError } from '../../io/errors.ts';
import {
  decodeHeaderTrailer,
  encodeHeaderTrailer,
  FLAG_DATA,
  FLAG_SEALED,
  FLAG_SPARSE,
  HEADER_TRAILER_SIZE,
  hasLsmtMagic,
  isHeader,
  isSealed,
  isSparse,
  newHeaderTrailer,
} from './header-trailer.ts';
import { encodeSegments, type Segment } from './segment.ts';
import { alignUp, openExisting, readHeader, readUpTo, writeAll } from './_layer-file.ts';
import { openWritableLayer, type OpenWritableLayerOptions } from './writable-layer.ts';

/** Where the appended index landed. */
export interface SealResult {
  /** Bytes: the data file's (sector-aligned) end before sealing. */
  indexOffset: number;
  /** Exact number of entries (no padding counted). */
  indexSize: number;
}

/**
 * Seals the writable layer `paths.data` + `paths.index` in place (lsmt.md §14): appends
 * its index (offset order, tags 0) padded with zeros to a multiple of 512 bytes, then a
 * trailer with flags 0x06 (0x16 for a sparse layer), the exact entry count, and
 * `virtual_size`/UUIDs from the data-file header with an empty tag. Afterwards the data
 * file opens as a sealed RO layer; the index file is no longer needed.
 *
 * @example
 * ```ts
 * await sealInPlace({ data: 'layer.data', index: 'layer.index' });
 * ```
 */
export async function sealInPlace(paths: OpenWritableLayerOptions): Promise<SealResult> {
  const layer = await openWritableLayer({ ...paths, readOnly: true });
  let segments: Segment[];
  let sparse: boolean;
  try {
    segments = layer.segments();
    sparse = layer.sparse;
  } finally {
    await layer.close();
  }
  const what = `LSMT data file ${paths.data}`;
  const fh = await openExisting(paths.data, 'layer data file');
  try {
    const header = await readHeader(fh, what);
    const size = (await fh.stat()).size;
    if (size >= 2 * HEADER_TRAILER_SIZE) {
      const tail = new Uint8Array(HEADER_TRAILER_SIZE);
      await readUpTo(fh, tail, size - HEADER_TRAILER_SIZE);
      if (hasLsmtMagic(tail)) {
        const t = decodeHeaderTrailer(tail, what);
        const ours = t.uuid === header.uuid && t.indexOffset + alignUp(t.indexSize * 16) === size - HEADER_TRAILER_SIZE;
        if (!isHeader(t) && isSealed(t) && ours) {
          throw new FailedPreconditionError(`Cannot seal ${paths.data}: the data file already ends with a trailer`);
        }
      }
    }
    const indexOffset = alignUp(size);
    const entries = encodeSegments(segments);
    const out = new Uint8Array(alignUp(entries.length) + HEADER_TRAILER_SIZE);
    out.set(entries, 0);
    const trailer = newHeaderTrailer({
      flags: FLAG_DATA | FLAG_SEALED | (sparse || isSparse(header) ? FLAG_SPARSE : 0),
      indexOffset,
      indexSize: segments.length,
      virtualSize: header.virtualSize,
      uuid: header.uuid,
      parentUuid: header.parentUuid,
    });
    out.set(encodeHeaderTrailer(trailer), alignUp(entries.length));
    await writeAll(fh, out, indexOffset);
    await fh.sync();
    return { indexOffset, indexSize: segments.length };
  } finally {
    await fh.close();
  }
}
