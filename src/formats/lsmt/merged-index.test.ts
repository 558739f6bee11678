import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { binarySearchLookup, LookupResult, MergedIndex } from './merged-index.ts';
import type { Segment } from './segment.ts';

const seg = (offset: number, length: number, moffset: number): Segment => ({ offset, length, moffset, zeroed: false, tag: 0 });
const zseg = (offset: number, length: number, moffset: number): Segment => ({ ...seg(offset, length, moffset), zeroed: true });
const tagged = (s: Segment, tag: number): Segment => ({ ...s, tag });
const tuples = (list: readonly Segment[]): number[][] => list.map((s) => [s.offset, s.length, s.moffset, s.tag]);

test('MergedIndex.build() gives the merge of lsmt.md §19.3', () => {
  const L0 = [seg(5, 5, 0), seg(10, 10, 50), seg(100, 10, 20)];
  const L1 = [seg(0, 1, 7), seg(2, 4, 5), seg(15, 10, 22), seg(30, 15, 89), seg(87, 50, 32), seg(150, 10, 84)];
  const L2 = [seg(1, 3, 134), seg(8, 4, 873), seg(18, 72, 320), seg(100, 100, 4893), seg(1000, 1000, 39823)];
  const L3 = [seg(23, 10, 0), seg(65, 10, 50), seg(89, 10, 20), seg(230, 43, 432), seg(1999, 31, 2393)];
  const index = MergedIndex.build([L3, L2, L1, L0]); // bottom first
  assert.deepEqual(tuples(index.segments()), [
    [0, 1, 7, 1], [1, 1, 134, 2], [2, 3, 5, 1], [5, 5, 0, 0], [10, 10, 50, 0], [20, 5, 27, 1], [25, 5, 327, 2],
    [30, 15, 89, 1], [45, 42, 347, 2], [87, 13, 32, 1], [100, 10, 20, 0], [110, 27, 55, 1], [137, 13, 4930, 2],
    [150, 10, 84, 1], [160, 40, 4953, 2], [230, 43, 432, 3], [1000, 1000, 39823, 2], [2000, 30, 2394, 3],
  ]);
  assert.equal(index.layers, 4);
});

test('MergedIndex.build() keeps zeroed entries of an upper layer masking lower data', () => {
  const lower = [seg(0, 100, 8)];
  const upper = [zseg(10, 10, 500)];
  const index = MergedIndex.build([lower, upper]);
  assert.deepEqual(index.segments(), [
    tagged(seg(0, 10, 8), 1),
    zseg(10, 10, 500),
    tagged(seg(20, 80, 28), 1),
  ]);
  assert.equal(index.dataSectors(), 90);
});

test('MergedIndex.build() of no layers and of empty layers is empty', () => {
  for (const layers of [[], [[]], [[], []]]) {
    const index = MergedIndex.build(layers);
    assert.equal(index.count, 0);
    const out = new LookupResult();
    assert.equal(index.lookup(0, 100, out), 0);
    assert.equal(out.count, 0);
  }
});

test('MergedIndex.build() rejects an unsorted layer', () => {
  assert.throws(() => MergedIndex.build([[seg(10, 5, 8), seg(12, 1, 20)]]), /layer 0 entry 1 \(offset 12\) overlaps/);
});

test('MergedIndex.lookup() trims the head and tail and advances moffset only for data', () => {
  const index = MergedIndex.fromSorted([seg(0, 10, 100), zseg(10, 10, 200), tagged(seg(30, 10, 300), 2)]);
  const out = new LookupResult(1); // forces growth
  assert.equal(index.lookup(5, 30, out), 3);
  assert.deepEqual(out.segments(), [seg(5, 5, 105), zseg(10, 10, 200), tagged(seg(30, 5, 300), 2)]);
  out.clear();
  index.lookup(12, 3, out);
  assert.deepEqual(out.segments(), [zseg(12, 3, 200)]);
  out.clear();
  assert.equal(index.lookup(20, 10, out), 0, 'a gap yields nothing');
  assert.equal(index.lookup(40, 10, out), 0, 'past the end yields nothing');
  assert.equal(index.lookup(0, 0, out), 0, 'an empty range yields nothing');
  assert.equal(out.count, 0);
  const list: Segment[] = [];
  index.lookupSegments(35, 100, list);
  assert.deepEqual(list, [tagged(seg(35, 5, 305), 2)]);
});

test('MergedIndex.lookup() handles offsets near 2^50', () => {
  const top = 2 ** 50 - 2 - 16383;
  const index = MergedIndex.fromSorted([seg(3, 1, 9), seg(2 ** 40, 16383, 2 ** 52), seg(top, 16383, 8)]);
  const out = new LookupResult();
  index.lookup(top + 100, 1 << 20, out);
  assert.deepEqual(out.segments(), [seg(top + 100, 16283, 108)]);
  out.clear();
  index.lookup(2 ** 40 + 1, 1, out);
  assert.deepEqual(out.segments(), [seg(2 ** 40 + 1, 1, 2 ** 52 + 1)]);
});

/** Sorted, non-overlapping random segments, possibly far from 0 and with zero-length entries. */
const segmentSets = fc
  .record({
    start: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 1 << 20 }), fc.integer({ min: 0, max: 2 ** 49 })),
    parts: fc.array(
      fc.record({
        gap: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 64 }), fc.integer({ min: 0, max: 2 ** 40 })),
        length: fc.oneof(fc.integer({ min: 1, max: 16383 }), fc.integer({ min: 0, max: 8 })),
        zeroed: fc.boolean(),
        tag: fc.integer({ min: 0, max: 255 }),
      }),
      { maxLength: 300 },
    ),
  })
  .map(({ start, parts }) => {
    const out: Segment[] = [];
    let at = start;
    let m = 8;
    for (const p of parts) {
      at += p.gap;
      if (at + p.length >= 2 ** 50 - 1) break;
      out.push({ offset: at, length: p.length, moffset: m, zeroed: p.zeroed, tag: p.tag });
      at += p.length;
      m += p.length + 1;
    }
    return out;
  });

/** The §12 semantics, written as plainly as possible. */
function naiveLookup(list: readonly Segment[], offset: number, length: number): Segment[] {
  if (length <= 0) return [];
  const hits = list.filter((s) => s.offset + s.length > offset && s.offset < offset + length).map((s) => ({ ...s }));
  const first = hits[0];
  if (first !== undefined && first.offset < offset) {
    const cut = offset - first.offset;
    first.offset = offset;
    first.length -= cut;
    if (!first.zeroed) first.moffset += cut;
  }
  const last = hits[hits.length - 1];
  if (last !== undefined && last.offset + last.length > offset + length) last.length = offset + length - last.offset;
  return hits;
}

test('MergedIndex.lookup() equals binary search equals a naive scan (property)', () => {
  fc.assert(
    fc.property(
      segmentSets,
      fc.array(fc.tuple(fc.double({ min: 0, max: 1, noNaN: true }), fc.integer({ min: 0, max: 300000 })), {
        minLength: 1,
        maxLength: 40,
      }),
      (list, queries) => {
        const index = MergedIndex.fromSorted(list);
        const find = binarySearchLookup(index);
        const lo = list.length > 0 ? Math.max(0, (list[0] as Segment).offset - 1000) : 0;
        const last = list[list.length - 1];
        const hi = last !== undefined ? last.offset + last.length + 1000 : 1 << 20;
        const fast = new LookupResult(2);
        const slow = new LookupResult(2);
        // Probe every entry boundary as well as random points.
        const probes: [number, number][] = queries.map(([f, len]) => [lo + Math.floor(f * (hi - lo)), len]);
        for (const s of list) probes.push([s.offset, 1], [s.offset + s.length, 3], [Math.max(0, s.offset - 1), 2]);
        for (const [offset, length] of probes) {
          fast.clear();
          slow.clear();
          const a = index.lookup(offset, length, fast);
          const b = find(offset, length, slow);
          const expected = naiveLookup(list, offset, length);
          assert.equal(a, expected.length);
          assert.equal(b, expected.length);
          assert.deepEqual(fast.segments(), expected);
          assert.deepEqual(slow.segments(), expected);
        }
      },
    ),
    { numRuns: 300 },
  );
});

test('MergedIndex.build() of random layers reads like a top-down per-sector oracle (property)', () => {
  const layer = fc
    .array(fc.record({ gap: fc.integer({ min: 0, max: 30 }), length: fc.integer({ min: 1, max: 30 }), zeroed: fc.boolean() }), {
      maxLength: 12,
    })
    .map((parts) => {
      const out: Segment[] = [];
      let at = 0;
      let m = 8;
      for (const p of parts) {
        at += p.gap;
        out.push({ offset: at, length: p.length, moffset: m, zeroed: p.zeroed, tag: 0 });
        at += p.length;
        m += p.length + 7;
      }
      return out;
    });
  fc.assert(
    fc.property(fc.array(layer, { minLength: 1, maxLength: 5 }), (layers) => {
      const index = MergedIndex.build(layers);
      const merged = index.segments();
      // sorted, non-overlapping
      for (let i = 1; i < merged.length; i++) {
        const p = merged[i - 1] as Segment;
        assert.ok(p.offset + p.length <= (merged[i] as Segment).offset);
      }
      // per sector: the topmost layer mapping it wins
      const owner = (sector: number): string => {
        for (let t = 0; t < layers.length; t++) {
          const list = layers[layers.length - 1 - t] as Segment[];
          const s = list.find((x) => x.offset <= sector && sector < x.offset + x.length);
          if (s !== undefined) return `${t}:${s.zeroed ? 'z' : s.moffset + sector - s.offset}`;
        }
        return '-';
      };
      const got = (sector: number): string => {
        const s = merged.find((x) => x.offset <= sector && sector < x.offset + x.length);
        if (s === undefined) return '-';
        return `${s.tag}:${s.zeroed ? 'z' : s.moffset + sector - s.offset}`;
      };
      for (let sector = 0; sector < 12 * 60; sector++) assert.equal(got(sector), owner(sector), `sector ${sector}`);
    }),
    { numRuns: 300 },
  );
});

test('MergedIndex.lookup() stays exact when one bucket holds many entries (skewed layout)', () => {
  const list: Segment[] = [];
  for (let i = 0; i < 1000; i++) list.push(seg(7 + i * 3, 2, 8 + i * 2));
  list.push(seg(2 ** 45, 100, 5000));
  const index = MergedIndex.fromSorted(list);
  const find = binarySearchLookup(index);
  const a = new LookupResult();
  const b = new LookupResult();
  for (let offset = 0; offset < 3020; offset++) {
    a.clear();
    b.clear();
    index.lookup(offset, 5, a);
    find(offset, 5, b);
    assert.deepEqual(a.segments(), b.segments(), `offset ${offset}`);
    assert.deepEqual(a.segments(), naiveLookup(list, offset, 5));
  }
  a.clear();
  index.lookup(2 ** 45 + 50, 1000, a);
  assert.deepEqual(a.segments(), [seg(2 ** 45 + 50, 50, 5050)]);
});
