/**
 * Stores overlaybd layers as an image in a local OCI layout: each layer blob gets the
 * overlaybd annotations (blob-digest, blob-size, version 0.1.0; image-format.md §3),
 * `diff_ids` equal the layer digests (uncompressed tar-wrapped blobs, §4.1), and the
 * manifest is tagged.
 */
import { fileDigest } from './file-digest.ts';
import { ANNOTATIONS, MEDIA_TYPES, type Descriptor, type Manifest } from './descriptor.ts';
import type { OciLayout } from './oci-layout.ts';
import { hostPlatform } from './image-device-config.ts';

export const OVERLAYBD_VERSION = '0.1.0';

export interface WriteImageOptions {
  /** Committed layer files (tar-wrapped ZFiles), bottom first. */
  layers: string[];
  tag: string;
  /** Image config fields (`config` of the OCI config: Cmd, Env, …). */
  config?: Record<string, unknown>;
  created?: string;
}

export async function writeOverlaybdImage(layout: OciLayout, options: WriteImageOptions): Promise<Descriptor> {
  const layers: Descriptor[] = [];
  for (const path of options.layers) {
    const { digest, size } = await fileDigest(path);
    await layout.importBlobFile(path, digest);
    layers.push({
      mediaType: MEDIA_TYPES.ociLayerTar,
      digest,
      size,
      annotations: { [ANNOTATIONS.blobDigest]: digest, [ANNOTATIONS.blobSize]: String(size), [ANNOTATIONS.version]: OVERLAYBD_VERSION },
    });
  }
  const platform = hostPlatform();
  const config = {
    ...(options.created !== undefined ? { created: options.created } : {}),
    architecture: platform.architecture,
    os: platform.os,
    config: options.config ?? {},
    rootfs: { type: 'layers', diff_ids: layers.map((l) => l.digest) },
  };
  const configBytes = new TextEncoder().encode(JSON.stringify(config));
  const configDigest = await layout.writeBlob(configBytes);
  const manifest: Manifest = {
    schemaVersion: 2,
    mediaType: MEDIA_TYPES.ociManifest,
    config: { mediaType: MEDIA_TYPES.ociConfig, digest: configDigest, size: configBytes.length },
    layers,
  };
  const bytes = new TextEncoder().encode(JSON.stringify(manifest));
  const digest = await layout.writeBlob(bytes);
  const desc: Descriptor = { mediaType: MEDIA_TYPES.ociManifest, digest, size: bytes.length };
  await layout.tag(desc, options.tag);
  return desc;
}
