import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { DataCorruptionError } from '../io/errors.ts';
import { chainIds, layerSnapshotLabels, parseDiffIds, parseManifest } from './_containerd-image.ts';
import { LABELS } from './labels.ts';

const d = (c: string): string => `sha256:${c.repeat(64)}`;
const enc = (o: unknown): Uint8Array => new TextEncoder().encode(JSON.stringify(o));

test('chainIds() keeps the bottom diff ID and hashes "<parent chain> <diff>" above it', () => {
  const [a, b, c] = [d('a'), d('b'), d('c')];
  const ab = `sha256:${createHash('sha256').update(`${a} ${b}`).digest('hex')}`;
  const abc = `sha256:${createHash('sha256').update(`${ab} ${c}`).digest('hex')}`;
  assert.deepEqual(chainIds([a, b, c]), [a, ab, abc]);
  assert.deepEqual(chainIds([]), []);
});

test('parseManifest() reads config and layers with their annotations; rejects a manifest without layers', () => {
  const m = parseManifest(
    enc({
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: d('c'), size: 10 },
      layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: d('1'), size: 5, annotations: { k: 'v', n: 1 } }],
    }),
    'm',
  );
  assert.equal(m.config.digest, d('c'));
  assert.deepEqual(m.layers, [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: d('1'), size: 5, annotations: { k: 'v' } }]);
  assert.throws(() => parseManifest(enc({ config: { digest: d('c'), size: 1 } }), 'm'), DataCorruptionError);
  assert.throws(() => parseManifest(enc('x').subarray(1), 'm'), DataCorruptionError);
});

test('parseDiffIds() requires sha256 diff IDs', () => {
  assert.deepEqual(parseDiffIds(enc({ rootfs: { type: 'layers', diff_ids: [d('1')] } }), 'c'), [d('1')]);
  assert.throws(() => parseDiffIds(enc({ rootfs: { diff_ids: ['md5:x'] } }), 'c'), DataCorruptionError);
  assert.throws(() => parseDiffIds(enc({}), 'c'), DataCorruptionError);
});

test('layerSnapshotLabels() passes containerd.io/snapshot/ annotations and adds target, image ref and blob size', () => {
  const labels = layerSnapshotLabels(
    { mediaType: 't', digest: d('1'), size: 42, annotations: { [LABELS.blobDigest]: d('1'), 'org.opencontainers.x': 'no', [LABELS.fsType]: 'ext4' } },
    { chainId: d('9'), imageRef: 'r.example/a:1' },
  );
  assert.deepEqual(labels, {
    [LABELS.blobDigest]: d('1'),
    [LABELS.fsType]: 'ext4',
    [LABELS.blobSize]: '42',
    [LABELS.targetRef]: d('9'),
    [LABELS.imageRef]: 'r.example/a:1',
  });
});
