import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { RwIndex } from './rw-index.ts';
import type { Segment } from './segment.ts';

const seg = (offset: number, length: number, moffset: number): Segment => ({ offset, length, moffset, zeroed: false, tag: 0 });
const zseg = (offset: number, length: number, moffset: number): Segment => ({ ...seg(offset, length, moffset), zeroed: true });
const triples = (list: Segment[]): number[][] => list.map((s) => [s.offset, s.length, s.moffset]);

/** The obvious flat-array implementation of lsmt.md §8.3, as a reference. */
function referenceInsert(list: Segment[], m: Segment): Segment[] {
  if (m.length === 0) return list;
  const end = m.offset + m.length;
  const out: Segment[] = [];
  for (const e of list) {
    const eEnd = e.offset + e.length;
    if (eEnd <= m.offset || e.offset >= end) {
      out.push(e);
      continue;
    }
    if (e.offset < m.offset) out.push({ ...e, length: m.offset - e.offset });
    if (eEnd > end) {
      out.push({ ...e, offset: end, length: eEnd - end, moffset: e.zeroed ? e.moffset : e.moffset + end - e.offset });
    }
  }
  out.push({ ...m });
  return out.sort((a, b) => a.offset - b.offset);
}

test('RwIndex.insert() reproduces lsmt.md §19.2', () => {
  const index = new RwIndex();
  for (const [o, l, m] of [
    [0, 20, 0],
    [10, 15, 50],
    [30, 100, 20],
    [5, 10, 3],
    [40, 10, 123],
    [200, 10, 2133],
    [150, 100, 21],
  ] as const) {
    index.insert(seg(o, l, m));
  }
  assert.deepEqual(triples(index.segments()), [
    [0, 5, 0],
    [5, 10, 3],
    [15, 10, 55],
    [30, 10, 20],
    [40, 10, 123],
    [50, 80, 40],
    [150, 100, 21],
  ]);
  assert.equal(index.size, 7);
});

test('RwIndex.insert() ignores empty segments, keeps zeroed moffsets when cutting, never coalesces', () => {
  const index = new RwIndex();
  index.insert(seg(0, 0, 5));
  assert.equal(index.size, 0);
  index.insert(zseg(10, 10, 100));
  index.insert(seg(12, 2, 7));
  index.insert(seg(20, 5, 110));
  assert.deepEqual(index.segments(), [zseg(10, 2, 100), seg(12, 2, 7), zseg(14, 6, 100), seg(20, 5, 110)]);
});

test('RwIndex.lookup() trims to the range, advancing moffset unless zeroed, and includes zeroed segments', () => {
  const index = new RwIndex();
  index.insert(seg(0, 10, 100));
  index.insert(zseg(20, 10, 200));
  index.insert(seg(40, 10, 300));
  const out: Segment[] = [];
  index.lookup(5, 40, out);
  assert.deepEqual(out, [seg(5, 5, 105), zseg(20, 10, 200), seg(40, 5, 300)]);
  out.length = 0;
  index.lookup(25, 2, out);
  assert.deepEqual(out, [zseg(25, 2, 200)]);
  out.length = 0;
  index.lookup(10, 10, out);
  assert.deepEqual(out, []);
  index.lookup(50, 100, out);
  assert.deepEqual(out, []);
});

test('RwIndex matches the flat reference on random insert sequences (spanning many chunks)', () => {
  fc.assert(
    fc.property(
      fc.array(
        fc.record({
          offset: fc.integer({ min: 0, max: 100000 }),
          length: fc.integer({ min: 0, max: 40 }),
          big: fc.integer({ min: 0, max: 30 }),
          zeroed: fc.boolean(),
        }),
        { minLength: 1500, maxLength: 3000 },
      ),
      (ops) => {
        const index = new RwIndex();
        let ref: Segment[] = [];
        ops.forEach((op, i) => {
          // Mostly small writes; occasionally one covering thousands of sectors (crosses chunks).
          const length = op.big === 0 ? op.length * 300 : op.length;
          const m = { ...seg(op.offset, length, 1000 + i * 50), zeroed: op.zeroed };
          index.insert(m);
          ref = referenceInsert(ref, m);
        });
        assert.deepEqual(index.segments(), ref);
        assert.equal(index.size, ref.length);
        const out: Segment[] = [];
        index.lookup(5000, 30000, out);
        const want: Segment[] = [];
        for (const e of ref) {
          const b = Math.max(e.offset, 5000);
          const en = Math.min(e.offset + e.length, 35000);
          if (b < en) want.push({ ...e, offset: b, length: en - b, moffset: e.zeroed ? e.moffset : e.moffset + b - e.offset });
        }
        assert.deepEqual(out, want);
      },
    ),
    { numRuns: 25 },
  );
});

test('RwIndex inserts one million random small writes in seconds', () => {
  const index = new RwIndex();
  let x = 0x2545f491;
  const start = performance.now();
  for (let i = 0; i < 1_000_000; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    // 4 KiB writes anywhere in 64 GiB
    index.insert(seg((x % (1 << 24)) * 8, 8, 8 + i * 8));
  }
  const ms = performance.now() - start;
  assert.ok(ms < 20000, `took ${ms} ms`);
  const all = index.segments();
  for (let i = 1; i < all.length; i++) {
    const a = all[i - 1] as Segment;
    assert.ok(a.offset + a.length <= (all[i] as Segment).offset);
  }
  console.log(`# 1M random inserts: ${ms.toFixed(0)} ms, ${all.length} segments`);
});
