/**
 * Issue 5 acceptance: `obd convert` with real kernel mounts (root), images built here:
 *
 * (a) the upstream hello-world multi-arch list → an OCI layout: every platform converted,
 *     /hello of the mounted amd64 image identical to the original layer's and runs;
 * (b) a three-layer image with every entry kind (gzip, zstd and plain layers) → mounted
 *     tree identical to GNU tar's extraction with whiteouts (tree-diff), e2fsck clean;
 * (c) malicious layers fail naming the entry, and nothing reaches the target;
 * (d) a re-run with the conversion cache converts 0 layers; another layout gets the
 *     blobs copied; into a registry, a second repository gets them cross-mounted, and a
 *     registry source converts too.
 * More flags, busybox, `obd apply` and SIGINT: convert-cli.test.ts.
 */
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { buildTar, type TarWriteEntry } from '../src/convert/tar-writer.ts';
import { sha256 } from './support/shared.ts';
import { extractWithGnuTar, pseudoRandom, sampleLayers } from './support/sample-layers.ts';
import { diffTrees } from './support/tree-diff.ts';
import { writeTestImage } from './support/oci-image.ts';
import { assertFsckClean } from './support/fsck.ts';
import { startRegistry, type TestRegistry } from './support/registry.ts';
import { createConvertHarness, HELLO, layoutContent, originalHello, type ConvertHarness } from './support/convert-harness.ts';

const enc = new TextEncoder();

let h: ConvertHarness;
let sampleRef = '';
let expected = '';
let reg: TestRegistry | undefined;

before(async () => {
  h = createConvertHarness('obd-convert-');
  const { layers } = sampleLayers();
  sampleRef = await writeTestImage(join(h.dir, 'src'), {
    tag: 'sample',
    layers: [
      { tar: layers[0] as Uint8Array, compression: 'gzip' },
      { tar: layers[1] as Uint8Array, compression: 'zstd' },
      { tar: layers[2] as Uint8Array, compression: 'none' },
    ],
  });
  expected = join(h.dir, 'expected');
  mkdirSync(expected);
  extractWithGnuTar(layers, expected);
});

after(async () => {
  await reg?.stop();
  await h.cleanup();
});

describe('obd convert', () => {
  test('(a) hello-world: every platform of the manifest list converts; /hello is the original and runs', { timeout: 180_000 }, async () => {
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
    await h.withMount(out, (mnt) => {
      assert.equal(sha256(readFileSync(join(mnt, 'hello'))), sha256(originalHello()));
      const run = spawnSync('chroot', [mnt, '/hello'], { encoding: 'utf8', timeout: 30_000 });
      assert.equal(run.status, 0, run.stderr);
      assert.match(run.stdout, /Hello from Docker!/);
    });
    assert.deepEqual(readdirSync(h.work).filter((n) => /^\d+-/.test(n)), [], 'per-manifest work directories are removed');
  });

  test('(b) three layers of every entry kind: the mounted tree equals GNU tar extraction; e2fsck clean', { timeout: 180_000 }, async () => {
    const out = `oci:${join(h.dir, 'sample-out')}:v1`;
    const r = await h.convert(sampleRef, out, '--work-dir', h.work, '--oci', '--db', join(h.dir, 'cache.db'));
    assert.equal(r.layersConverted, 3);
    await h.withMount(out, async (mnt) => {
      assert.equal(await diffTrees(expected, mnt, { ignore: ['lost+found'] }), undefined);
    });
    const raw = join(h.dir, 'sample.raw');
    await h.obd('export', out, raw);
    assertFsckClean(raw);
    rmSync(raw);
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

  test('(d) into a registry: a second repository gets the layers by cross-repository mount', { timeout: 180_000 }, async () => {
    reg = await startRegistry({ auth: 'none' });
    const db = join(h.dir, 'registry-cache.db');
    const a = await h.convert(sampleRef, `${reg.host}/obd/a:v1`, '--work-dir', h.work, '--db', db, '--plain-http', reg.host);
    assert.equal(a.layersConverted, 3);
    const b = await h.convert(sampleRef, `${reg.host}/obd/b:v1`, '--work-dir', h.work, '--db', db, '--plain-http', reg.host);
    assert.deepEqual([b.layersConverted, b.layersReused, b.blobsMounted], [0, 3, 3]);
    await h.withMount(`${reg.host}/obd/b:v1`, async (mnt) => {
      assert.equal(await diffTrees(expected, mnt, { ignore: ['lost+found'] }), undefined);
    }, ['--plain-http', reg.host]);
    // From a registry source: blobs are downloaded ahead of the apply.
    await h.obd('push', sampleRef, `${reg.host}/obd/src:sample`, '--plain-http', reg.host);
    const out = `oci:${join(h.dir, 'from-registry')}:v1`;
    const c = await h.convert(`${reg.host}/obd/src:sample`, out, '--work-dir', h.work, '--no-db', '--plain-http', reg.host);
    assert.equal(c.layersConverted, 3);
    await h.withMount(out, async (mnt) => {
      assert.equal(await diffTrees(expected, mnt, { ignore: ['lost+found'] }), undefined);
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
      const r = await h.obdFails(['convert', src, `oci:${target}:x`, '--work-dir', h.work, '--no-db', '--run-dir', h.runDir]);
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
    const r = await h.obdFails(['convert', src, `oci:${target}:x`, '--work-dir', h.work, '--no-db', '--run-dir', h.runDir]);
    assert.match(r.stderr, /Cannot convert layer 0 \(sha256:[0-9a-f]{64}\): .*(hashing to|corrupt or truncated)/);
    assert.deepEqual(layoutContent(target), { manifests: 0, blobs: [] });
    h.assertNothingLeft();
  });
});
