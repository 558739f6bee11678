/**
 * Writes small OCI images into a local layout for tests: layers given as uncompressed
 * tars and stored gzip-, zstd-compressed or plain, a config whose `diff_ids` match, a
 * manifest tagged in `index.json`.
 *
 * @example
 * ```ts
 * const ref = await writeTestImage(dir, { tag: 'v1', layers: [{ tar, compression: 'gzip' }] });
 * // 'oci:<dir>:v1'
 * ```
 */
import { createHash } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { gzipSync } from 'node:zlib';
import { OciLayout } from '../../src/image/oci-layout.ts';
import { MEDIA_TYPES, type Descriptor } from '../../src/image/descriptor.ts';

export interface TestLayer {
  tar: Uint8Array;
  compression: 'gzip' | 'zstd' | 'none';
}

const sha = (b: Uint8Array): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

export function zstdCompress(b: Uint8Array): Uint8Array {
  const r = spawnSync('zstd', ['-q', '-c'], { input: b, maxBuffer: 1 << 28 });
  if (r.status !== 0) throw new Error(`zstd failed: ${r.stderr?.toString()}`);
  return new Uint8Array(r.stdout);
}

export async function writeTestImage(
  dir: string,
  options: { tag: string; layers: TestLayer[]; config?: Record<string, unknown> },
): Promise<string> {
  const layout = await OciLayout.openOrCreate(dir);
  const layers: Descriptor[] = [];
  for (const l of options.layers) {
    const blob = l.compression === 'gzip' ? gzipSync(l.tar) : l.compression === 'zstd' ? zstdCompress(l.tar) : l.tar;
    const digest = await layout.writeBlob(blob);
    const mediaType = l.compression === 'gzip' ? MEDIA_TYPES.ociLayerGzip : l.compression === 'zstd' ? MEDIA_TYPES.ociLayerZstd : MEDIA_TYPES.ociLayerTar;
    layers.push({ mediaType, digest, size: blob.length });
  }
  const config = new TextEncoder().encode(
    JSON.stringify({
      created: '2024-05-06T07:08:09.123456789Z',
      architecture: 'amd64',
      os: 'linux',
      config: { Env: ['PATH=/usr/bin:/bin'], Cmd: ['/bin/sh'], ...options.config },
      rootfs: { type: 'layers', diff_ids: options.layers.map((l) => sha(l.tar)) },
      history: options.layers.map((_, i) => ({ created: '2024-05-06T07:08:09Z', created_by: `layer ${i}` })),
    }),
  );
  const configDigest = await layout.writeBlob(config);
  const manifest = new TextEncoder().encode(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MEDIA_TYPES.ociManifest,
      config: { mediaType: MEDIA_TYPES.ociConfig, digest: configDigest, size: config.length },
      layers,
    }),
  );
  const digest = await layout.writeBlob(manifest);
  await layout.tag({ mediaType: MEDIA_TYPES.ociManifest, digest, size: manifest.length }, options.tag);
  return `oci:${dir}:${options.tag}`;
}
