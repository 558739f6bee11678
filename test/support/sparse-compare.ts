/**
 * Byte-for-byte comparison of two (large, sparse) files without reading their holes:
 * same size, same data extents (SEEK_DATA/SEEK_HOLE), same bytes inside them. A region
 * that is data in one file and a hole in the other is compared against zeros.
 */
import assert from 'node:assert/strict';
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { native } from '../../src/native/index.ts';

function extents(fd: number, size: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  let at = 0;
  while (at < size) {
    const start = native.seekData(fd, at);
    if (start < 0) break;
    const end = native.seekHole(fd, start);
    out.push([start, end < 0 ? size : end]);
    at = end < 0 ? size : end;
  }
  return out;
}

export function assertSameSparseFile(a: string, b: string): void {
  const fa = openSync(a, 'r');
  const fb = openSync(b, 'r');
  try {
    const size = fstatSync(fa).size;
    assert.equal(fstatSync(fb).size, size, `${a} and ${b} differ in size`);
    const regions = [...extents(fa, size), ...extents(fb, size)].sort((x, y) => x[0] - y[0]);
    const ba = new Uint8Array(1 << 20);
    const bb = new Uint8Array(1 << 20);
    for (const [start, end] of regions) {
      for (let at = start; at < end; at += ba.length) {
        const n = Math.min(ba.length, end - at);
        readSync(fa, ba, 0, n, at);
        readSync(fb, bb, 0, n, at);
        if (Buffer.compare(ba.subarray(0, n), bb.subarray(0, n)) !== 0) assert.fail(`${a} and ${b} differ in [${at}, ${at + n})`);
      }
    }
  } finally {
    closeSync(fa);
    closeSync(fb);
  }
}
