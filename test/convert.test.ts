/**
 * Issue 5 acceptance: `obd convert` with real kernel mounts (root), images built here:
 *
 * The reference is containerd: a private containerd 1.6 imports each original image and
 * unpacks it with its overlayfs snapshotter (test/support/containerd-unpack.ts); the
 * mounted converted image must equal that tree in every path, type, mode, owner, size,
 * content, link target, hard-link grouping, xattr and time (tree-diff; directory times
 * only where containerd did not stamp them with the unpack time).
 *
 * (a) the upstream hello-world multi-arch list → an OCI layout: every platform converted,
 *     the mounted amd64 image equals containerd's unpack, /hello runs;
 * (b) a three-layer image with every entry kind (gzip, zstd and plain layers) → mounted
 *     tree equal to containerd's, e2fsck clean; a busybox image (Debian's busybox-static
 *     with its applet links) likewise; a hard link to a lower layer's file, which
 *     containerd's overlay apply refuses, links to the lower inode;
 * (c) malicious layers fail naming the entry, and nothing reaches the target;
 * (d) a re-run with the conversion cache converts 0 layers; another layout gets the
 *     blobs copied; into a registry, a second repository gets them cross-mounted, and a
 *     registry source converts too.
 * More flags, busybox, `obd apply` and SIGINT: convert-cli.test.ts.
 */
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { buildTar, type TarWriteEntry } from '../src/convert/tar-writer.ts';
import { sha256 } from './support/shared.ts';
import { pseudoRandom, sampleLayers } from './support/sample-layers.ts';
import { diffTrees, type TreeOptions } from './support/tree-diff.ts';
import { containerdSkipReason, startContainerd, type ContainerdReference, type UnpackedImage } from './support/containerd-unpack.ts';
import { writeTestImage } from './support/oci-image.ts';
import { assertFsckClean } from './support/fsck.ts';
import { startRegistry, type TestRegistry } from './support/registry.ts';
import { createConvertHarness, HELLO, layoutContent, originalHello, type ConvertHarness } from './support/convert-harness.ts';

const enc = new TextEncoder();

const skip = containerdSkipReason();
let h: ConvertHarness;
let sampleRef = '';
let reg: TestRegistry | undefined;
let ctd: ContainerdReference | undefined;
/** containerd's unpack of the sample image, mounted for the whole file. */
let expected: UnpackedImage | undefined;
let compare: TreeOptions = {};

/** containerd's tree of the image `tag` in `layout`, and the diff options that go with it. */
async function reference(layout: string, tag: string): Promise<{ view: UnpackedImage; options: TreeOptions }> {
  const started = Date.now() - 1000;
  const view = await (ctd as ContainerdReference).unpack(layout, tag);
  return { view, options: { ignore: ['lost+found'], dirTimesBefore: started } };
}

before(async () => {
  h = createConvertHarness('obd-convert-');
  // The sample without its hard link to a lower layer's file: containerd cannot unpack that
  // (its overlay apply links inside the layer's upper directory); tested on its own below.
  const { entries } = sampleLayers();
  const layers = [buildTar(entries[0] ?? []), buildTar((entries[1] ?? []).filter((e) => e.path !== 'opt/lower-link')), buildTar(entries[2] ?? [], { longNames: 'gnu' })];
  sampleRef = await writeTestImage(join(h.dir, 'src'), {
    tag: 'sample',
    layers: [
      { tar: layers[0] as Uint8Array, compression: 'gzip' },
      { tar: layers[1] as Uint8Array, compression: 'zstd' },
      { tar: layers[2] as Uint8Array, compression: 'none' },
    ],
  });
  if (skip !== false) return;
  ctd = await startContainerd();
  const r = await reference(join(h.dir, 'src'), 'sample');
  expected = r.view;
  compare = r.options;
});

after(async () => {
  await reg?.stop();
  await expected?.release().catch(() => undefined);
  await ctd?.stop();
  await h.cleanup();
});

describe('obd convert', () => {
  test("(a) hello-world: every platform of the manifest list converts; the amd64 tree is containerd's; /hello runs", { skip, timeout: 180_000 }, async () => {
    const out = `oci:${join(h.dir, 'hello-out')}:hello`;
    const r = await h.convert(`oci:${HELLO}:multi-arch`, out, '--work-dir', h.work, '--no-db');
    assert.equal(r.manifests, 9);
    assert.equal(r.layersConverted, 9);
    const layout = join(h.dir, 'hello-out');
    const index = JSON.parse(readFileSync(join(layout, 'blobs', 'sha256', r.digest.slice(7)), 'utf8')) as { mediaType: string; manifests: Array<{ platform: unknown; mediaType: string; digest: string }> };
    const source = JSON.parse(readFileSync(join(HELLO, 'blobs', 'sha256', '726023f73a8fc5103fa6776d48090539042cb822531c6b751b1f6dd18cb5705d'), 'utf8')) as { manifests: Array<{ platform: unknown }> };
    assert.equal(index.mediaType, 'application/vnd.docker.distribution.manifest.list.v2+json');
    assert.deepEqual(index.manifests.map((m) => m.platform), source.manifests.map((m) => m.platform));
    for (const m of index.manifests) {
      const manifest = JSON.parse(readFileSync(join(layout, 'blobs', 'sha256', m.digest.slice(7)), 'utf8')) as { config: { digest: string }; layers: Array<{ digest: string; mediaType: string; annotations: Record<string, string> }> };
      const config = JSON.parse(readFileSync(join(layout, 'blobs', 'sha256', manifest.config.digest.slice(7)), 'utf8')) as { rootfs: { diff_ids: string[] } };
      const layer = manifest.layers[0] as { digest: string; mediaType: string; annotations: Record<string, string> };
      assert.equal(m.mediaType, 'application/vnd.docker.distribution.manifest.v2+json');
      assert.equal(layer.mediaType, 'application/vnd.docker.image.rootfs.diff.tar');
      assert.deepEqual(config.rootfs.diff_ids, [layer.digest]);
      assert.deepEqual(layer.annotations, {
        'containerd.io/snapshot/overlaybd/blob-digest': layer.digest,
        'containerd.io/snapshot/overlaybd/blob-size': String(readFileSync(join(layout, 'blobs', 'sha256', layer.digest.slice(7))).length),
        'containerd.io/snapshot/overlaybd/version': '0.1.0',
      });
    }
    const ref = await reference(HELLO, 'multi-arch');
    try {
      await h.withMount(out, async (mnt) => {
        assert.equal(await diffTrees(ref.view.root, mnt, ref.options), undefined);
      });
    } finally {
      await ref.view.release();
    }
    await h.withMount(out, (mnt) => {
      assert.equal(sha256(readFileSync(join(mnt, 'hello'))), sha256(originalHello()));
      const run = spawnSync('chroot', [mnt, '/hello'], { encoding: 'utf8', timeout: 30_000 });
      assert.equal(run.status, 0, run.stderr);
      assert.match(run.stdout, /Hello from Docker!/);
    });
    assert.deepEqual(readdirSync(h.work).filter((n) => /^\d+-/.test(n)), [], 'per-manifest work directories are removed');
  });

  test("(b) three layers of every entry kind: the mounted tree equals containerd's unpack; e2fsck clean", { skip, timeout: 180_000 }, async () => {
    const out = `oci:${join(h.dir, 'sample-out')}:v1`;
    const r = await h.convert(sampleRef, out, '--work-dir', h.work, '--oci', '--db', join(h.dir, 'cache.db'));
    assert.equal(r.layersConverted, 3);
    await h.withMount(out, async (mnt) => {
      assert.equal(await diffTrees((expected as UnpackedImage).root, mnt, compare), undefined);
    });
    const raw = join(h.dir, 'sample.raw');
    await h.obd('export', out, raw);
    assertFsckClean(raw);
    rmSync(raw);
  });

  test("(b) busybox (Debian's busybox-static, applets as hard links as in the official image): the tree is containerd's and runs", { skip, timeout: 180_000 }, async () => {
    const list = spawnSync('/bin/busybox', ['--list'], { encoding: 'utf8' });
    assert.equal(list.status, 0);
    const applets = list.stdout.split('\n').filter((a) => a !== '' && a !== 'busybox');
    const T = 1_700_000_000;
    const tar = buildTar([
      { path: 'bin/', type: 'directory', mtime: T },
      { path: 'bin/busybox', type: 'file', data: readFileSync('/bin/busybox'), mode: 0o755, mtime: T },
      ...applets.map((a): TarWriteEntry => ({ path: `bin/${a}`, type: 'hardlink', linkpath: 'bin/busybox', mode: 0o755, mtime: T })),
      { path: 'etc/', type: 'directory', mtime: T },
      { path: 'etc/passwd', type: 'file', data: enc.encode('root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n'), mtime: T },
      { path: 'etc/group', type: 'file', data: enc.encode('root:x:0:\nnogroup:x:65534:\n'), mtime: T },
      { path: 'home/', type: 'directory', mtime: T },
      { path: 'root/', type: 'directory', mode: 0o700, mtime: T },
      { path: 'tmp/', type: 'directory', mode: 0o1777, mtime: T },
      { path: 'usr/', type: 'directory', mtime: T },
      { path: 'usr/sbin/', type: 'directory', mtime: T },
      { path: 'var/', type: 'directory', mtime: T },
      { path: 'var/spool/mail/', type: 'directory', uid: 8, gid: 8, mode: 0o755, mtime: T },
      { path: 'var/www', type: 'symlink', linkpath: '/home', mtime: T },
    ]);
    const layout = join(h.dir, 'busybox');
    const src = await writeTestImage(layout, { tag: 'latest', layers: [{ tar, compression: 'gzip' }], config: { Cmd: ['sh'] } });
    const out = `oci:${join(h.dir, 'busybox-out')}:obd`;
    const r = await h.convert(src, out, '--work-dir', h.work, '--no-db');
    assert.equal(r.layersConverted, 1);
    const ref = await reference(layout, 'latest');
    try {
      await h.withMount(out, async (mnt) => {
        assert.equal(await diffTrees(ref.view.root, mnt, ref.options), undefined);
        const sh = spawnSync('chroot', [mnt, '/bin/sh', '-c', 'ls /bin | wc -l'], { encoding: 'utf8', timeout: 30_000 });
        assert.equal(sh.stdout.trim(), String(applets.length + 1), sh.stderr);
      });
    } finally {
      await ref.view.release();
    }
  });

  test("(b) a hard link to a lower layer's file (containerd refuses the image) links to the lower inode", { skip, timeout: 180_000 }, async () => {
    const layout = join(h.dir, 'lower-link');
    const src = await writeTestImage(layout, {
      tag: 'v1',
      layers: [
        { tar: buildTar([{ path: 'a/', type: 'directory' }, { path: 'a/file', type: 'file', data: enc.encode('shared'), mode: 0o640, uid: 7 }]), compression: 'gzip' },
        { tar: buildTar([{ path: 'b/', type: 'directory' }, { path: 'b/link', type: 'hardlink', linkpath: 'a/file', mode: 0o600, uid: 9 }]), compression: 'gzip' },
      ],
    });
    await assert.rejects((ctd as ContainerdReference).unpack(layout, 'v1'), /failed to extract layer .*b\/link: no such file or directory/);
    const out = `oci:${join(h.dir, 'lower-link-out')}:v1`;
    await h.convert(src, out, '--work-dir', h.work, '--no-db');
    await h.withMount(out, (mnt) => {
      const [a, b] = [statSync(join(mnt, 'a/file')), statSync(join(mnt, 'b/link'))];
      assert.deepEqual([b.ino, b.nlink, b.mode & 0o7777, b.uid], [a.ino, 2, 0o600, 9], "one inode, with the link header's owner and mode");
      assert.equal(readFileSync(join(mnt, 'b/link'), 'utf8'), 'shared');
    });
  });

  test('(d) a re-run with the cache converts 0 layers; another layout gets the cached blobs', { timeout: 180_000 }, async () => {
    const first = `oci:${join(h.dir, 'sample-out')}:v1`;
    const before = layoutContent(join(h.dir, 'sample-out'));
    const again = await h.convert(sampleRef, first, '--work-dir', h.work, '--oci', '--db', join(h.dir, 'cache.db'));
    assert.deepEqual([again.layersConverted, again.layersReused], [0, 3]);
    assert.deepEqual(layoutContent(join(h.dir, 'sample-out')), before, 'the same manifest, config and layers');
    const other = `oci:${join(h.dir, 'sample-copy')}:copy`;
    const copied = await h.convert(sampleRef, other, '--work-dir', h.work, '--oci', '--db', join(h.dir, 'cache.db'));
    assert.deepEqual([copied.layersConverted, copied.layersReused, copied.blobsUploaded], [0, 3, 4]);
    assert.equal(copied.digest, again.digest);
    await h.withMount(other, (mnt) => {
      assert.equal(readFileSync(join(mnt, 'opt/docs/readme'), 'utf8'), 'read me, version 2\n');
    });
  });

  test('(d) into a registry: a second repository gets the layers by cross-repository mount', { skip, timeout: 180_000 }, async () => {
    reg = await startRegistry({ auth: 'none' });
    const db = join(h.dir, 'registry-cache.db');
    const a = await h.convert(sampleRef, `${reg.host}/obd/a:v1`, '--work-dir', h.work, '--db', db, '--plain-http', reg.host);
    assert.equal(a.layersConverted, 3);
    const b = await h.convert(sampleRef, `${reg.host}/obd/b:v1`, '--work-dir', h.work, '--db', db, '--plain-http', reg.host);
    assert.deepEqual([b.layersConverted, b.layersReused, b.blobsMounted], [0, 3, 3]);
    await h.withMount(`${reg.host}/obd/b:v1`, async (mnt) => {
      assert.equal(await diffTrees((expected as UnpackedImage).root, mnt, compare), undefined);
    }, ['--plain-http', reg.host]);
    // From a registry source: blobs are downloaded ahead of the apply.
    await h.obd('push', sampleRef, `${reg.host}/obd/src:sample`, '--plain-http', reg.host);
    const out = `oci:${join(h.dir, 'from-registry')}:v1`;
    const c = await h.convert(`${reg.host}/obd/src:sample`, out, '--work-dir', h.work, '--no-db', '--plain-http', reg.host);
    assert.equal(c.layersConverted, 3);
    await h.withMount(out, async (mnt) => {
      assert.equal(await diffTrees((expected as UnpackedImage).root, mnt, compare), undefined);
    });
  });

  test('(c) malicious layers fail naming the entry and nothing is pushed', { timeout: 240_000 }, async () => {
    const outside = join(h.dir, 'outside');
    mkdirSync(outside);
    const good: TarWriteEntry[] = [{ path: 'etc/', type: 'directory' }, { path: 'etc/ok', type: 'file', data: enc.encode('ok') }];
    const truncated = buildTar([{ path: 'var/big.bin', type: 'file', data: pseudoRandom(9, 200_000) }]).subarray(0, 100_000);
    const cases: Array<[string, Uint8Array, RegExp]> = [
      ['dotdot', buildTar([{ path: '../../evil', type: 'file', data: enc.encode('x') }]), /tar entry \.\.\/\.\.\/evil \(at byte \d+\): the name has a '\.\.' component/],
      ['absolute', buildTar([{ path: `${outside}/abs`, type: 'file', data: enc.encode('x') }]), /tar entry .*outside\/abs .*absolute names are refused/],
      [
        'symlink-escape',
        buildTar([
          { path: 'esc', type: 'symlink', linkpath: '../../../../../../../../../../..' },
          { path: `esc${outside}/pwned`, type: 'file', data: enc.encode('x') },
        ]),
        /tar entry esc.*pwned .*leads out of the root/,
      ],
      ['huge', buildTar([{ path: 'huge.img', type: 'file', data: enc.encode('x'), declaredSize: 2 ** 42 }]), /tar entry huge\.img .*declares 4398046511104 bytes, more than/],
      ['truncated', truncated, /tar entry var\/big\.bin .*ends after \d+ of its 200000 data bytes/],
    ];
    for (const [name, bad, re] of cases) {
      const src = await writeTestImage(join(h.dir, `bad-${name}`), {
        tag: 'bad',
        layers: [
          { tar: buildTar(good), compression: 'gzip' },
          { tar: bad, compression: name === 'truncated' ? 'none' : 'gzip' },
        ],
      });
      const target = join(h.dir, `bad-out-${name}`);
      const r = await h.obdFails(['convert', src, `oci:${target}:x`, '--work-dir', h.work, '--no-db']);
      assert.match(r.stderr, re, name);
      assert.deepEqual(layoutContent(target), { manifests: 0, blobs: [] }, `${name}: nothing pushed`);
      h.assertNothingLeft();
    }
    assert.deepEqual(readdirSync(outside), []);

    // A blob that does not match its descriptor.
    const src = await writeTestImage(join(h.dir, 'bad-digest'), { tag: 'bad', layers: [{ tar: buildTar(good), compression: 'gzip' }] });
    const blobs = join(h.dir, 'bad-digest', 'blobs', 'sha256');
    const layerBlob = readdirSync(blobs).map((n) => join(blobs, n)).find((p) => readFileSync(p)[0] === 0x1f) as string;
    const bytes = readFileSync(layerBlob);
    bytes[bytes.length - 5] = (bytes[bytes.length - 5] as number) ^ 0xff;
    rmSync(layerBlob);
    writeFileSync(layerBlob, bytes);
    const target = join(h.dir, 'bad-out-digest');
    const r = await h.obdFails(['convert', src, `oci:${target}:x`, '--work-dir', h.work, '--no-db']);
    assert.match(r.stderr, /Cannot convert layer 0 \(sha256:[0-9a-f]{64}\): .*(hashing to|corrupt or truncated)/);
    assert.deepEqual(layoutContent(target), { manifests: 0, blobs: [] });
    h.assertNothingLeft();
  });
});
