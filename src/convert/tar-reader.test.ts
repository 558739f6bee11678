import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { Readable } from 'node:stream';
import { TarReader, type TarEntry } from './tar-reader.ts';
import { buildTar, type TarWriteEntry } from './tar-writer.ts';
import { encodeTarHeader, TYPE } from './tar-header.ts';
import { DataCorruptionError, UnsupportedError } from '../io/errors.ts';

const enc = new TextEncoder();

/** Splits bytes into chunks of `size` (1 exercises every boundary). */
function chunked(bytes: Uint8Array, size: number): AsyncIterable<Uint8Array> {
  const parts: Uint8Array[] = [];
  for (let i = 0; i < bytes.length; i += size) parts.push(bytes.subarray(i, i + size));
  return Readable.from(parts);
}

async function readAll(src: AsyncIterable<Uint8Array>): Promise<Array<TarEntry & { data: string }>> {
  const tar = new TarReader(src);
  const out: Array<TarEntry & { data: string }> = [];
  for (let e = await tar.next(); e !== undefined; e = await tar.next()) {
    const parts: Uint8Array[] = [];
    if (e.path !== 'skipped') for await (const c of tar.body()) parts.push(c.slice()); // left unread: next() skips it
    out.push({ ...e, data: Buffer.concat(parts).toString('latin1') });
  }
  await tar.drain();
  return out;
}

const LONG = `${'d'.repeat(120)}/${'f'.repeat(130)}`;
const ENTRIES: TarWriteEntry[] = [
  { path: 'dir/', type: 'directory', mode: 0o2775, uid: 7, gid: 8, mtime: 1000 },
  { path: 'dir/file', type: 'file', data: enc.encode('hello world'), mode: 0o4755, mtime: 1001.5 },
  { path: 'skipped', type: 'file', data: new Uint8Array(1500).fill(7) },
  { path: LONG, type: 'file', data: enc.encode('long'), xattrs: { 'user.k': 'v', 'security.capability': new Uint8Array([1, 0, 0, 2]) } },
  { path: 'ln', type: 'symlink', linkpath: `/${'t'.repeat(150)}` },
  { path: 'hard', type: 'hardlink', linkpath: 'dir/file' },
  { path: 'dev/null', type: 'char', devmajor: 1, devminor: 3, mode: 0o666 },
  { path: 'dev/loop', type: 'block', devmajor: 7, devminor: 200 },
  { path: 'pipe', type: 'fifo' },
  { path: 'sock', type: 'socket' },
];

function check(got: Array<TarEntry & { data: string }>): void {
  assert.deepEqual(
    got.map((e) => [e.path, e.type, e.linkpath]),
    ENTRIES.map((e) => [e.path, e.type, e.linkpath ?? '']),
  );
  const [dir, file, , long, , , dev, blk] = got as [TarEntry, TarEntry & { data: string }, TarEntry, TarEntry & { data: string }, TarEntry, TarEntry, TarEntry, TarEntry];
  assert.deepEqual([dir.mode, dir.uid, dir.gid, dir.mtime], [0o2775, 7, 8, 1000]);
  assert.deepEqual([file.mode, file.mtime, file.size, file.data], [0o4755, 1001.5, 11, 'hello world']);
  assert.equal(long.data, 'long');
  assert.equal(new TextDecoder().decode(long.xattrs.get('user.k')), 'v');
  assert.deepEqual([...(long.xattrs.get('security.capability') as Uint8Array)], [1, 0, 0, 2]);
  assert.deepEqual([dev.devmajor, dev.devminor, blk.devmajor, blk.devminor], [1, 3, 7, 200]);
}

test('TarReader reads every entry kind with PAX long names, whatever the chunking', async () => {
  const bytes = buildTar(ENTRIES);
  for (const size of [1, 511, 512, 4096, bytes.length]) check(await readAll(chunked(bytes, size)));
});

test('TarReader reads GNU long names and long links', async () => {
  check(await readAll(chunked(buildTar(ENTRIES, { longNames: 'gnu' }), 333)));
});

test('TarReader reads what Python tarfile writes (PAX and GNU formats)', async (t) => {
  for (const format of ['PAX_FORMAT', 'GNU_FORMAT', 'USTAR_FORMAT']) {
    await t.test(format, async () => {
      const script = `
import tarfile, io, sys
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode='w', format=tarfile.${format}) as tf:
    def add(name, type, data=b'', **kw):
        ti = tarfile.TarInfo(name)
        ti.type = type
        ti.size = len(data)
        for k, v in kw.items(): setattr(ti, k, v)
        tf.addfile(ti, io.BytesIO(data) if data else None)
    long = 'x' * 90 + '/' + ('y' * 90 if '${format}' != 'USTAR_FORMAT' else 'y' * 60)
    target = long if '${format}' != 'USTAR_FORMAT' else 'short'
    add('a/', tarfile.DIRTYPE, mode=0o755, uid=1, gid=2, mtime=12345)
    add(long, tarfile.REGTYPE, b'payload' * 100, mode=0o640)
    add('a/link', tarfile.SYMTYPE, linkname='../' + target)
    add('a/hard', tarfile.LNKTYPE, linkname=target)
    add('a/fifo', tarfile.FIFOTYPE)
    add('a/chr', tarfile.CHRTYPE, devmajor=5, devminor=1)
sys.stdout.buffer.write(buf.getvalue())
`;
      const py = spawnSync('python3', ['-c', script], { maxBuffer: 1 << 24 });
      assert.equal(py.status, 0, py.stderr?.toString());
      const got = await readAll(chunked(new Uint8Array(py.stdout), 700));
      const long = `${'x'.repeat(90)}/${format === 'USTAR_FORMAT' ? 'y'.repeat(60) : 'y'.repeat(90)}`;
      const target = format === 'USTAR_FORMAT' ? 'short' : long;
      assert.deepEqual(
        got.map((e) => [e.path.replace(/\/$/, ''), e.type, e.linkpath]),
        [
          ['a', 'directory', ''],
          [long, 'file', ''],
          ['a/link', 'symlink', `../${target}`],
          ['a/hard', 'hardlink', target],
          ['a/fifo', 'fifo', ''],
          ['a/chr', 'char', ''],
        ],
      );
      assert.equal(got[1]?.size, 700);
      assert.deepEqual([got[0]?.mode, got[0]?.uid, got[0]?.gid, got[0]?.mtime], [0o755, 1, 2, 12345]);
      assert.deepEqual([got[5]?.devmajor, got[5]?.devminor], [5, 1]);
    });
  }
});

test('TarReader: a stream that ends inside an entry fails naming it', async () => {
  const bytes = buildTar([{ path: 'big.bin', type: 'file', data: new Uint8Array(5000).fill(1) }]);
  const cut = bytes.subarray(0, 512 + 3000);
  await assert.rejects(readAll(chunked(cut, 1000)), (e: unknown) => e instanceof DataCorruptionError && /big\.bin.*3000 of its 5000 data bytes/.test(e.message));
  // Also when the caller skips the body.
  const tar = new TarReader(chunked(cut, 1000));
  await tar.next();
  await assert.rejects(tar.next(), /big\.bin/);
  // And inside a header block.
  await assert.rejects(readAll(chunked(bytes.subarray(0, 300), 100)), /ends inside a header block at byte 0/);
});

test('TarReader: a huge declared size over a short stream is a clear truncation', async () => {
  const bytes = buildTar([{ path: 'huge', type: 'file', data: enc.encode('x'), declaredSize: 2 ** 45 }], { noTrailer: true });
  const tar = new TarReader(chunked(bytes, 4096));
  const e = await tar.next();
  assert.equal(e?.size, 2 ** 45);
  await assert.rejects(
    (async () => {
      for await (const _ of tar.body());
    })(),
    /huge .*ends after 512 of its 35184372088832 data bytes/,
  );
});

test('TarReader: oversized PAX data, unknown type flags and a PAX header before the end marker', async () => {
  const pax = encodeTarHeader({ name: 'PaxHeaders/x', typeflag: TYPE.paxExtended, size: 2 << 20 });
  await assert.rejects(readAll(chunked(Buffer.concat([pax, new Uint8Array(2 << 20)]), 65536)), /PAX header declares 2097152 bytes, more than the 1048576-byte limit/);
  const sparse = Buffer.concat([encodeTarHeader({ name: 'sparse', typeflag: 'S' }), new Uint8Array(1024)]);
  await assert.rejects(readAll(chunked(sparse, 512)), (e: unknown) => e instanceof UnsupportedError && /sparse.*'S'/.test(e.message));
  const dangling = Buffer.concat([encodeTarHeader({ name: 'L', typeflag: TYPE.gnuLongName, size: 10 }), enc.encode('name\0'), new Uint8Array(507), new Uint8Array(1024)]);
  await assert.rejects(readAll(chunked(dangling, 512)), /followed by a zero block/);
});

test('TarReader: end of archive without the marker, zero blocks apart, and trailing data', async () => {
  const body = buildTar([{ path: 'a', type: 'file', data: enc.encode('A') }], { noTrailer: true });
  assert.equal((await readAll(chunked(body, 512))).length, 1);
  const apart = Buffer.concat([new Uint8Array(512), body, new Uint8Array(512), new Uint8Array(512), enc.encode('trailing junk')]);
  const tar = new TarReader(chunked(apart, 100));
  assert.equal((await tar.next())?.path, 'a');
  assert.equal(await tar.next(), undefined);
  assert.equal(await tar.drain(), 'trailing junk'.length);
  assert.equal(tar.position, apart.length);
});

test('TarReader applies the type from the mode for regular type flags (old writers)', async () => {
  const bytes = Buffer.concat([
    encodeTarHeader({ name: 'olddir/', typeflag: TYPE.regularOld }),
    encodeTarHeader({ name: 'oldlink', typeflag: TYPE.regular, mode: 0o120777, linkname: 't' }),
    new Uint8Array(1024),
  ]);
  const got = await readAll(chunked(bytes, 512));
  assert.deepEqual(got.map((e) => [e.path, e.type, e.mode]), [
    ['olddir/', 'directory', 0],
    ['oldlink', 'symlink', 0o777],
  ]);
});
