import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { decodeSegment, encodeSegment, encodeSegments, INVALID_SEGMENT, type Segment } from './segment.ts';

test('encodeSegment() matches lsmt.md §19.1', () => {
  const bytes = encodeSegments([{ offset: 0, length: 8448, moffset: 8, zeroed: false, tag: 0 }]);
  assert.deepEqual([...bytes], [0, 0, 0, 0, 0, 0, 0, 0x84, 8, 0, 0, 0, 0, 0, 0, 0]);
  const pad = encodeSegments([INVALID_SEGMENT]);
  assert.deepEqual([...pad], [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
  const z = encodeSegments([{ offset: 0, length: 1, moffset: 0, zeroed: true, tag: 0 }]);
  assert.equal(z[14], 0x80);
});

test('decodeSegment(encodeSegment(x)) equals x', () => {
  fc.assert(
    fc.property(
      fc.record({
        offset: fc.integer({ min: 0, max: 2 ** 50 - 1 }),
        length: fc.integer({ min: 0, max: 16383 }),
        moffset: fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }),
        zeroed: fc.boolean(),
        tag: fc.integer({ min: 0, max: 255 }),
      }),
      (s: Segment) => {
        const view = new DataView(new ArrayBuffer(16));
        encodeSegment(s, view, 0);
        assert.deepEqual(decodeSegment(view, 0), { ...s });
      },
    ),
  );
});
