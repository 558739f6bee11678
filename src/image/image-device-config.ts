/**
 * The device config (`config.v1.json`, snapshotter.md §8.1) of an overlaybd image:
 * registry images become remote lowers (`repoBlobUrl` + digest + size), local layout
 * images become local lowers (`file` = blob path).
 */
import { DataCorruptionError, InvalidArgumentError } from '../io/errors.ts';
import { ANNOTATIONS, isIndexMediaType, isOverlaybdLayer, type Descriptor, type Index, type Manifest, type Platform } from './descriptor.ts';
import type { ImageEndpoint } from './image-endpoint.ts';
import type { DeviceConfig } from './device-config.ts';

const ARCH: Record<string, string> = { x64: 'amd64', arm64: 'arm64', arm: 'arm', ia32: '386', s390x: 's390x', ppc64: 'ppc64le', riscv64: 'riscv64' };

export function hostPlatform(): Platform {
  return { os: 'linux', architecture: ARCH[process.arch] ?? process.arch };
}

function matches(p: Platform | undefined, want: Platform): boolean {
  return p !== undefined && p.os === want.os && p.architecture === want.architecture && (want.variant === undefined || p.variant === want.variant);
}

/** Resolves the endpoint to one image manifest (choosing `platform` from an index). */
export async function resolveManifest(endpoint: ImageEndpoint, platform: Platform = hostPlatform()): Promise<{ descriptor: Descriptor; manifest: Manifest }> {
  let desc = await endpoint.resolve();
  for (let depth = 0; depth < 8; depth++) {
    const doc = JSON.parse(new TextDecoder().decode(await endpoint.readManifest(desc))) as Partial<Manifest & Index>;
    if (!isIndexMediaType(desc.mediaType) && !Array.isArray(doc.manifests)) {
      if (!Array.isArray(doc.layers)) throw new DataCorruptionError(`Cannot read image ${endpoint.name}: manifest has no layers`);
      return { descriptor: desc, manifest: doc as Manifest };
    }
    const child = (doc.manifests ?? []).find((m) => matches(m.platform, platform));
    if (child === undefined) {
      throw new InvalidArgumentError(`Cannot read image ${endpoint.name}: no manifest for ${platform.os}/${platform.architecture}`);
    }
    desc = child;
  }
  throw new DataCorruptionError(`Cannot read image ${endpoint.name}: indexes nested too deep`);
}

export interface ImageDeviceConfigOptions {
  platform?: Platform;
  /** Per-layer directories (`dir`, background-download targets), bottom first. */
  layerDirs?: string[];
  resultFile?: string;
}

/** Builds the read-only device config of an overlaybd image. */
export async function imageDeviceConfig(endpoint: ImageEndpoint, options: ImageDeviceConfigOptions = {}): Promise<DeviceConfig> {
  const { manifest } = await resolveManifest(endpoint, options.platform);
  const layers = manifest.layers;
  const plain = layers.findIndex((l) => !isOverlaybdLayer(l));
  if (plain >= 0) {
    throw new InvalidArgumentError(
      `Cannot build a device for ${endpoint.name}: layer ${plain} (${layers[plain]?.digest}) is not an overlaybd layer (no ${ANNOTATIONS.blobDigest} annotation); convert the image first`,
    );
  }
  const lowers = await Promise.all(
    layers.map(async (l, i) => {
      const dir = options.layerDirs?.[i] ?? '';
      const base = { file: '', dir, digest: l.digest, size: l.size, targetFile: '', targetDigest: '', gzipIndex: '' };
      if (endpoint.repoBlobUrl !== undefined) return base;
      // local layout: the blob file itself
      const reader = await endpoint.openBlob(l);
      const path = (reader as { path?: string }).path ?? '';
      await reader.close();
      return { ...base, file: path };
    }),
  );
  return {
    repoBlobUrl: endpoint.repoBlobUrl ?? '',
    lowers,
    upper: undefined,
    resultFile: options.resultFile ?? '',
    accelerationLayer: false,
    recordTracePath: '',
    download: undefined,
  };
}

/** Serialises a device config in upstream's key order, omitting empty values (snapshotter.md §8.1). */
export function serializeDeviceConfig(cfg: DeviceConfig): string {
  const omit = <T extends Record<string, unknown>>(o: T): Partial<T> =>
    Object.fromEntries(Object.entries(o).filter(([, v]) => v !== '' && v !== 0 && v !== undefined && v !== false)) as Partial<T>;
  return JSON.stringify({
    repoBlobUrl: cfg.repoBlobUrl,
    lowers: cfg.lowers.map((l) =>
      omit({ gzipIndex: l.gzipIndex, file: l.file, digest: l.digest, targetFile: l.targetFile, targetDigest: l.targetDigest, size: l.size, dir: l.dir }),
    ),
    upper: cfg.upper === undefined ? {} : omit({ index: cfg.upper.index, data: cfg.upper.data, target: cfg.upper.target, gzipIndex: cfg.upper.gzipIndex }),
    resultFile: cfg.resultFile,
    ...(cfg.accelerationLayer ? { accelerationLayer: true } : {}),
    ...(cfg.recordTracePath !== '' ? { recordTracePath: cfg.recordTracePath } : {}),
  });
}
