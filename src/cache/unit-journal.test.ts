import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { DataCorruptionError } from '../io/errors.ts';
import { crc32c } from '../native/index.ts';
import {
  decodeJournalHeader,
  decodeJournalRecord,
  encodeJournalHeader,
  encodeJournalRecord,
  encodeJournalRuns,
  HEADER_FIELDS,
  JOURNAL_HEADER_SIZE,
  JOURNAL_RECORD_SIZE,
  OP_ABSENT,
  OP_PRESENT,
  RECORD_FIELDS,
  replayJournal,
  validateJournalHeader,
  type JournalRecord,
} from './unit-journal.ts';

const concat = (...parts: Uint8Array[]): Uint8Array => Buffer.concat(parts);

test('encodeJournalHeader() lays out magic, version, unit and size at the documented offsets', () => {
  const b = encodeJournalHeader({ unitSize: 262144, blobSize: 2 ** 40 + 5 });
  assert.equal(b.length, JOURNAL_HEADER_SIZE);
  assert.equal(Buffer.from(b.subarray(0, 8)).toString('latin1'), 'OBDUNITS');
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  assert.equal(v.getUint32(HEADER_FIELDS.version, true), 1);
  assert.equal(v.getUint32(HEADER_FIELDS.unitSize, true), 262144);
  assert.equal(v.getBigUint64(HEADER_FIELDS.blobSize, true), 2n ** 40n + 5n);
  assert.deepEqual(decodeJournalHeader(b), { unitSize: 262144, blobSize: 2 ** 40 + 5 });
});

test('decodeJournalHeader() rejects bad magic, checksum, version and short input', () => {
  const good = encodeJournalHeader({ unitSize: 4096, blobSize: 100 });
  const flip = (at: number): Uint8Array => {
    const b = good.slice();
    b[at] = (b[at] as number) ^ 1;
    return b;
  };
  assert.throws(() => decodeJournalHeader(flip(0)), /bad magic/);
  assert.throws(() => decodeJournalHeader(flip(HEADER_FIELDS.blobSize)), /checksum mismatch/);
  assert.throws(() => decodeJournalHeader(good.subarray(0, 31)), DataCorruptionError);
  assert.throws(() => decodeJournalHeader(new Uint8Array(32)), DataCorruptionError);
});

test('validateJournalHeader() rejects unit sizes that are not powers of two in range', () => {
  for (const unitSize of [0, 2048, 12288, 2 ** 31]) {
    assert.throws(() => validateJournalHeader({ unitSize, blobSize: 1 }), RangeError, `unit ${unitSize}`);
  }
  assert.throws(() => validateJournalHeader({ unitSize: 4096, blobSize: 4096 * 2 ** 32 + 1 }), /more than 2\^32-1 units/);
  validateJournalHeader({ unitSize: 4096, blobSize: 0 });
});

test('decodeJournalRecord() rejects zeroed, torn, flipped and reserved-bit records', () => {
  const r = encodeJournalRecord({ op: OP_PRESENT, first: 7, count: 3 });
  assert.deepEqual(decodeJournalRecord(r, 0), { op: OP_PRESENT, first: 7, count: 3 });
  assert.equal(decodeJournalRecord(new Uint8Array(16), 0), undefined);
  assert.equal(decodeJournalRecord(r.subarray(0, 15), 0), undefined);
  for (let i = 0; i < JOURNAL_RECORD_SIZE; i++) {
    const b = r.slice();
    b[i] = (b[i] as number) ^ 0x10;
    assert.equal(decodeJournalRecord(b, 0), undefined, `bit flip in byte ${i}`);
  }
  // A record with a non-zero reserved byte and a matching checksum is still rejected.
  const reserved = new Uint8Array(16);
  reserved.set(r.subarray(0, RECORD_FIELDS.crc));
  reserved[RECORD_FIELDS.reserved] = 1;
  const crc = (crc32c(reserved.subarray(0, RECORD_FIELDS.crc), 0xffff_ffff) ^ 0xffff_ffff) >>> 0;
  new DataView(reserved.buffer).setUint32(RECORD_FIELDS.crc, crc, true);
  assert.equal(decodeJournalRecord(reserved, 0), undefined);
  reserved[RECORD_FIELDS.reserved] = 0;
  new DataView(reserved.buffer).setUint32(RECORD_FIELDS.crc, (crc32c(reserved.subarray(0, 12), 0xffff_ffff) ^ 0xffff_ffff) >>> 0, true);
  assert.deepEqual(decodeJournalRecord(reserved, 0), { op: OP_PRESENT, first: 7, count: 3 });
  assert.throws(() => encodeJournalRecord({ op: OP_PRESENT, first: 0, count: 0 }), RangeError);
});

test('replayJournal() stops at the first invalid or out-of-range record', () => {
  const header = encodeJournalHeader({ unitSize: 4096, blobSize: 10 * 4096 });
  const bytes = concat(
    header,
    encodeJournalRecord({ op: OP_PRESENT, first: 0, count: 4 }),
    encodeJournalRecord({ op: OP_ABSENT, first: 1, count: 1 }),
    encodeJournalRecord({ op: OP_PRESENT, first: 8, count: 3 }), // unit 10 does not exist
    encodeJournalRecord({ op: OP_PRESENT, first: 5, count: 1 }),
  );
  const r = replayJournal(bytes);
  assert.deepEqual([...r.present.runs()], [[0, 1], [2, 2]]);
  assert.equal(r.records, 2);
  assert.equal(r.validLength, JOURNAL_HEADER_SIZE + 2 * JOURNAL_RECORD_SIZE);
});

const opArb = fc.record({
  op: fc.constantFrom(OP_PRESENT, OP_ABSENT),
  first: fc.nat({ max: 63 }),
  count: fc.integer({ min: 1, max: 16 }),
}).map((r) => ({ ...r, count: Math.min(r.count, 64 - r.first) }) as JournalRecord);

test('replayJournal() of any prefix equals the model state after the complete records in it', () => {
  fc.assert(
    fc.property(fc.array(opArb, { maxLength: 40 }), fc.nat(), (ops, cutSeed) => {
      const bytes = concat(encodeJournalHeader({ unitSize: 4096, blobSize: 64 * 4096 - 100 }), ...ops.map(encodeJournalRecord));
      const cut = JOURNAL_HEADER_SIZE + (cutSeed % (bytes.length - JOURNAL_HEADER_SIZE + 1));
      const complete = Math.floor((cut - JOURNAL_HEADER_SIZE) / JOURNAL_RECORD_SIZE);
      const model = new Set<number>();
      for (const r of ops.slice(0, complete)) {
        for (let u = r.first; u < r.first + r.count; u++) {
          if (r.op === OP_PRESENT) model.add(u);
          else model.delete(u);
        }
      }
      const replay = replayJournal(bytes.subarray(0, cut));
      assert.equal(replay.records, complete);
      assert.equal(replay.present.count, model.size);
      for (let u = 0; u < 64; u++) assert.equal(replay.present.has(u), model.has(u));
      // Re-encoding the replayed state as runs gives the same state (compaction).
      const compacted = replayJournal(concat(bytes.subarray(0, JOURNAL_HEADER_SIZE), encodeJournalRuns(OP_PRESENT, replay.present.runs())));
      assert.deepEqual([...compacted.present.runs()], [...replay.present.runs()]);
    }),
    { seed: 0x0bd, numRuns: 300 },
  );
});
