/**
 * The apply semantics (erofs-and-fs.md §2.3 and §5 cases 3-6) on a plain directory:
 * every entry kind, whiteouts, opaque directories, replacements, attributes, hard links
 * and long names, compared with GNU tar's extraction of the same layers plus
 * containerd's hard-link rule (a hard-link header's owner, mode and times apply to the
 * shared inode, which GNU tar does not do); unsafe and
 * malformed archives fail naming the entry and write nothing outside the root. Needs
 * root (chown, mknod, security.capability).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, lchownSync, lstatSync, lutimesSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import { DirectoryApplier } from './directory-applier.ts';
import { SubprocessApplier } from './subprocess-applier.ts';
import type { ApplyWarning, LayerApplier } from './layer-applier.ts';
import { buildTar, type TarWriteEntry } from './tar-writer.ts';
import { DataCorruptionError, InvalidArgumentError, NotFoundError } from '../io/errors.ts';
import { extractWithGnuTar, sampleLayers } from '../../test/support/sample-layers.ts';
import { diffTrees } from '../../test/support/tree-diff.ts';

let dir = '';
let n = 0;
const enc = new TextEncoder();
const fresh = (): string => {
  const d = join(dir, String(++n));
  mkdirSync(d);
  return d;
};
const stream = (b: Uint8Array): AsyncIterable<Uint8Array> => Readable.from([b]);
const zstd = (b: Uint8Array): Uint8Array => {
  const r = spawnSync('zstd', ['-q', '-c'], { input: b, maxBuffer: 1 << 26 });
  assert.equal(r.status, 0);
  return new Uint8Array(r.stdout);
};

/**
 * The reference tree: GNU tar layer by layer, then what containerd does beyond it — the
 * owner, mode and times of each hard-link header applied to the linked inode.
 */
function extractReference(layers: readonly Uint8Array[], entries: readonly TarWriteEntry[][], root: string): void {
  layers.forEach((layer, i) => {
    extractWithGnuTar([layer], root);
    for (const e of entries[i] ?? []) {
      if (e.type !== 'hardlink' || !existsSync(join(root, e.path))) continue;
      const p = join(root, e.path);
      lchownSync(p, e.uid ?? 0, e.gid ?? 0);
      chmodSync(p, e.mode ?? 0o644);
      lutimesSync(p, e.mtime ?? 0, e.mtime ?? 0);
    }
  });
}

async function applyAll(applier: LayerApplier, root: string, layers: Uint8Array[]): Promise<ApplyWarning[]> {
  const warnings: ApplyWarning[] = [];
  for (const l of layers) await applier.apply(stream(l), root, { onWarning: (w) => warnings.push(w) });
  return warnings;
}

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'obd-apply-'));
});
after(() => {
  rmSync(dir, { recursive: true, force: true });
});

test("three layers of every entry kind give the tree GNU tar gives, with containerd's hard-link rule (gzip, zstd, plain)", async () => {
  const { layers, entries } = sampleLayers();
  const expected = fresh();
  extractReference(layers, entries, expected);
  const actual = fresh();
  const applier = new DirectoryApplier();
  const stats = [];
  stats.push(await applier.apply(stream(gzipSync(layers[0] as Uint8Array)), actual));
  stats.push(await applier.apply(stream(zstd(layers[1] as Uint8Array)), actual));
  stats.push(await applier.apply(stream(layers[2] as Uint8Array), actual));
  assert.equal(await diffTrees(expected, actual), undefined);
  assert.deepEqual(stats.map((s) => s.compression), ['gzip', 'zstd', 'none']);
  const [s1, s2, s3] = stats as [(typeof stats)[0], (typeof stats)[0], (typeof stats)[0]];
  assert.equal(s1.diffId, `sha256:${createHashHex(layers[0] as Uint8Array)}`);
  assert.equal(s1.blobDigest, `sha256:${createHashHex(gzipSync(layers[0] as Uint8Array))}`);
  assert.equal(s2.blobDigest, `sha256:${createHashHex(zstd(layers[1] as Uint8Array))}`);
  assert.deepEqual([s3.blobDigest, s3.diffId, s3.blobBytes], [`sha256:${createHashHex(layers[2] as Uint8Array)}`, `sha256:${createHashHex(layers[2] as Uint8Array)}`, (layers[2] as Uint8Array).length]);
  assert.equal(s1.tarBytes, (layers[0] as Uint8Array).length);
  assert.deepEqual([s1.hardlinks, s1.symlinks, s1.devices, s1.fifos, s1.xattrs], [2, 4, 2, 1, 3]);
  assert.deepEqual([s2.whiteouts, s2.opaques, s2.hardlinks], [1, 1, 1]);
  assert.deepEqual([s3.whiteouts, s3.opaques], [2, 1]);
  // Spot checks on top of the comparison.
  // The hard-link headers (mode 0644, owner 0:0, mtime 0) apply to the inode, as containerd does.
  assert.deepEqual([statSync(join(actual, 'usr/bin/tool')).mode & 0o7777, statSync(join(actual, 'usr/bin/tool')).mtimeMs], [0o644, 0]);
  assert.equal(statSync(join(actual, 'tmp')).mode & 0o7777, 0o1777);
  assert.ok(!existsSync(join(actual, 'opt/removeme')));
  assert.deepEqual(readdirSync(join(actual, 'opt/opq')).sort(), ['c']);
  assert.deepEqual(readdirSync(join(actual, 'opt/opq2')).sort(), ['after', 'kept']);
  assert.equal(statSync(join(actual, 'opt/lower-link')).ino, statSync(join(actual, 'var/lib/data.bin')).ino);
  assert.equal(statSync(join(actual, 'opt/replace-file')).isDirectory(), true);
  assert.equal(statSync(join(actual, 'opt/replace-dir')).isFile(), true);
});

function createHashHex(b: Uint8Array): string {
  return spawnSync('sha256sum', [], { input: b, encoding: 'utf8' }).stdout.split(' ')[0] as string;
}

test('whiteouts spare what the same layer extracted before them (spec §5 case 3)', async () => {
  const root = fresh();
  const lower: TarWriteEntry[] = [
    { path: 'a/x', type: 'file', data: enc.encode('x') },
    { path: 'a/y', type: 'file', data: enc.encode('y') },
    { path: 'b', type: 'file', data: enc.encode('b') },
  ];
  const applier = new DirectoryApplier();
  await applyAll(applier, root, [
    buildTar(lower),
    buildTar([
      { path: 'a/.wh..wh..opq', type: 'file' },
      { path: 'a/z', type: 'file', data: enc.encode('z') },
      { path: '.wh.b', type: 'file' },
    ]),
  ]);
  assert.deepEqual(readdirSync(root).sort(), ['a']);
  assert.deepEqual(readdirSync(join(root, 'a')), ['z']);
  const root2 = fresh();
  await applyAll(applier, root2, [
    buildTar(lower),
    buildTar([
      { path: 'a/z', type: 'file', data: enc.encode('z') },
      { path: 'a/.wh..wh..opq', type: 'file' },
      { path: 'a/.wh.z', type: 'file' },
    ]),
  ]);
  assert.deepEqual(readdirSync(join(root2, 'a')), ['z'], 'a/z extracted earlier in the layer survives the opaque marker and the whiteout');
});

test('replacements: a directory becomes a file and a file a directory (spec §5 case 4)', async () => {
  const root = fresh();
  await applyAll(new DirectoryApplier(), root, [
    buildTar([
      { path: 'd/sub/deep', type: 'file', data: enc.encode('1') },
      { path: 'f', type: 'file', data: enc.encode('2') },
      { path: 's', type: 'symlink', linkpath: 'd' },
    ]),
    buildTar([
      { path: 'd', type: 'file', data: enc.encode('file now') },
      { path: 'f/', type: 'directory' },
      { path: 'f/inner', type: 'file', data: enc.encode('dir now') },
      { path: 's/', type: 'directory' },
    ]),
  ]);
  assert.equal(readFileSync(join(root, 'd'), 'utf8'), 'file now');
  assert.equal(readFileSync(join(root, 'f/inner'), 'utf8'), 'dir now');
  assert.ok(lstatSync(join(root, 's')).isDirectory(), 'a directory entry replaces a symlink');
  await assert.rejects(
    new DirectoryApplier().apply(stream(buildTar([{ path: 'd/x', type: 'file' }])), root),
    /tar entry d\/x .*its parent 'd' exists and is not a directory/,
  );
});

test('attributes: xattrs, an ignored EPERM on a symlink, directory mtimes after their content (spec §5 case 5)', async () => {
  const root = fresh();
  const warnings = await applyAll(new DirectoryApplier(), root, [
    buildTar([
      { path: 'dir/', type: 'directory', mtime: 1234 },
      { path: 'dir/file', type: 'file', data: enc.encode('v'), mtime: 99, xattrs: { 'user.k': 'v' } },
      { path: 'dir/link', type: 'symlink', linkpath: 'file', xattrs: { 'user.k': 'v' } },
      { path: 'sock', type: 'socket' },
      { path: 'dir/.wh..wh.plnk', type: 'file' },
    ]),
  ]);
  const got = spawnSync('getfattr', ['-n', 'user.k', '--only-values', join(root, 'dir/file')], { encoding: 'utf8' });
  assert.equal(got.stdout, 'v');
  assert.equal(statSync(join(root, 'dir')).mtimeMs, 1234_000);
  assert.equal(statSync(join(root, 'dir/file')).mtimeMs, 99_000);
  assert.deepEqual(
    warnings.map((w) => w.message.replace(/:.*$/, '')),
    ['sockets cannot be stored in a layer', 'AUFS metadata entry skipped', 'extended attribute user.k not set'],
  );
  assert.ok(!existsSync(join(root, 'sock')));
});

test('hard links to lower layers and across directories, GNU and PAX long names (spec §5 case 6)', async () => {
  const root = fresh();
  const long = `${'n'.repeat(150)}/${'m'.repeat(120)}`;
  await applyAll(new DirectoryApplier(), root, [
    buildTar([{ path: 'lower/file', type: 'file', data: enc.encode('shared') }]),
    buildTar([{ path: long, type: 'file', data: enc.encode('L') }, { path: 'x/hard', type: 'hardlink', linkpath: 'lower/file' }, { path: 'x/hard-long', type: 'hardlink', linkpath: long }], { longNames: 'gnu' }),
  ]);
  assert.equal(statSync(join(root, 'x/hard')).ino, statSync(join(root, 'lower/file')).ino);
  assert.equal(statSync(join(root, 'x/hard-long')).ino, statSync(join(root, long)).ino);
  await assert.rejects(
    new DirectoryApplier().apply(stream(buildTar([{ path: 'y', type: 'hardlink', linkpath: 'missing' }])), root),
    (e: unknown) => e instanceof NotFoundError && /tar entry y .*hard-link target missing does not exist/.test(e.message),
  );
});

test('unsafe names and symlink escapes fail naming the entry; nothing is written outside the root', async () => {
  const outside = join(dir, `outside-${process.pid}`);
  mkdirSync(outside);
  const root = fresh();
  symlinkSync(`../../../../../../../../..${outside}`, join(root, 'escape'));
  const cases: Array<[TarWriteEntry[], RegExp]> = [
    [[{ path: '../evil', type: 'file', data: enc.encode('x') }], /tar entry \.\.\/evil \(at byte 0\): the name has a '\.\.' component/],
    [[{ path: `${outside}/abs`, type: 'file', data: enc.encode('x') }], /absolute names are refused/],
    [[{ path: 'escape/pwned', type: 'file', data: enc.encode('x') }], /tar entry escape\/pwned .*leads out of the root/],
    [
      [
        { path: 'esc2', type: 'symlink', linkpath: '../../../../../../..' },
        { path: 'esc2/tmp/pwned', type: 'file', data: enc.encode('x') },
      ],
      /tar entry esc2\/tmp\/pwned .*leads out of the root/,
    ],
    [[{ path: 'h', type: 'hardlink', linkpath: '../../etc/passwd' }], /hard-link target \.\.\/\.\.\/etc\/passwd.*'\.\.' component/],
    [[{ path: '.wh...', type: 'file' }], /'\.\.' component|whiteout of/],
  ];
  for (const [entries, re] of cases) {
    await assert.rejects(new DirectoryApplier().apply(stream(buildTar(entries)), root), (e: unknown) => e instanceof InvalidArgumentError && re.test(e.message), String(re));
  }
  assert.deepEqual(readdirSync(outside), []);
  // An absolute symlink is resolved inside the root, as the container sees it.
  await new DirectoryApplier().apply(stream(buildTar([{ path: 'abs', type: 'symlink', linkpath: '/inside' }, { path: 'abs/f', type: 'file', data: enc.encode('in') }])), root);
  assert.equal(readFileSync(join(root, 'inside/f'), 'utf8'), 'in');
});

test('huge declared sizes and truncated streams fail clearly', async () => {
  const root = fresh();
  const huge = buildTar([{ path: 'big.img', type: 'file', data: enc.encode('x'), declaredSize: 2 ** 40 }]);
  await assert.rejects(
    new DirectoryApplier().apply(stream(huge), root, { maxFileSize: 64 * 2 ** 30 }),
    (e: unknown) => e instanceof InvalidArgumentError && /tar entry big\.img .*declares 1099511627776 bytes, more than the 68719476736-byte limit/.test(e.message),
  );
  const tar = buildTar([{ path: 'data.bin', type: 'file', data: new Uint8Array(100_000).fill(3) }]);
  await assert.rejects(new DirectoryApplier().apply(stream(tar.subarray(0, 60_000)), root), (e: unknown) => e instanceof DataCorruptionError && /data\.bin .*ends after 59488 of its 100000 data bytes/.test(e.message));
  const gz = gzipSync(tar);
  await assert.rejects(new DirectoryApplier().apply(stream(gz.subarray(0, gz.length - 100)), root), DataCorruptionError);
  const zs = zstd(tar);
  await assert.rejects(new DirectoryApplier().apply(stream(zs.subarray(0, zs.length >> 1)), root), DataCorruptionError);
});

test('SubprocessApplier gives the same tree and forwards warnings and typed errors', async () => {
  const { layers, entries } = sampleLayers();
  const expected = fresh();
  extractReference(layers, entries, expected);
  const actual = fresh();
  const applier = new SubprocessApplier();
  const progress: number[] = [];
  for (const l of layers) {
    const s = await applier.apply(stream(gzipSync(l)), actual, { onProgress: (p) => progress.push(p.tarBytes) });
    assert.equal(s.tarBytes, l.length);
  }
  assert.equal(await diffTrees(expected, actual), undefined);
  assert.ok(progress.length >= 3);
  const warnings: ApplyWarning[] = [];
  await applier.apply(stream(buildTar([{ path: 'sock', type: 'socket' }])), actual, { onWarning: (w) => warnings.push(w) });
  assert.equal(warnings[0]?.entry, 'sock');
  await assert.rejects(applier.apply(stream(buildTar([{ path: '../x', type: 'file' }])), actual), InvalidArgumentError);
  const failing = (async function* () {
    yield buildTar([{ path: 'ok', type: 'file', data: new Uint8Array(10) }]).subarray(0, 1024);
    throw new DataCorruptionError('source broke');
  })();
  await assert.rejects(applier.apply(failing, actual), /source broke/);
});

test('writeFile through the root is not followed for the final component', async () => {
  const root = fresh();
  const target = join(dir, `victim-${process.pid}`);
  writeFileSync(target, 'keep');
  symlinkSync(target, join(root, 'f'));
  await new DirectoryApplier().apply(stream(buildTar([{ path: 'f', type: 'file', data: enc.encode('new') }])), root);
  assert.equal(readFileSync(target, 'utf8'), 'keep');
  assert.equal(readFileSync(join(root, 'f'), 'utf8'), 'new');
  assert.ok(!lstatSync(join(root, 'f')).isSymbolicLink());
});

/** Apply children of this process (pids), from /proc. */
function applyChildren(): number[] {
  const out: number[] = [];
  for (const name of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === process.pid && readFileSync(`/proc/${name}/cmdline`, 'utf8').includes('_apply-child')) out.push(Number(name));
    } catch {
      // gone
    }
  }
  return out;
}

test('SubprocessApplier: prepare() starts the child ahead; one warm child serves layer after layer; a failure ends it', async () => {
  const applier = new SubprocessApplier();
  applier.prepare();
  applier.prepare(); // still one spare
  const spare = applyChildren();
  assert.equal(spare.length, 1);
  const root = fresh();
  const big = pseudoBytes(3 << 20);
  for (const [i, data] of [enc.encode('a'), big, new Uint8Array(0)].entries()) {
    // In small pieces, as a download delivers them.
    const tar = buildTar([{ path: `f${i}`, type: 'file', data }]);
    const pieces = Readable.from(Array.from({ length: Math.ceil(tar.length / 70_000) }, (_, k) => tar.subarray(k * 70_000, (k + 1) * 70_000)));
    const s = await applier.apply(pieces, root);
    assert.deepEqual([s.files, s.fileBytes], [1, data.length]);
    assert.deepEqual(applyChildren(), spare, `layer ${i}: the same process`);
  }
  assert.deepEqual(new Uint8Array(readFileSync(join(root, 'f1'))), big);
  // A failing layer: a typed error, and that process is gone; the next apply starts another.
  await assert.rejects(applier.apply(stream(buildTar([{ path: '../x', type: 'file' }])), root), InvalidArgumentError);
  assert.deepEqual(applyChildren(), []);
  assert.equal((await applier.apply(stream(buildTar([{ path: 'b', type: 'file' }])), root)).files, 1);
  assert.equal(applyChildren().length, 1);
  await applier.close();
  assert.deepEqual(applyChildren(), []);
});

function pseudoBytes(n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0, x = 1; i < n; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    out[i] = x >>> 24;
  }
  return out;
}
