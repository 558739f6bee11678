/**
 * Image facts `rpull` derives before talking to containerd: the layers of a manifest,
 * the diff IDs of its config, their chain IDs (OCI image spec: `ChainID(L0) = DiffID(L0)`,
 * `ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))`) and the snapshot labels of a
 * layer's Prepare, as containerd's unpacker (plus `ctr rpull`'s image-ref) passes them.
 */
import { createHash } from 'node:crypto';
import { DataCorruptionError } from '../io/errors.ts';
import { LABELS } from './labels.ts';

/** A layer descriptor of an image manifest. */
export interface ManifestLayer {
  mediaType: string;
  digest: string;
  size: number;
  annotations: Record<string, string>;
}

/** What rpull reads from a manifest. */
export interface ParsedManifest {
  config: { mediaType: string; digest: string; size: number };
  layers: ManifestLayer[];
}

const SNAPSHOT_LABEL_PREFIX = 'containerd.io/snapshot/';

function isDescriptor(d: unknown): d is { mediaType?: unknown; digest: string; size: number; annotations?: unknown } {
  const o = d as Record<string, unknown> | null;
  return typeof o === 'object' && o !== null && typeof o['digest'] === 'string' && typeof o['size'] === 'number';
}

/** Parses an image manifest's config and layer descriptors. */
export function parseManifest(bytes: Uint8Array, what: string): ParsedManifest {
  let doc: { config?: unknown; layers?: unknown };
  try {
    doc = JSON.parse(new TextDecoder().decode(bytes)) as typeof doc;
  } catch (e) {
    throw new DataCorruptionError(`Cannot parse manifest ${what}: not JSON`, { cause: e });
  }
  if (!isDescriptor(doc.config) || !Array.isArray(doc.layers) || !doc.layers.every(isDescriptor)) {
    throw new DataCorruptionError(`Cannot parse manifest ${what}: config or layers descriptor missing or malformed`);
  }
  const mediaType = (d: { mediaType?: unknown }): string => (typeof d.mediaType === 'string' ? d.mediaType : '');
  const annotations = (d: { annotations?: unknown }): Record<string, string> => {
    const a = d.annotations;
    if (typeof a !== 'object' || a === null) return {};
    return Object.fromEntries(Object.entries(a).filter((e): e is [string, string] => typeof e[1] === 'string'));
  };
  return {
    config: { mediaType: mediaType(doc.config), digest: doc.config.digest, size: doc.config.size },
    layers: doc.layers.map((l) => ({ mediaType: mediaType(l), digest: l.digest, size: l.size, annotations: annotations(l) })),
  };
}

/** The `rootfs.diff_ids` of an image config. */
export function parseDiffIds(bytes: Uint8Array, what: string): string[] {
  let doc: { rootfs?: { diff_ids?: unknown } };
  try {
    doc = JSON.parse(new TextDecoder().decode(bytes)) as typeof doc;
  } catch (e) {
    throw new DataCorruptionError(`Cannot parse image config ${what}: not JSON`, { cause: e });
  }
  const ids = doc.rootfs?.diff_ids;
  if (!Array.isArray(ids) || !ids.every((d) => typeof d === 'string' && /^sha256:[0-9a-f]{64}$/.test(d))) {
    throw new DataCorruptionError(`Cannot parse image config ${what}: rootfs.diff_ids missing or not sha256 digests`);
  }
  return ids as string[];
}

/** Chain IDs of `diffIds`, bottom layer first. */
export function chainIds(diffIds: readonly string[]): string[] {
  const out: string[] = [];
  for (const diff of diffIds) {
    const prev = out[out.length - 1];
    out.push(prev === undefined ? diff : `sha256:${createHash('sha256').update(`${prev} ${diff}`).digest('hex')}`);
  }
  return out;
}

/**
 * Labels of the pull-time Prepare of `layer`: its `containerd.io/snapshot/*` annotations,
 * the overlaybd blob digest and size (defaulting to the layer's own), the target chain ID
 * (`containerd.io/snapshot.ref`) and the image reference.
 */
export function layerSnapshotLabels(layer: ManifestLayer, o: { chainId: string; imageRef: string }): Record<string, string> {
  const labels: Record<string, string> = {};
  for (const [k, v] of Object.entries(layer.annotations)) if (k.startsWith(SNAPSHOT_LABEL_PREFIX)) labels[k] = v;
  labels[LABELS.blobDigest] ??= layer.digest;
  labels[LABELS.blobSize] ??= String(layer.size);
  labels[LABELS.targetRef] = o.chainId;
  labels[LABELS.imageRef] = o.imageRef;
  return labels;
}
