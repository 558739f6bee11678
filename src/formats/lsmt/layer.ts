/**
 * The shared vocabulary of the LSMT modules.
 *
 * Glossary:
 * - *sector*: 512 bytes; every index quantity is in sectors, every reader offset in bytes.
 * - *segment*: one index entry (`segment.ts`), mapping logical sectors to sectors of a
 *   data file chosen by `tag`.
 * - *lowers*: read-only layers, listed bottom first as in `config.v1.json`.
 * - *upper*: the writable layer on top (append mode or sparse).
 *
 * Lifecycle of a device: open lowers (`openRoLayer`), open or create an upper
 * (`WritableLayer`), stack them (`LsmtStack`), read/write through the `BlockDevice`
 * contract, then commit the upper into a sealed blob (`commitLayer`) that becomes a
 * lower of the next stack.
 */
import type { BlobReader } from '../../io/blob-reader.ts';
import type { Segment } from './segment.ts';

/**
 * Anything that maps logical sectors: answers which segments cover a range.
 *
 * `lookup` appends to `out`, in offset order, the segments that intersect
 * `[offset, offset+length)` (sectors), trimmed to that range (a trimmed head advances
 * `moffset` unless zeroed). Unmapped gaps produce nothing.
 */
export interface SegmentLookup {
  lookup(offset: number, length: number, out: Segment[]): void;
}

/** A sealed read-only layer (lsmt.md §7). */
export interface ReadOnlyLayer extends SegmentLookup {
  readonly virtualSize: number;
  readonly uuid: string;
  readonly parentUuid: string;
  /** Sorted, non-overlapping valid entries, tags set to 0. */
  readonly segments: readonly Segment[];
  /** The decoded layer bytes (plain LSMT); data of a segment is at `moffset * 512`. */
  readonly blob: BlobReader;
  close(): Promise<void>;
}

/** A writable layer (lsmt.md §8 append mode, §9 sparse mode). */
export interface WritableLayer extends SegmentLookup {
  readonly virtualSize: number;
  readonly uuid: string;
  readonly parentUuid: string;
  readonly sparse: boolean;
  /** The data file as a reader: segment data is at `moffset * 512`. */
  readonly data: BlobReader;
  /** Current index in offset order (tags 0). */
  segments(): Segment[];
  /** Writes `buf` at byte `offset` (both 512-aligned). */
  write(buf: Uint8Array, offset: number): Promise<void>;
  /** Discards `[offset, offset+length)` bytes (512-aligned): a zeroed entry. */
  trim(offset: number, length: number): Promise<void>;
  /** Makes all completed writes durable. */
  flush(): Promise<void>;
  /** Rewrites `virtual_size` in the persisted headers (update_vsize). */
  setVirtualSize(bytes: number): Promise<void>;
  close(): Promise<void>;
}
