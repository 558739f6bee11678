import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { decodeHeaderTrailer, encodeHeaderTrailer, parseUuid, HEADER_TRAILER_SIZE } from './header-trailer.ts';
import { vector } from '../../../test/support/shared.ts';

test('decodeHeaderTrailer() reads L1.commit as lsmt vectors §3 describe', () => {
  const file = readFileSync(vector('lsmt', 'L1.commit'));
  const header = decodeHeaderTrailer(file.subarray(0, HEADER_TRAILER_SIZE));
  const trailer = decodeHeaderTrailer(file.subarray(file.length - HEADER_TRAILER_SIZE));
  assert.equal(header.flags, 0x7);
  assert.equal(trailer.flags, 0x6);
  assert.equal(header.indexSize, 0);
  assert.equal(trailer.indexSize, 256);
  assert.equal(trailer.uuid, '00000000-0000-4000-8000-0000000000A1');
  assert.equal(trailer.parentUuid, '00000000-0000-0000-0000-000000000000');
  assert.equal(new TextDecoder().decode(trailer.userTag), 'oracle-L1');
  assert.equal(trailer.virtualSize, 1 << 30);
  // encode(decode(x)) re-emits the record byte for byte
  assert.deepEqual(encodeHeaderTrailer(trailer), new Uint8Array(file.subarray(file.length - HEADER_TRAILER_SIZE)));
  assert.deepEqual(encodeHeaderTrailer(header), new Uint8Array(file.subarray(0, HEADER_TRAILER_SIZE)));
});

test('parseUuid() accepts either case and rejects malformed text', () => {
  assert.equal(parseUuid('00000000-0000-4000-8000-0000000000a1'), '00000000-0000-4000-8000-0000000000A1');
  assert.equal(parseUuid('00000000-0000-4000-8000-0000000000a'), undefined);
  assert.equal(parseUuid('0000000g-0000-4000-8000-0000000000a1'), undefined);
});
