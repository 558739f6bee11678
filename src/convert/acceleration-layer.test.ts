import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { OciLayout } from '../image/oci-layout.ts';
import { ANNOTATIONS, MEDIA_TYPES } from '../image/descriptor.ts';
import { encodeTrace } from '../device/trace-file.ts';
import { DataCorruptionError, FailedPreconditionError } from '../io/errors.ts';
import { TarReader } from './tar-reader.ts';
import { addAccelerationLayer } from './acceleration-layer.ts';

const enc = new TextEncoder();
const dec = new TextDecoder();
const TRACE = encodeTrace([
  { op: 'R', layerIndex: 0, count: 4096, offset: 8192 },
  { op: 'R', layerIndex: 1, count: 65536, offset: 0 },
]);

/** A layout with an image `obd` whose layers carry the given annotations (no layer blobs needed). */
async function layoutWith(dir: string, tops: Array<Record<string, string>>): Promise<OciLayout> {
  const layout = await OciLayout.openOrCreate(dir);
  const config = enc.encode(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: tops.map((_, i) => `sha256:${String(i).repeat(64)}`) }, history: [{ created_by: 'base' }] }));
  const configDigest = await layout.writeBlob(config);
  const manifest = enc.encode(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MEDIA_TYPES.ociManifest,
      config: { mediaType: MEDIA_TYPES.ociConfig, digest: configDigest, size: config.length },
      layers: tops.map((annotations, i) => ({ mediaType: MEDIA_TYPES.ociLayerTar, digest: `sha256:${String(i).repeat(64)}`, size: 10, annotations })),
    }),
  );
  await layout.tag({ mediaType: MEDIA_TYPES.ociManifest, digest: await layout.writeBlob(manifest), size: manifest.length }, 'obd');
  return layout;
}

const overlaybd = (fsType?: string): Record<string, string> => ({
  [ANNOTATIONS.blobDigest]: `sha256:${'a'.repeat(64)}`,
  [ANNOTATIONS.blobSize]: '10',
  ...(fsType !== undefined ? { [ANNOTATIONS.fsType]: fsType } : {}),
});

test('addAccelerationLayer() appends a tar with the trace and records it in manifest and config (image-format.md §9)', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'obd-accel-'));
  try {
    const layout = await layoutWith(dir, [overlaybd(), overlaybd('ext4')]);
    const now = new Date('2026-01-02T03:04:05Z');
    const desc = await addAccelerationLayer({ layout, from: 'obd', to: 'obd-accel', trace: TRACE, now });
    assert.equal((await layout.resolve('obd-accel')).digest, desc.digest);
    const manifestText = dec.decode(await layout.readBlob(desc.digest));
    assert.match(manifestText, /^\{\n {3}"schemaVersion": 2/, 'pretty-printed with 3 spaces');
    const manifest = JSON.parse(manifestText) as { mediaType: string; layers: Array<{ mediaType: string; digest: string; size: number; annotations: Record<string, string> }>; config: { digest: string } };
    assert.equal(manifest.mediaType, MEDIA_TYPES.ociManifest);
    assert.equal(manifest.layers.length, 3);
    const top = manifest.layers[2]!;
    assert.equal(top.mediaType, MEDIA_TYPES.ociLayerTar);
    assert.deepEqual(top.annotations, {
      [ANNOTATIONS.version]: '0.1.0',
      [ANNOTATIONS.blobDigest]: top.digest,
      [ANNOTATIONS.blobSize]: String(top.size),
      [ANNOTATIONS.accelerationLayer]: 'yes',
      [ANNOTATIONS.fsType]: 'ext4',
    });
    const tar = new TarReader(Readable.from([await layout.readBlob(top.digest)]));
    const entry = await tar.next();
    assert.equal(entry?.path, 'trace');
    assert.equal(entry?.mode, 0o444);
    const parts: Uint8Array[] = [];
    for await (const c of tar.body()) parts.push(c.slice());
    assert.deepEqual(new Uint8Array(Buffer.concat(parts)), TRACE);
    assert.equal(await tar.next(), undefined, 'exactly one entry');
    const config = JSON.parse(dec.decode(await layout.readBlob(manifest.config.digest))) as { created: string; rootfs: { diff_ids: string[] }; history: Array<{ created_by: string }> };
    assert.equal(config.created, now.toISOString());
    assert.equal(config.rootfs.diff_ids.length, 3);
    assert.equal(config.rootfs.diff_ids[2], top.digest, 'diff_id == digest');
    assert.deepEqual(
      config.history.map((h) => h.created_by),
      ['Acceleration Layer', 'base'],
      'the history entry is prepended',
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('addAccelerationLayer() refuses a bad trace, a plain top layer and an image that has one already', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'obd-accel-'));
  try {
    const layout = await layoutWith(dir, [overlaybd()]);
    await assert.rejects(addAccelerationLayer({ layout, from: 'obd', to: 'x', trace: TRACE.subarray(0, 30) }), DataCorruptionError);
    await addAccelerationLayer({ layout, from: 'obd', to: 'obd-accel', trace: TRACE });
    await assert.rejects(addAccelerationLayer({ layout, from: 'obd-accel', to: 'x', trace: TRACE }), (e: unknown) => e instanceof FailedPreconditionError && /already has one/.test(e.message));
    const plain = await layoutWith(join(dir, 'plain'), [{}]);
    await assert.rejects(addAccelerationLayer({ layout: plain, from: 'obd', to: 'x', trace: TRACE }), (e: unknown) => e instanceof FailedPreconditionError && /not an overlaybd layer/.test(e.message));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
