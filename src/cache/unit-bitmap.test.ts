import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { UnitBitmap } from './unit-bitmap.ts';

test('UnitBitmap set/clear/runs agree with a Set model', () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 200 }),
      fc.array(fc.tuple(fc.boolean(), fc.nat(), fc.nat({ max: 40 })), { maxLength: 30 }),
      (length, ops) => {
        const b = new UnitBitmap(length);
        const model = new Set<number>();
        for (const [add, f, c] of ops) {
          const first = f % length;
          const count = Math.min(c, length - first);
          let changed = 0;
          for (let u = first; u < first + count; u++) {
            if (add === model.has(u)) continue;
            if (add) model.add(u);
            else model.delete(u);
            changed++;
          }
          assert.equal(add ? b.set(first, count) : b.clear(first, count), changed);
        }
        assert.equal(b.count, model.size);
        const fromRuns: number[] = [];
        let prevEnd = -1;
        for (const [first, count] of b.runs()) {
          assert.ok(first > prevEnd, 'runs are maximal and increasing');
          prevEnd = first + count;
          for (let u = first; u < first + count; u++) fromRuns.push(u);
        }
        assert.deepEqual(fromRuns, [...model].sort((x, y) => x - y));
        assert.equal(b.clone().count, b.count);
      },
    ),
    { seed: 7, numRuns: 200 },
  );
});

test('UnitBitmap rejects ranges outside its units', () => {
  const b = new UnitBitmap(10);
  assert.throws(() => b.set(8, 3), RangeError);
  assert.throws(() => b.clear(-1, 1), RangeError);
  assert.equal(b.has(10), false);
  assert.equal(b.hasAll(0, 0), true);
});
