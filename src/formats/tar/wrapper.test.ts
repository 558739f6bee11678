import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';
import type { BlobReader } from '../../io/blob-reader.ts';
import { MemorySink } from '../../io/byte-sink.ts';
import { MemoryReader } from '../../io/memory-reader.ts';
import { DataCorruptionError } from '../../io/errors.ts';
import { FIXTURES, sha256, vector } from '../../../test/support/shared.ts';
import { pat } from '../../../test/support/generators.ts';
import {
  TarWrapSink,
  encodeTarWrapPrefix,
  isOverlaybdTar,
  isUstarHeader,
  openTarPayload,
  paxSizeRecord,
  parsePaxRecords,
  parseTarNumber,
  wrapBytes,
} from './wrapper.ts';

const HELLO = `${FIXTURES}/hello-world-converted/blobs/sha256/022231c3f1af70e0cc42f0c3781eabf174cff608210585bf93fc83e16d33672d`;
const td = new TextDecoder();
const te = new TextEncoder();

function file(path: string): Uint8Array {
  return new Uint8Array(readFileSync(path));
}

function text(b: Uint8Array, at: number, size: number): string {
  return td.decode(b.subarray(at, at + size));
}

function cstr(b: Uint8Array, at: number, size: number): string {
  const s = b.subarray(at, at + size);
  const z = s.indexOf(0);
  return td.decode(z < 0 ? s : s.subarray(0, z));
}

async function readAll(r: BlobReader): Promise<Uint8Array> {
  const out = new Uint8Array(r.size);
  assert.equal(await r.readAt(out, 0), r.size);
  return out;
}

async function wrapStreaming(payload: Uint8Array, chunk: number): Promise<Uint8Array> {
  const sink = new MemorySink();
  const tar = await TarWrapSink.create(sink);
  for (let off = 0; off < payload.length; off += chunk) await tar.write(payload.subarray(off, off + chunk));
  assert.equal(tar.position, payload.length);
  await tar.close();
  return sink.bytes();
}

/** A minimal ustar header as Go's archive/tar or Python's tarfile would write it (zero-padded octal). */
function ustarHeader(name: string, size: number, type = '0'): Uint8Array {
  const h = new Uint8Array(512);
  h.set(te.encode(name), 0);
  h.set(te.encode('0000444\0'), 100);
  h.set(te.encode('0000000\0'), 108);
  h.set(te.encode('0000000\0'), 116);
  h.set(te.encode(`${size.toString(8).padStart(11, '0')}\0`), 124);
  h.set(te.encode('00000000000\0'), 136);
  h.set(te.encode(type), 156);
  h.set(te.encode('ustar\x0000'), 257);
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const v of h) sum += v;
  h.set(te.encode(`${sum.toString(8).padStart(6, '0')}\0 `), 148);
  return h;
}

function archive(...parts: Uint8Array[]): Uint8Array {
  const padded = parts.map((p) => {
    const out = new Uint8Array(Math.ceil(p.length / 512) * 512);
    out.set(p);
    return out;
  });
  const total = padded.reduce((a, p) => a + p.length, 0) + 1024;
  const out = new Uint8Array(total);
  let o = 0;
  for (const p of padded) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

test('the hello-world layer has the tar fields of tar-wrapper.md §6.1', async () => {
  const b = file(HELLO);
  assert.equal(b.length, 642560);
  assert.equal(await isOverlaybdTar(new MemoryReader(b)), true);
  assert.equal(cstr(b, 0, 100), 'overlaybd.pax');
  assert.equal(text(b, 156, 1), 'x');
  assert.equal(text(b, 124, 12), '         17 ');
  assert.equal(text(b, 148, 8), '  5356 \0');
  assert.equal(cstr(b, 512, 512), '15 size=639491\n');
  const m = 1024;
  assert.equal(cstr(b, m, 100), 'overlaybd.commit');
  assert.equal(text(b, m + 100, 8), '100644 \0');
  assert.equal(text(b, m + 108, 8), '     0 \0');
  assert.equal(text(b, m + 116, 8), '     0 \0');
  assert.equal(text(b, m + 124, 12), '          0 ');
  assert.equal(text(b, m + 136, 12), '          0 ');
  assert.equal(text(b, m + 148, 8), ' 12025 \0');
  assert.equal(cstr(b, m + 265, 32), 'root');
  assert.equal(cstr(b, m + 297, 32), 'root');
  const payload = await openTarPayload(new MemoryReader(b));
  assert.ok(payload !== null);
  assert.equal(payload.size, 639491);
  const head = new Uint8Array(8);
  await payload.readAt(head, 0);
  assert.deepEqual([...head], [0x5a, 0x46, 0x69, 0x6c, 0x65, 0x00, 0x01, 0x00]);
  assert.deepEqual(await readAll(payload), b.subarray(1536, 1536 + 639491));
  assert.equal(b.length, Math.ceil((1536 + 639491) / 512) * 512 + 1024);
});

test('wrapBytes() and TarWrapSink reproduce the hello-world blob byte for byte (§6.2)', async () => {
  const b = file(HELLO);
  const payload = b.subarray(1536, 1536 + 639491);
  assert.equal(sha256(wrapBytes(payload)), '022231c3f1af70e0cc42f0c3781eabf174cff608210585bf93fc83e16d33672d');
  assert.equal(sha256(await wrapStreaming(payload, 100000)), '022231c3f1af70e0cc42f0c3781eabf174cff608210585bf93fc83e16d33672d');
});

test('the L1.lz4.commit.tar and zf_lz4_bs4_crc.zfile.tar payloads are their plain files, and rewrap identically', async () => {
  for (const [tarName, plainName] of [
    ['lsmt/L1.lz4.commit.tar', 'lsmt/L1.lz4.commit'],
    ['zfile/zf_lz4_bs4_crc.zfile.tar', 'zfile/zf_lz4_bs4_crc.zfile'],
  ] as const) {
    const tar = file(vector(tarName));
    const plain = file(vector(plainName));
    const payload = await openTarPayload(new MemoryReader(tar));
    assert.ok(payload !== null, tarName);
    assert.deepEqual(await readAll(payload), plain, tarName);
    assert.deepEqual(wrapBytes(plain), tar, tarName);
    assert.deepEqual(await wrapStreaming(plain, 4096), tar, tarName);
  }
});

test('TarWrapSink forwards writeAt to payload offsets and handles empty and block-sized payloads', async () => {
  const sink = new MemorySink();
  const tar = await TarWrapSink.create(sink);
  await tar.write(pat(1000, 0));
  await tar.writeAt(Uint8Array.of(9, 9), 10);
  await tar.close();
  const out = sink.bytes();
  assert.equal(out.length, 1536 + 1024 + 1024);
  assert.deepEqual([...out.subarray(1546, 1548)], [9, 9]);
  assert.equal(cstr(out, 512, 512), '13 size=1000\n');
  for (const n of [0, 1, 512, 511, 513]) {
    const w = wrapBytes(pat(n, 3));
    assert.equal(w.length, Math.ceil((1536 + n) / 512) * 512 + 1024);
    assert.deepEqual(await wrapStreaming(pat(n, 3), 7), w);
    const p = await openTarPayload(new MemoryReader(w));
    assert.ok(p !== null);
    assert.equal(p.size, n);
    assert.deepEqual(await readAll(p), pat(n, 3));
  }
});

test('paxSizeRecord() counts its own length digits', () => {
  assert.equal(paxSizeRecord(639491), '15 size=639491\n');
  assert.equal(paxSizeRecord(0), '9 size=0\n');
  assert.equal(paxSizeRecord(9), '9 size=9\n');
  assert.equal(paxSizeRecord(10), '11 size=10\n');
  assert.equal(paxSizeRecord(1234567), '16 size=1234567\n');
  for (const n of [0, 5, 99, 100, 999999, 10 ** 12]) {
    const r = paxSizeRecord(n);
    assert.equal(Number(r.split(' ')[0]), r.length);
  }
});

test('an abandoned TarWrapSink (upstream placeholder) is not recognised as tar', async () => {
  const sink = new MemorySink();
  const tar = await TarWrapSink.create(sink);
  await tar.write(pat(5000, 1));
  const out = sink.bytes();
  assert.equal(cstr(out, 0, 100), 'overlaybd.pax');
  assert.equal(cstr(out, 1024, 100), 'overlaybd.new');
  assert.equal(text(out, 1024 + 257, 8), 'xxtar\0xx');
  assert.equal(await isOverlaybdTar(new MemoryReader(out)), false);
  assert.equal(await openTarPayload(new MemoryReader(out)), null);
});

test('a ustar archive from a standard library is read at 512; GNU archives and short blobs are plain (§6.3)', async () => {
  const t1 = file(vector('apply', 't1.tar'));
  const p = await openTarPayload(new MemoryReader(t1));
  assert.ok(p !== null);
  assert.equal(p.size, 16);
  assert.equal(td.decode(await readAll(p)), 'hello overlaybd\n');

  const go = archive(ustarHeader('overlaybd.commit', 1000), pat(1000, 4));
  const gp = await openTarPayload(new MemoryReader(go));
  assert.ok(gp !== null);
  assert.deepEqual(await readAll(gp), pat(1000, 4));

  const gnu = gunzipSync(readFileSync(vector('apply', 'ext4_64.tar.gz')));
  assert.equal(await isOverlaybdTar(new MemoryReader(new Uint8Array(gnu))), false);
  assert.equal(await openTarPayload(new MemoryReader(new Uint8Array(gnu))), null);
  assert.equal(await isOverlaybdTar(new MemoryReader(new Uint8Array(100))), false);
  assert.equal(await openTarPayload(new MemoryReader(file(vector('lsmt', 'L1.lz4.commit')))), null);
});

test('openTarPayload() skips PAX, global and GNU long-name headers and computes the true offset', async () => {
  const longPath = `${'d/'.repeat(80)}file`;
  const rec = (k: string, v: string): string => {
    const body = ` ${k}=${v}\n`;
    let len = body.length + String(body.length).length;
    if (String(len).length + body.length !== len) len = String(len).length + body.length;
    return `${len}${body}`;
  };
  const big = te.encode(rec('path', longPath) + rec('comment', 'x'.repeat(600)) + rec('size', '777'));
  const g = te.encode(rec('comment', 'global'));
  const long = te.encode(`${longPath}\0`);
  const tarBytes = archive(
    ustarHeader('pax_global_header', g.length, 'g'),
    g,
    ustarHeader('././@LongLink', long.length, 'L'),
    long,
    ustarHeader('PaxHeaders/x', big.length, 'x'),
    big,
    ustarHeader('short', 0),
    pat(777, 2),
  );
  const p = await openTarPayload(new MemoryReader(tarBytes));
  assert.ok(p !== null);
  assert.equal(p.size, 777);
  assert.deepEqual(await readAll(p), pat(777, 2));
});

test('openTarPayload() bounds-checks truncated archives and rejects an empty one', async () => {
  const w = wrapBytes(pat(3000, 1));
  await assert.rejects(openTarPayload(new MemoryReader(w.subarray(0, 2000))), DataCorruptionError);
  await assert.rejects(openTarPayload(new MemoryReader(w.subarray(0, 1200))), DataCorruptionError);
  const huge = archive(ustarHeader('a', 10 ** 9), new Uint8Array(0));
  await assert.rejects(openTarPayload(new MemoryReader(huge)), /run past the end/);
  const emptyish = archive(ustarHeader('PaxHeaders/x', 0, 'x'));
  await assert.rejects(openTarPayload(new MemoryReader(emptyish)), /archive ends/);
});

test('isUstarHeader() accepts the signed checksum and rejects a wrong one', () => {
  const h = ustarHeader('\xe9\xe9', 1);
  h[0] = 0xe9;
  h[1] = 0xe9;
  let signed = 0;
  for (let i = 0; i < 512; i++) {
    const v = i >= 148 && i < 156 ? 0x20 : h[i]!;
    signed += v >= 0x80 ? v - 256 : v;
  }
  h.set(te.encode(`${signed.toString(8).padStart(6, '0')}\0 `), 148);
  assert.equal(isUstarHeader(h), true);
  h[10] = 1;
  assert.equal(isUstarHeader(h), false);
  assert.equal(isUstarHeader(encodeTarWrapPrefix(5).subarray(0, 512)), true);
  assert.equal(isUstarHeader(encodeTarWrapPrefix(5).subarray(1024, 1536)), true);
});

test('parsePaxRecords() parses records and rejects short lengths and missing =', () => {
  const m = parsePaxRecords(te.encode('15 size=639491\n22 path=a/b/c/d/e/f/g\n\0\0\0'));
  assert.equal(m.get('size'), '639491');
  assert.equal(m.get('path'), 'a/b/c/d/e/f/g');
  assert.throws(() => parsePaxRecords(te.encode('4 a=\n')), /below 5/);
  assert.throws(() => parsePaxRecords(te.encode('10 abcdef\n')), /no '='/);
  assert.throws(() => parsePaxRecords(te.encode('99 size=1\n')), /runs past/);
  assert.throws(() => parsePaxRecords(te.encode('size=1\n')), /no length/);
});

test('parseTarNumber() reads space-padded, zero-padded and base-256 fields', () => {
  const f = (s: string): Uint8Array => te.encode(s);
  assert.equal(parseTarNumber(f('         17 '), 0, 12), 15);
  assert.equal(parseTarNumber(f('00000000017\0'), 0, 12), 15);
  assert.equal(parseTarNumber(f('  5356 \0'), 0, 8), 0o5356);
  assert.equal(parseTarNumber(new Uint8Array(12), 0, 12), 0);
  assert.equal(parseTarNumber(f('0000009\0'), 0, 8), null);
  assert.equal(parseTarNumber(f('12 34   '), 0, 8), null);
  const b = new Uint8Array(12);
  b[0] = 0x80;
  b[10] = 0x01;
  b[11] = 0x02;
  assert.equal(parseTarNumber(b, 0, 12), 258);
});
