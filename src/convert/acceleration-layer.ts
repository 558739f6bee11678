/**
 * Acceleration (trace) layer (image-format.md §9): what `ctr record-trace` does after it
 * recorded a trace — the image gets one more layer on top, a tar holding the file `trace`,
 * so that every device of the image replays the trace (prefetch) from its first read.
 *
 * The tar is ustar with owner 0 and mtime 0 (upstream writes it with Go's archive/tar;
 * the blob is not byte-identical to upstream's, nothing depends on that). Manifest and
 * config are pretty-printed with 3 spaces, the history entry is prepended, as upstream.
 */
import { decodeTrace } from '../device/trace-file.ts';
import { FailedPreconditionError } from '../io/errors.ts';
import { ANNOTATIONS, MEDIA_TYPES, type Descriptor } from '../image/descriptor.ts';
import type { OciLayout } from '../image/oci-layout.ts';
import { buildTar } from './tar-writer.ts';

/** Options of {@link addAccelerationLayer}. */
export interface AddAccelerationLayerOptions {
  /** The layout holding the overlaybd image; the new image is written into it. */
  layout: OciLayout;
  /** Tag (or digest) of the overlaybd image. */
  from: string;
  /** Tag of the accelerated image. */
  to: string;
  /** A trace file (runtime.md §8.2), validated before use. */
  trace: Uint8Array;
  /** Time stamped into the config; default now. */
  now?: Date;
}

interface ManifestJson {
  mediaType?: string;
  config: Descriptor;
  layers: Descriptor[];
  [key: string]: unknown;
}

interface ConfigJson {
  rootfs: { diff_ids: string[]; [key: string]: unknown };
  history?: unknown[];
  [key: string]: unknown;
}

const json3 = (v: unknown): Uint8Array => new TextEncoder().encode(JSON.stringify(v, null, 3));

/** Appends the trace layer to image `from`, tags the result `to`; returns its manifest descriptor. */
export async function addAccelerationLayer(options: AddAccelerationLayerOptions): Promise<Descriptor> {
  const { layout, from, to } = options;
  decodeTrace(options.trace, { name: 'the trace to add' });
  const desc = await layout.resolve(from);
  const what = `image ${from} of ${layout.dir}`;
  const manifest = JSON.parse(new TextDecoder().decode(await layout.readBlob(desc.digest))) as ManifestJson;
  if (!Array.isArray(manifest.layers) || manifest.config === undefined) {
    throw new FailedPreconditionError(`Cannot add an acceleration layer to ${what}: it is not an image manifest`);
  }
  const top = manifest.layers.at(-1)?.annotations ?? {};
  if (top[ANNOTATIONS.blobDigest] === undefined) {
    throw new FailedPreconditionError(`Cannot add an acceleration layer to ${what}: its top layer is not an overlaybd layer`);
  }
  if (top[ANNOTATIONS.accelerationLayer] === 'yes') {
    throw new FailedPreconditionError(`Cannot add an acceleration layer to ${what}: it already has one`);
  }
  const config = JSON.parse(new TextDecoder().decode(await layout.readBlob(manifest.config.digest))) as ConfigJson;

  const tar = buildTar([{ path: 'trace', type: 'file', mode: 0o444, uid: 0, gid: 0, mtime: 0, data: options.trace }]);
  const digest = await layout.writeBlob(tar);
  const fsType = top[ANNOTATIONS.fsType];
  const layer: Descriptor = {
    mediaType: MEDIA_TYPES.ociLayerTar,
    digest,
    size: tar.length,
    annotations: {
      [ANNOTATIONS.version]: '0.1.0',
      [ANNOTATIONS.blobDigest]: digest,
      [ANNOTATIONS.blobSize]: String(tar.length),
      [ANNOTATIONS.accelerationLayer]: 'yes',
      ...(fsType !== undefined ? { [ANNOTATIONS.fsType]: fsType } : {}),
    },
  };
  const created = (options.now ?? new Date()).toISOString();
  const newConfig = {
    ...config,
    created,
    rootfs: { ...config.rootfs, diff_ids: [...config.rootfs.diff_ids, digest] },
    history: [{ created, created_by: 'Acceleration Layer' }, ...(config.history ?? [])],
  };
  const configBytes = json3(newConfig);
  const configDigest = await layout.writeBlob(configBytes);
  const manifestBytes = json3({ ...manifest, config: { ...manifest.config, digest: configDigest, size: configBytes.length }, layers: [...manifest.layers, layer] });
  const result: Descriptor = { mediaType: desc.mediaType, digest: await layout.writeBlob(manifestBytes), size: manifestBytes.length };
  await layout.tag(result, to);
  return result;
}
