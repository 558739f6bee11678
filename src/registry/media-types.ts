/**
 * Manifest media types the registry client asks for and recognises (image-format.md §2).
 */

export const MANIFEST_MEDIA_TYPES = {
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
} as const;

/** `Accept` value for manifest GET/HEAD: every OCI and Docker v2 manifest and index type. */
export const MANIFEST_ACCEPT = [
  MANIFEST_MEDIA_TYPES.ociIndex,
  MANIFEST_MEDIA_TYPES.ociManifest,
  MANIFEST_MEDIA_TYPES.dockerManifestList,
  MANIFEST_MEDIA_TYPES.dockerManifest,
].join(', ');

/** Whether `mediaType` names an image index or a Docker manifest list. */
export function isIndexMediaType(mediaType: string | undefined): boolean {
  return mediaType === MANIFEST_MEDIA_TYPES.ociIndex || mediaType === MANIFEST_MEDIA_TYPES.dockerManifestList;
}

/** Whether `mediaType` names a single-image manifest. */
export function isImageManifestMediaType(mediaType: string | undefined): boolean {
  return mediaType === MANIFEST_MEDIA_TYPES.ociManifest || mediaType === MANIFEST_MEDIA_TYPES.dockerManifest;
}

/**
 * The media type of manifest bytes: the `Content-Type` when it is specific, else the
 * document's own `mediaType`, else inferred from its shape (`manifests` → OCI index,
 * `config` → OCI manifest).
 */
export function manifestMediaType(contentType: string | null, bytes: Uint8Array): string {
  const ct = contentType?.split(';')[0]?.trim().toLowerCase() ?? '';
  if (ct !== '' && ct !== 'application/json' && ct !== 'text/plain' && ct !== 'application/octet-stream') return ct;
  try {
    const doc = JSON.parse(new TextDecoder().decode(bytes)) as { mediaType?: unknown; manifests?: unknown; config?: unknown };
    if (typeof doc.mediaType === 'string' && doc.mediaType !== '') return doc.mediaType;
    if (Array.isArray(doc.manifests)) return MANIFEST_MEDIA_TYPES.ociIndex;
    if (doc.config !== undefined) return MANIFEST_MEDIA_TYPES.ociManifest;
  } catch {
    // not JSON: fall through
  }
  return ct === '' ? 'application/octet-stream' : ct;
}
