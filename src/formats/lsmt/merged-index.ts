/**
 * The merged read-only index of a stack of LSMT layers (lsmt.md §10) and its lookup
 * (§12, §17).
 *
 * The merged entries are kept as a struct of typed arrays (`offset`, `end`, `length`,
 * `moffset`, `zeroed`, `tag`), sorted by offset and non-overlapping. Lookups answer
 * "which entries intersect `[offset, offset+length)`" by finding the first entry whose
 * end is greater than `offset`, then collecting entries while they start before the
 * end of the range and trimming the first and the last to the range.
 *
 * Why a bucket directory and not upstream's linearised B+ tree: the tree needs 16- or
 * 8-key SIMD node scans to pay off, which JavaScript does not have, and it requires the
 * first entry to start at sector 0. A flat directory over the offset space (one
 * `Uint32Array` slot per 2^k sectors, about two slots per entry) turns the common case
 * into one multiply, one directory load and a scan of about one entry, with a binary
 * search inside the bucket when the layout is skewed. Offsets are doubles, exact up to
 * 2^53, so 50-bit offsets need no special handling.
 *
 * @example
 * ```ts
 * const index = MergedIndex.build([bottom.segments, top.segments]);
 * const out = new LookupResult();
 * index.lookup(0, 128, out); // out.count entries, tag 0 = top layer
 * ```
 */
import { InvalidArgumentError } from '../../io/errors.ts';
import type { Segment } from './segment.ts';

/** Most read-only layers a stack may have (lsmt.md §18). */
export const MAX_STACK_LAYERS = 255;
/** Most layers one merge takes: tags are 8 bits (255 read-only layers plus an upper). */
const MAX_MERGE_LAYERS = 256;
/** Most entries a merged index may have (lsmt.md §10 step 4). */
export const MAX_MERGED_ENTRIES = 128_000_000;

/** Directory slots per entry, and the cap on the directory size. */
const SLOTS_PER_ENTRY = 2;
const MAX_SLOTS = 2 ** 24;
/** Above this many candidates inside one bucket, binary search instead of scanning. */
const SCAN_LIMIT = 8;

/**
 * A reusable, growable result of {@link MergedIndex.lookup}: parallel typed arrays
 * holding `count` trimmed entries. Reuse one instance per caller to avoid allocating
 * on every lookup; call {@link LookupResult.clear} between lookups (lookups append).
 */
export class LookupResult {
  count = 0;
  offset: Float64Array;
  length: Uint32Array;
  moffset: Float64Array;
  zeroed: Uint8Array;
  tag: Uint8Array;

  constructor(capacity = 64) {
    const n = Math.max(1, capacity);
    this.offset = new Float64Array(n);
    this.length = new Uint32Array(n);
    this.moffset = new Float64Array(n);
    this.zeroed = new Uint8Array(n);
    this.tag = new Uint8Array(n);
  }

  /** Entries that fit before the arrays must grow. */
  get capacity(): number {
    return this.offset.length;
  }

  /** Empties the result (keeps the arrays). */
  clear(): void {
    this.count = 0;
  }

  /** Doubles the capacity, keeping the entries. */
  grow(): void {
    const n = this.offset.length * 2;
    const offset = new Float64Array(n);
    const length = new Uint32Array(n);
    const moffset = new Float64Array(n);
    const zeroed = new Uint8Array(n);
    const tag = new Uint8Array(n);
    offset.set(this.offset);
    length.set(this.length);
    moffset.set(this.moffset);
    zeroed.set(this.zeroed);
    tag.set(this.tag);
    this.offset = offset;
    this.length = length;
    this.moffset = moffset;
    this.zeroed = zeroed;
    this.tag = tag;
  }

  /** Entry `i` as a `Segment` object. */
  segment(i: number): Segment {
    return {
      offset: this.offset[i] as number,
      length: this.length[i] as number,
      moffset: this.moffset[i] as number,
      zeroed: this.zeroed[i] === 1,
      tag: this.tag[i] as number,
    };
  }

  /** All entries as `Segment` objects. */
  segments(): Segment[] {
    const out: Segment[] = [];
    for (let i = 0; i < this.count; i++) out.push(this.segment(i));
    return out;
  }
}

/** The typed arrays of a sorted, non-overlapping entry list (the merged index's storage). */
export interface IndexArrays {
  readonly count: number;
  /** First logical sector of each entry. */
  readonly offset: Float64Array;
  /** `offset + length`, precomputed for the search. */
  readonly end: Float64Array;
  readonly length: Uint32Array;
  readonly moffset: Float64Array;
  /** 1 = the entry reads as zeros. */
  readonly zeroed: Uint8Array;
  /** Layer number, 0 = top. */
  readonly tag: Uint8Array;
}

/** A growable struct-of-arrays builder for merge output. */
class ArraysBuilder {
  count = 0;
  offset: Float64Array;
  length: Uint32Array;
  moffset: Float64Array;
  zeroed: Uint8Array;
  tag: Uint8Array;

  constructor(capacity: number) {
    const n = Math.max(16, capacity);
    this.offset = new Float64Array(n);
    this.length = new Uint32Array(n);
    this.moffset = new Float64Array(n);
    this.zeroed = new Uint8Array(n);
    this.tag = new Uint8Array(n);
  }

  reserve(): void {
    if (this.count < this.offset.length) return;
    if (this.count >= MAX_MERGED_ENTRIES) {
      throw new InvalidArgumentError(`Cannot merge LSMT indexes: more than ${MAX_MERGED_ENTRIES} entries`);
    }
    const n = Math.min(this.offset.length * 2, MAX_MERGED_ENTRIES);
    const grow = <T extends Float64Array | Uint32Array | Uint8Array>(a: T, make: (n: number) => T): T => {
      const b = make(n);
      b.set(a);
      return b;
    };
    this.offset = grow(this.offset, (k) => new Float64Array(k));
    this.length = grow(this.length, (k) => new Uint32Array(k));
    this.moffset = grow(this.moffset, (k) => new Float64Array(k));
    this.zeroed = grow(this.zeroed, (k) => new Uint8Array(k));
    this.tag = grow(this.tag, (k) => new Uint8Array(k));
  }

  finish(): IndexArrays {
    const n = this.count;
    const offset = this.offset.slice(0, n);
    const length = this.length.slice(0, n);
    const end = new Float64Array(n);
    for (let i = 0; i < n; i++) end[i] = (offset[i] as number) + (length[i] as number);
    return {
      count: n,
      offset,
      end,
      length,
      moffset: this.moffset.slice(0, n),
      zeroed: this.zeroed.slice(0, n),
      tag: this.tag.slice(0, n),
    };
  }
}

/** One input layer of the merge, as typed arrays. */
interface LayerArrays {
  n: number;
  offset: Float64Array;
  end: Float64Array;
  length: Uint32Array;
  moffset: Float64Array;
  zeroed: Uint8Array;
}

function toLayerArrays(segments: readonly Segment[], layer: number): LayerArrays {
  const n = segments.length;
  const a: LayerArrays = {
    n,
    offset: new Float64Array(n),
    end: new Float64Array(n),
    length: new Uint32Array(n),
    moffset: new Float64Array(n),
    zeroed: new Uint8Array(n),
  };
  let prevEnd = -1;
  for (let i = 0; i < n; i++) {
    const s = segments[i] as Segment;
    if (!(Number.isSafeInteger(s.offset) && s.offset >= 0 && Number.isSafeInteger(s.length) && s.length >= 0)) {
      throw new InvalidArgumentError(
        `Cannot merge LSMT indexes: layer ${layer} entry ${i} has offset ${s.offset} and length ${s.length}`,
      );
    }
    if (s.offset < prevEnd) {
      throw new InvalidArgumentError(
        `Cannot merge LSMT indexes: layer ${layer} entry ${i} (offset ${s.offset}) overlaps or precedes entry ${i - 1}`,
      );
    }
    prevEnd = s.offset + s.length;
    a.offset[i] = s.offset;
    a.end[i] = prevEnd;
    a.length[i] = s.length;
    a.moffset[i] = s.moffset;
    a.zeroed[i] = s.zeroed ? 1 : 0;
  }
  return a;
}

/** Index of the first entry of `end[0..n)` whose end is greater than `x` (n when none). */
function firstEndAfter(end: Float64Array, n: number, x: number): number {
  let lo = 0;
  let hi = n;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if ((end[mid] as number) <= x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** The recursive merge of lsmt.md §10 step 4; `layers[0]` is the top layer (tag 0). */
function mergeLayers(layers: readonly LayerArrays[], out: ArraysBuilder): void {
  const depth = layers.length;
  const merge = (level: number, begin: number, end: number): void => {
    if (level === depth || begin >= end) return;
    const first = out.count;
    const begin0 = begin;
    const l = layers[level] as LayerArrays;
    for (let i = firstEndAfter(l.end, l.n, begin); i < l.n && (l.offset[i] as number) < end; i++) {
      const off = l.offset[i] as number;
      if (off > begin) merge(level + 1, begin, off);
      out.reserve();
      const k = out.count++;
      out.offset[k] = off;
      out.length[k] = l.length[i] as number;
      out.moffset[k] = l.moffset[i] as number;
      out.zeroed[k] = l.zeroed[i] as number;
      out.tag[k] = level;
      begin = l.end[i] as number;
    }
    if (begin < end) merge(level + 1, begin, end);
    if (out.count > first) {
      const h = first;
      const headOffset = out.offset[h] as number;
      if (headOffset < begin0) {
        const cut = begin0 - headOffset;
        out.offset[h] = begin0;
        out.length[h] = (out.length[h] as number) - cut;
        if (out.zeroed[h] === 0) out.moffset[h] = (out.moffset[h] as number) + cut;
      }
      const t = out.count - 1;
      const tailOffset = out.offset[t] as number;
      if (tailOffset + (out.length[t] as number) > end) out.length[t] = end - tailOffset;
    }
  };
  merge(0, 0, Infinity);
}

/**
 * Appends to `out` the entries of `ix` from index `i` on that start before
 * `offset + length`, trimming the first to `offset` and the last to the range end
 * (lsmt.md §12 steps 2-3). Returns the number appended.
 */
// eslint-disable-next-line max-params -- hot path: an options object would allocate on every lookup
function collect(ix: IndexArrays, first: number, offset: number, length: number, out: LookupResult): number {
  const n = ix.count;
  const xOffset = ix.offset;
  const qEnd = offset + length;
  let i = first;
  if (i >= n || (xOffset[i] as number) >= qEnd) return 0;
  const xLength = ix.length;
  const xMoffset = ix.moffset;
  const xZeroed = ix.zeroed;
  const xTag = ix.tag;
  const start = out.count;
  let k = start;
  let oOffset = out.offset;
  let oLength = out.length;
  let oMoffset = out.moffset;
  let oZeroed = out.zeroed;
  let oTag = out.tag;
  do {
    if (k === oOffset.length) {
      out.count = k;
      out.grow();
      oOffset = out.offset;
      oLength = out.length;
      oMoffset = out.moffset;
      oZeroed = out.zeroed;
      oTag = out.tag;
    }
    oOffset[k] = xOffset[i] as number;
    oLength[k] = xLength[i] as number;
    oMoffset[k] = xMoffset[i] as number;
    oZeroed[k] = xZeroed[i] as number;
    oTag[k] = xTag[i] as number;
    k++;
    i++;
  } while (i < n && (xOffset[i] as number) < qEnd);
  const headOffset = oOffset[start] as number;
  if (headOffset < offset) {
    const cut = offset - headOffset;
    oOffset[start] = offset;
    oLength[start] = (oLength[start] as number) - cut;
    if (oZeroed[start] === 0) oMoffset[start] = (oMoffset[start] as number) + cut;
  }
  const last = k - 1;
  const lastOffset = oOffset[last] as number;
  if (lastOffset + (oLength[last] as number) > qEnd) oLength[last] = qEnd - lastOffset;
  out.count = k;
  return k - start;
}

/** A lookup over one index: appends to `out`, returns the number of entries appended. */
export type LookupFunction = (offset: number, length: number, out: LookupResult) => number;

/**
 * The baseline lookup over `ix`: a plain binary search for the first entry whose end
 * is greater than `offset`, then the same collection as {@link MergedIndex.lookup}.
 * Used by the benchmark and as a test oracle.
 *
 * @example
 * ```ts
 * const find = binarySearchLookup(index);
 * find(0, 8, out);
 * ```
 */
export function binarySearchLookup(ix: IndexArrays): LookupFunction {
  const end = ix.end;
  const n = ix.count;
  return (offset, length, out) => {
    if (length <= 0) return 0;
    let lo = 0;
    let hi = n;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if ((end[mid] as number) <= offset) lo = mid + 1;
      else hi = mid;
    }
    return collect(ix, lo, offset, length, out);
  };
}

/**
 * The merged index of a layer stack: sorted, non-overlapping entries in typed arrays,
 * each tagged with the layer that supplies it (0 = top), plus a bucket directory for
 * fast lookups.
 */
export class MergedIndex implements IndexArrays {
  readonly count: number;
  readonly offset: Float64Array;
  readonly end: Float64Array;
  readonly length: Uint32Array;
  readonly moffset: Float64Array;
  readonly zeroed: Uint8Array;
  readonly tag: Uint8Array;
  /** Number of layers merged. */
  readonly layers: number;
  /** Directory: slot b holds the first entry whose end is greater than `#base + b·2^#shift`. */
  #dir: Uint32Array;
  #slots: number;
  #base: number;
  #scale: number;

  private constructor(arrays: IndexArrays, layers: number) {
    this.count = arrays.count;
    this.offset = arrays.offset;
    this.end = arrays.end;
    this.length = arrays.length;
    this.moffset = arrays.moffset;
    this.zeroed = arrays.zeroed;
    this.tag = arrays.tag;
    this.layers = layers;
    const n = this.count;
    if (n === 0) {
      this.#dir = new Uint32Array(1);
      this.#slots = 0;
      this.#base = 0;
      this.#scale = 0;
      return;
    }
    const base = this.offset[0] as number;
    const span = Math.max(1, (this.end[n - 1] as number) - base);
    const target = Math.min(MAX_SLOTS, Math.max(1, n * SLOTS_PER_ENTRY));
    let shift = 0;
    while (span / 2 ** shift > target) shift++;
    const width = 2 ** shift;
    const slots = Math.floor((span - 1) / width) + 1;
    const dir = new Uint32Array(slots + 1);
    const end = this.end;
    let i = 0;
    for (let b = 0; b <= slots; b++) {
      const bound = base + b * width;
      while (i < n && (end[i] as number) <= bound) i++;
      dir[b] = i;
    }
    this.#dir = dir;
    this.#slots = slots;
    this.#base = base;
    this.#scale = 2 ** -shift;
  }

  /**
   * Merges the sorted segment lists of `layers`, given **bottom first** as in a device
   * configuration (lsmt.md §10). Tags of the result are layer numbers counted from the
   * top (0 = last element of `layers`).
   */
  static build(layers: readonly (readonly Segment[])[]): MergedIndex {
    if (layers.length > MAX_MERGE_LAYERS) {
      throw new InvalidArgumentError(
        `Cannot merge LSMT indexes: ${layers.length} layers given, at most ${MAX_MERGE_LAYERS}`,
      );
    }
    const topFirst: LayerArrays[] = [];
    let total = 0;
    for (let i = layers.length - 1; i >= 0; i--) {
      const a = toLayerArrays(layers[i] as readonly Segment[], i);
      topFirst.push(a);
      total += a.n;
    }
    const out = new ArraysBuilder(Math.min(total + 16, MAX_MERGED_ENTRIES));
    mergeLayers(topFirst, out);
    return new MergedIndex(out.finish(), layers.length);
  }

  /**
   * Wraps one already merged, sorted, non-overlapping list, keeping its tags (for
   * example the index of a single layer, or a merge computed elsewhere).
   */
  static fromSorted(segments: readonly Segment[]): MergedIndex {
    const a = toLayerArrays(segments, 0);
    const tag = new Uint8Array(a.n);
    let top = 0;
    for (let i = 0; i < a.n; i++) {
      const t = (segments[i] as Segment).tag;
      tag[i] = t;
      if (t > top) top = t;
    }
    const arrays: IndexArrays = {
      count: a.n,
      offset: a.offset,
      end: a.end,
      length: a.length,
      moffset: a.moffset,
      zeroed: a.zeroed,
      tag,
    };
    return new MergedIndex(arrays, top + 1);
  }

  /**
   * Appends to `out` the entries that intersect `[offset, offset+length)` (sectors),
   * in offset order, trimmed to that range (a trimmed head advances `moffset` unless
   * zeroed); gaps produce nothing. Returns the number appended. Allocation-free unless
   * `out` has to grow.
   */
  lookup(offset: number, length: number, out: LookupResult): number {
    if (length <= 0 || this.count === 0) return 0;
    const rel = offset - this.#base;
    let i = 0;
    if (rel >= 0) {
      const slot = rel * this.#scale;
      if (slot >= this.#slots) return 0;
      const b = slot | 0; // below MAX_SLOTS, so the truncation is exact
      const dir = this.#dir;
      let lo = dir[b] as number;
      let hi = dir[b + 1] as number;
      // Compare offset + length rather than `end`: the collection reads both arrays anyway,
      // so the search costs no extra cache lines.
      const start = this.offset;
      const len = this.length;
      if (hi - lo <= SCAN_LIMIT) {
        while (lo < hi && (start[lo] as number) + (len[lo] as number) <= offset) lo++;
      } else {
        while (lo < hi) {
          const mid = (lo + hi) >>> 1;
          if ((start[mid] as number) + (len[mid] as number) <= offset) lo = mid + 1;
          else hi = mid;
        }
      }
      i = lo;
    }
    return collect(this, i, offset, length, out);
  }

  /** Like {@link MergedIndex.lookup}, appending `Segment` objects (the `SegmentLookup` shape). */
  lookupSegments(offset: number, length: number, out: Segment[]): void {
    const r = new LookupResult(8);
    const n = this.lookup(offset, length, r);
    for (let i = 0; i < n; i++) out.push(r.segment(i));
  }

  /** The whole merged list as `Segment` objects; `tag` is the layer number, 0 = top. */
  segments(): Segment[] {
    const out: Segment[] = [];
    for (let i = 0; i < this.count; i++) {
      out.push({
        offset: this.offset[i] as number,
        length: this.length[i] as number,
        moffset: this.moffset[i] as number,
        zeroed: this.zeroed[i] === 1,
        tag: this.tag[i] as number,
      });
    }
    return out;
  }

  /** Mapped, non-zeroed sectors (what `fstat` reports as blocks, lsmt.md §12). */
  dataSectors(): number {
    let sum = 0;
    for (let i = 0; i < this.count; i++) if (this.zeroed[i] === 0) sum += this.length[i] as number;
    return sum;
  }
}
