import { test } from 'node:test';
import assert from 'node:assert/strict';
import { pat, xs, zf1, zfOdd, zf768 } from './generators.ts';
import { sha256 } from './shared.ts';

test('generators match the check values of vectors/README.md §1', () => {
  assert.deepEqual([...pat(8, 249)], [0xf9, 0xfa, 0, 1, 2, 3, 4, 5]);
  assert.deepEqual([...xs(16, 1)], [0x21, 0x20, 0x04, 0x00, 0x01, 0x06, 0x08, 0x04, 0xc5, 0xa8, 0xcc, 0x9d, 0x4f, 0x99, 0x55, 0x12]);
  assert.equal(sha256(xs(204800, 3)), '8c828590bb63b680ed303b4719b1b3cd51674e3cde8e083b91fb5b0b27857a18');
  assert.equal(sha256(zf1()), 'a17e55921f1d4e92b8bd78f6db4dc8e42872cae0bc4b9995eb8367bab372a70a');
  assert.equal(sha256(zfOdd()), '776d984db743613a9ad6df73255b86c569d261867d027379c8a321e7dbed11ee');
  assert.equal(sha256(zf768()), '470e2760d00ddcd15d50b62c361ebfc503ae230d8760287299044189cb6e5196');
});
