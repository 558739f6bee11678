/**
 * Copies an image (a manifest, or an index with every child) between endpoints:
 * blobs first (skipping those the target has), then manifests bottom-up, the top one
 * under the target's tag.
 */
import { DataCorruptionError, InvalidArgumentError } from '../io/errors.ts';
import { isIndexMediaType, type Descriptor, type Index, type Manifest } from './descriptor.ts';
import type { ImageEndpoint } from './image-endpoint.ts';

export interface CopyResult {
  descriptor: Descriptor;
  blobsCopied: number;
  blobsSkipped: number;
  bytesCopied: number;
}

function mediaTypeOf(bytes: Uint8Array, desc: Descriptor): string {
  if (desc.mediaType !== '') return desc.mediaType;
  const parsed = JSON.parse(new TextDecoder().decode(bytes)) as { mediaType?: string; manifests?: unknown };
  return parsed.mediaType ?? (parsed.manifests !== undefined ? 'application/vnd.oci.image.index.v1+json' : 'application/vnd.oci.image.manifest.v1+json');
}

export async function copyImage(src: ImageEndpoint, dst: ImageEndpoint): Promise<CopyResult> {
  const result: CopyResult = { descriptor: await src.resolve(), blobsCopied: 0, blobsSkipped: 0, bytesCopied: 0 };
  const tag = dst.tag ?? src.tag;
  if (tag === undefined) throw new InvalidArgumentError(`Cannot copy to ${dst.name}: no tag given`);

  const copyBlob = async (d: Descriptor): Promise<void> => {
    if (await dst.hasBlob(d)) {
      result.blobsSkipped++;
      return;
    }
    await dst.putBlob(d, await src.blobStream(d));
    result.blobsCopied++;
    result.bytesCopied += d.size;
  };

  const copyManifest = async (d: Descriptor, depth: number, top: boolean): Promise<Descriptor> => {
    if (depth > 8) throw new DataCorruptionError(`Cannot copy ${src.name}: indexes nested deeper than 8`);
    const bytes = await src.readManifest(d);
    const desc = { ...d, mediaType: mediaTypeOf(bytes, d), size: bytes.length };
    const doc = JSON.parse(new TextDecoder().decode(bytes)) as Partial<Manifest & Index>;
    if (isIndexMediaType(desc.mediaType) || Array.isArray(doc.manifests)) {
      for (const child of doc.manifests ?? []) await copyManifest(child, depth + 1, false);
    } else {
      if (doc.config === undefined || !Array.isArray(doc.layers)) {
        throw new DataCorruptionError(`Cannot copy ${src.name}: manifest ${d.digest} has no config or layers`);
      }
      await copyBlob(doc.config);
      for (const layer of doc.layers) await copyBlob(layer);
    }
    await dst.putManifest(desc, bytes, top ? tag : undefined);
    return desc;
  };

  result.descriptor = await copyManifest(result.descriptor, 0, true);
  return result;
}
