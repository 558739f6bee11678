import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { decodePaxRecords, decodeTarHeader, encodePaxRecords, encodeTarHeader, isZeroBlock, TAR_BLOCK, TAR_FIELDS, TYPE } from './tar-header.ts';
import { DataCorruptionError } from '../io/errors.ts';

const enc = new TextEncoder();

test('encodeTarHeader() then decodeTarHeader() returns the fields', () => {
  const block = encodeTarHeader({
    name: 'usr/bin/tool',
    typeflag: TYPE.regular,
    mode: 0o4755,
    uid: 1000,
    gid: 50,
    size: 12345,
    mtime: 1_700_000_000,
    uname: 'user',
    gname: 'staff',
    prefix: 'a/b',
  });
  assert.equal(block.length, TAR_BLOCK);
  const h = decodeTarHeader(block);
  assert.deepEqual(
    { name: h.name, prefix: h.prefix, mode: h.mode, uid: h.uid, gid: h.gid, size: h.size, mtime: h.mtime, typeflag: h.typeflag, magic: h.magic, uname: h.uname, gname: h.gname },
    { name: 'usr/bin/tool', prefix: 'a/b', mode: 0o4755, uid: 1000, gid: 50, size: 12345, mtime: 1_700_000_000, typeflag: '0', magic: 'ustar', uname: 'user', gname: 'staff' },
  );
});

test('decodeTarHeader() rejects a bad checksum and accepts the signed sum', () => {
  const block = encodeTarHeader({ name: 'x', typeflag: TYPE.regular, uname: '\u00e9' });
  const bad = block.slice();
  bad[0] = 0x79;
  assert.throws(() => decodeTarHeader(bad), (e: unknown) => e instanceof DataCorruptionError && /checksum/.test(e.message));
  // Old writers summed signed bytes: rewrite the checksum that way.
  const signed = block.slice();
  let sum = 0;
  for (let i = 0; i < TAR_BLOCK; i++) {
    const c = i >= 148 && i < 156 ? 0x20 : (signed[i] as number);
    sum += c >= 0x80 ? c - 256 : c;
  }
  signed.set(enc.encode(`${sum.toString(8).padStart(6, '0')}\0 `), 148);
  assert.equal(decodeTarHeader(signed).uname, '\u00e9');
});

test('numeric fields: space padding, empty fields and GNU base-256', () => {
  const block = encodeTarHeader({ name: 'big', typeflag: TYPE.regular, size: 2 ** 40, uid: 0o7777777 + 1 });
  const [at, size] = TAR_FIELDS.size;
  assert.equal((block[at] as number) & 0x80, 0x80, 'a size above 8 GiB is written in base-256');
  const h = decodeTarHeader(block);
  assert.equal(h.size, 2 ** 40);
  assert.equal(h.uid, 0o7777777 + 1);
  // "   644 \0" style and an all-NUL field.
  const spaced = encodeTarHeader({ name: 'p', typeflag: TYPE.regular });
  spaced.set(enc.encode('   644 \0'), TAR_FIELDS.mode[0]);
  spaced.fill(0, TAR_FIELDS.mtime[0], TAR_FIELDS.mtime[0] + TAR_FIELDS.mtime[1]);
  let sum = 0;
  for (let i = 0; i < TAR_BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : (spaced[i] as number);
  spaced.set(enc.encode(`${sum.toString(8).padStart(6, '0')}\0 `), 148);
  const s = decodeTarHeader(spaced);
  assert.equal(s.mode, 0o644);
  assert.equal(s.mtime, 0);
  assert.equal(size, 12);
});

test('decodeTarHeader() rejects non-octal numbers naming the field', () => {
  const block = encodeTarHeader({ name: 'x', typeflag: TYPE.regular });
  block.set(enc.encode('00000z9'), TAR_FIELDS.uid[0]);
  let sum = 0;
  for (let i = 0; i < TAR_BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : (block[i] as number);
  block.set(enc.encode(`${sum.toString(8).padStart(6, '0')}\0 `), 148);
  assert.throws(() => decodeTarHeader(block), /uid field is not octal/);
});

test('GNU magic does not read the prefix field', () => {
  const h = decodeTarHeader(encodeTarHeader({ name: 'n', typeflag: TYPE.regular, format: 'gnu' }));
  assert.equal(h.magic, 'ustar ');
  assert.equal(h.prefix, '');
});

test('isZeroBlock() recognises only all-zero blocks', () => {
  assert.ok(isZeroBlock(new Uint8Array(TAR_BLOCK)));
  const b = new Uint8Array(TAR_BLOCK);
  b[511] = 1;
  assert.ok(!isZeroBlock(b));
});

test('PAX records: lengths that grow a digit, binary values, later records win', () => {
  const value = new Uint8Array([0, 1, 2, 0x0a, 0xff]);
  const long = 'p'.repeat(90); // record length crosses 99 → 100
  const data = encodePaxRecords([
    ['path', long],
    ['SCHILY.xattr.security.capability', value],
    ['path', 'final'],
  ]);
  const m = decodePaxRecords(data);
  assert.equal(new TextDecoder().decode(m.get('path')), 'final');
  assert.deepEqual([...(m.get('SCHILY.xattr.security.capability') as Uint8Array)], [...value]);
  const one = encodePaxRecords([['path', long]]);
  assert.equal(new TextDecoder().decode(one).split(' ')[0], String(one.length));
});

test('decodePaxRecords() rejects malformed records', () => {
  assert.throws(() => decodePaxRecords(enc.encode('12 path=abc')), DataCorruptionError);
  assert.throws(() => decodePaxRecords(enc.encode('x path=abc\n')), /has length/);
  assert.throws(() => decodePaxRecords(enc.encode('11 pathabc\n')), /no '='/);
  assert.deepEqual([...decodePaxRecords(new Uint8Array(8)).keys()], []);
});

test('property: decode(encode(h)) keeps every field', () => {
  const name = fc.string({ minLength: 1, maxLength: 60 }).filter((s) => !s.includes('\0') && enc.encode(s).length <= 100);
  fc.assert(
    fc.property(
      fc.tuple(name, fc.constantFrom('0', '1', '2', '3', '4', '5', '6')),
      fc.tuple(fc.integer({ min: 0, max: 0o7777 }), fc.nat({ max: 2 ** 32 })),
      fc.nat({ max: Number.MAX_SAFE_INTEGER }),
      ([n, t], [mode, uid], size) => {
        const h = decodeTarHeader(encodeTarHeader({ name: n, typeflag: t, mode, uid, size }));
        assert.deepEqual([h.name, h.typeflag, h.mode, h.uid, h.size], [n, t, mode, uid, size]);
      },
    ),
  );
});
