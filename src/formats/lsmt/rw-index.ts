/**
 * The in-memory index of a writable layer (lsmt.md §8.3): an ordered set of
 * non-overlapping segments where inserting a segment overrides whatever it overlaps.
 *
 * Storage is a list of sorted chunks of at most {@link CHUNK_MAX} segments, each chunk
 * a set of parallel typed arrays (offset, length, moffset, zeroed, tag). An insert is a
 * binary search over the chunks' last ends, one inside the chunk, and a `copyWithin` of
 * at most a thousand elements. A million random small inserts take about a second and
 * ~35 bytes per segment (26 per slot, chunks ~3/4 full), where one object per segment in
 * one flat array with `splice` would move half the array per insert and cost ~100 bytes
 * per segment. A balanced tree was rejected as more code for no measurable gain at the
 * sizes an RW index reaches.
 */
import type { SegmentLookup } from './layer.ts';
import type { Segment } from './segment.ts';

/** Largest chunk before it is split in two. */
const CHUNK_MAX = 1024;
/** One insert adds at most two segments (a split segment and the new one). */
const CHUNK_CAPACITY = CHUNK_MAX + 2;

/** A sorted run of segments stored column-wise. */
class Chunk {
  n = 0;
  readonly off = new Float64Array(CHUNK_CAPACITY);
  readonly len = new Float64Array(CHUNK_CAPACITY);
  readonly moff = new Float64Array(CHUNK_CAPACITY);
  readonly zeroed = new Uint8Array(CHUNK_CAPACITY);
  readonly tag = new Uint8Array(CHUNK_CAPACITY);

  get(i: number): Segment {
    return {
      offset: this.off[i] as number,
      length: this.len[i] as number,
      moffset: this.moff[i] as number,
      zeroed: this.zeroed[i] === 1,
      tag: this.tag[i] as number,
    };
  }

  end(i: number): number {
    return (this.off[i] as number) + (this.len[i] as number);
  }

  set(i: number, s: Segment): void {
    this.off[i] = s.offset;
    this.len[i] = s.length;
    this.moff[i] = s.moffset;
    this.zeroed[i] = s.zeroed ? 1 : 0;
    this.tag[i] = s.tag;
  }

  /** Moves entries `[from, n)` to start at `to`. */
  shift(from: number, to: number): void {
    if (from === to) return;
    for (const a of [this.off, this.len, this.moff, this.zeroed, this.tag]) a.copyWithin(to, from, this.n);
    this.n += to - from;
  }

  /** Replaces `deleteCount` entries at `at` by `items`. */
  splice(at: number, deleteCount: number, items: readonly Segment[]): void {
    this.shift(at + deleteCount, at + items.length);
    items.forEach((s, k) => this.set(at + k, s));
  }

  /** Moves the upper half into a new chunk. */
  splitOff(): Chunk {
    const tail = new Chunk();
    const half = this.n >>> 1;
    const count = this.n - half;
    tail.off.set(this.off.subarray(half, this.n));
    tail.len.set(this.len.subarray(half, this.n));
    tail.moff.set(this.moff.subarray(half, this.n));
    tail.zeroed.set(this.zeroed.subarray(half, this.n));
    tail.tag.set(this.tag.subarray(half, this.n));
    tail.n = count;
    this.n = half;
    return tail;
  }
}

/**
 * A writable layer's index: `insert` with override, `lookup` per {@link SegmentLookup}.
 *
 * @example
 * ```ts
 * const index = new RwIndex();
 * index.insert({ offset: 0, length: 20, moffset: 0, zeroed: false, tag: 0 });
 * index.insert({ offset: 10, length: 15, moffset: 50, zeroed: false, tag: 0 });
 * index.segments(); // (0,10,0), (10,15,50)
 * ```
 */
export class RwIndex implements SegmentLookup {
  /** Non-empty sorted chunks; their concatenation is sorted and non-overlapping. */
  #chunks: Chunk[] = [];
  #size = 0;

  /** Number of segments. */
  get size(): number {
    return this.#size;
  }

  /**
   * Inserts `m`, removing the parts of existing segments that overlap it: covered
   * segments are deleted, a segment overlapping on the left is shortened, one overlapping
   * on the right is cut at `m`'s end (its `moffset` advancing unless zeroed), and one
   * strictly containing `m` is split. Zero-length segments are ignored; adjacent segments
   * are never coalesced.
   */
  insert(m: Segment): void {
    if (m.length === 0) return;
    const end = m.offset + m.length;
    const chunks = this.#chunks;
    const [ci, ei] = this.#find(m.offset);
    if (ci === chunks.length) {
      // Nothing ends after m.offset: m goes last.
      let last = chunks[chunks.length - 1];
      if (last === undefined) chunks.push((last = new Chunk()));
      last.splice(last.n, 0, [m]);
      this.#size++;
      this.#splitIfFull(chunks.length - 1);
      return;
    }
    const replacement: Segment[] = [];
    let removed = 0;
    // Walk the overlapping segments, possibly across chunks.
    for (let wc = ci, we = ei; wc < chunks.length; wc++, we = 0) {
      const chunk = chunks[wc] as Chunk;
      for (; we < chunk.n; we++) {
        const eOffset = chunk.off[we] as number;
        if (eOffset >= end) break;
        const eEnd = chunk.end(we);
        if (eOffset < m.offset) replacement.push({ ...chunk.get(we), length: m.offset - eOffset });
        if (removed === 0) replacement.push(m);
        if (eEnd > end) {
          const e = chunk.get(we);
          replacement.push({ ...e, offset: end, length: eEnd - end, moffset: e.zeroed ? e.moffset : e.moffset + end - eOffset });
        }
        removed++;
      }
      if (we < chunk.n) break;
    }
    if (removed === 0) replacement.push(m);
    const first = chunks[ci] as Chunk;
    const here = Math.min(removed, first.n - ei);
    let remaining = removed - here;
    if (remaining > 0) {
      // Drop whole chunks covered by m, then the head of the chunk where it ends.
      let whole = 0;
      while (remaining > 0 && (chunks[ci + 1 + whole] as Chunk).n <= remaining) {
        remaining -= (chunks[ci + 1 + whole] as Chunk).n;
        whole++;
      }
      if (whole > 0) chunks.splice(ci + 1, whole);
      if (remaining > 0) (chunks[ci + 1] as Chunk).shift(remaining, 0);
    }
    // The right part of the last covered segment may come from a later chunk; it still
    // sorts right after m, so everything goes into the first chunk. It grows by at most
    // two (here >= 1 whenever something was removed), within CHUNK_CAPACITY.
    first.splice(ei, here, replacement);
    this.#size += replacement.length - removed;
    this.#splitIfFull(ci);
  }

  lookup(offset: number, length: number, out: Segment[]): void {
    if (length <= 0) return;
    const end = offset + length;
    const chunks = this.#chunks;
    let [ci, ei] = this.#find(offset);
    for (; ci < chunks.length; ci++, ei = 0) {
      const chunk = chunks[ci] as Chunk;
      for (; ei < chunk.n; ei++) {
        if ((chunk.off[ei] as number) >= end) return;
        const s = chunk.get(ei);
        if (s.offset < offset) {
          const cut = offset - s.offset;
          s.offset = offset;
          s.length -= cut;
          if (!s.zeroed) s.moffset += cut;
        }
        if (s.offset + s.length > end) s.length = end - s.offset;
        out.push(s);
      }
    }
  }

  /** All segments in offset order (fresh objects). */
  segments(): Segment[] {
    const out: Segment[] = [];
    for (const chunk of this.#chunks) for (let i = 0; i < chunk.n; i++) out.push(chunk.get(i));
    return out;
  }

  /** Position (chunk, entry) of the first segment whose end is greater than `offset`. */
  #find(offset: number): [number, number] {
    const chunks = this.#chunks;
    let lo = 0;
    let hi = chunks.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const chunk = chunks[mid] as Chunk;
      if (chunk.end(chunk.n - 1) > offset) hi = mid;
      else lo = mid + 1;
    }
    if (lo === chunks.length) return [lo, 0];
    const chunk = chunks[lo] as Chunk;
    let a = 0;
    let b = chunk.n - 1;
    while (a < b) {
      const mid = (a + b) >>> 1;
      if (chunk.end(mid) > offset) b = mid;
      else a = mid + 1;
    }
    return [lo, a];
  }

  #splitIfFull(ci: number): void {
    const chunk = this.#chunks[ci] as Chunk;
    if (chunk.n > CHUNK_MAX) this.#chunks.splice(ci + 1, 0, chunk.splitOff());
  }
}
