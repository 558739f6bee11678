/**
 * Builds one overlaybd layer from one OCI layer (convertor.md §A.6 "Build layer i"):
 *
 * 1. a fresh writable layer `DIR/writable_data` + `writable_index` (sparse by default,
 *    `overlaybd-create -s`), virtual size `virtualSize` for the bottom layer and 0 above
 *    (it takes the lowers' size when stacked);
 * 2. `DIR/config.json` naming the lowers (the previously built layers) and that upper;
 * 3. the device attached through FUSE + loop and its file system mounted on `DIR/mnt`
 *    (`mkfs` first for the bottom layer), the layer applied onto it, then unmounted and
 *    detached — also when the apply fails;
 * 4. the upper committed to `DIR/overlaybd.commit` (`overlaybd-commit -z -t --uuid U
 *    [--parent-uuid P]`), and the writable files removed unless kept.
 *
 * @example
 * ```ts
 * const { file } = await buildLayer(stream, {
 *   dir: 'work/0000_sha256:…', lowers: [], virtualSize: 64 * 2 ** 30, mkfs: true,
 *   uuid: layerUuid(chain[0]), zfile: { algorithm: 'lz4', blockSize: 4096 }, runDir: 'work/run',
 *   applier: new SubprocessApplier(),
 * });
 * ```
 */
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { commitFile } from '../formats/lsmt/commit-files.ts';
import { createWritableLayer } from '../formats/lsmt/writable-layer.ts';
import type { DeviceConfig, LowerConfig } from '../image/device-config.ts';
import { openDevice } from '../device/open-device.ts';
import { startSession } from '../attach/session.ts';
import type { ApplyOptions, ApplyStats, LayerApplier } from './layer-applier.ts';
import { DataCorruptionError } from '../io/errors.ts';

export interface BuildLayerOptions {
  /** Work directory of this layer (created). */
  dir: string;
  /** Committed layer files below, bottom first. */
  lowers: readonly string[];
  /** Bytes; used when `lowers` is empty (0 = take the lowers' size). */
  virtualSize: number;
  /** Make the file system first (bottom layer). */
  mkfs: boolean;
  /** `fstype[;mountopts[;mkfsopts]]`, default `ext4` with upstream's options. */
  fsType?: string;
  /** This layer's UUID and its parent's (the chain-ID UUIDs). */
  uuid: string;
  parentUuid?: string | undefined;
  zfile: { algorithm: 'lz4' | 'zstd'; blockSize: number };
  /** Session records of the attach (FUSE + loop). */
  runDir: string;
  applier: LayerApplier;
  /** Append-mode writable layer instead of a sparse one (`--disable-sparse`). */
  disableSparse?: boolean;
  /** Keep `writable_data`/`writable_index` after the commit. */
  keepWritable?: boolean;
  applyOptions?: ApplyOptions;
  /**
   * Checked after the apply, before the commit: the blob's digest and size (its
   * descriptor) and the uncompressed digest (its diff_id). `what` starts the error
   * message (default "Cannot apply the layer").
   */
  expect?: { blobDigest?: string; blobSize?: number; diffId?: string; what?: string };
  /** Called once the apply is done, before the commit starts. */
  onCommit?: () => void;
}

export interface BuiltLayer {
  /** `DIR/overlaybd.commit`: the tar-wrapped ZFile blob. */
  file: string;
  stats: ApplyStats;
}

function checkExpected(stats: ApplyStats, expect: BuildLayerOptions['expect']): void {
  if (expect === undefined) return;
  const what = expect.what ?? 'Cannot apply the layer';
  if ((expect.blobDigest !== undefined && stats.blobDigest !== expect.blobDigest) || (expect.blobSize !== undefined && stats.blobBytes !== expect.blobSize)) {
    throw new DataCorruptionError(`${what}: the blob has ${stats.blobBytes} bytes hashing to ${stats.blobDigest}, expected ${expect.blobSize ?? '?'} bytes hashing to ${expect.blobDigest ?? '?'}`);
  }
  if (expect.diffId !== undefined && stats.diffId !== expect.diffId) {
    throw new DataCorruptionError(`${what}: its content hashes to ${stats.diffId}, the config says ${expect.diffId}`);
  }
}

function lower(file: string): LowerConfig {
  return { file, dir: '', digest: '', size: 0, targetFile: '', targetDigest: '', gzipIndex: '' };
}

/** Applies `layer` on a new writable layer over `lowers` and commits it. */
export async function buildLayer(layer: AsyncIterable<Uint8Array>, options: BuildLayerOptions): Promise<BuiltLayer> {
  const dir = resolve(options.dir);
  await mkdir(dir, { recursive: true });
  const data = join(dir, 'writable_data');
  const index = join(dir, 'writable_index');
  const file = join(dir, 'overlaybd.commit');
  await rm(data, { force: true });
  await rm(index, { force: true });
  const upper = await createWritableLayer({
    data,
    index,
    virtualSize: options.lowers.length === 0 ? options.virtualSize : 0,
    ...(options.disableSparse === true ? {} : { sparse: true }),
  });
  await upper.close();
  try {
    const cfg: DeviceConfig = {
      repoBlobUrl: '',
      lowers: options.lowers.map((f) => lower(resolve(f))),
      upper: { data, index, target: '', gzipIndex: '' },
      resultFile: '',
      accelerationLayer: false,
      recordTracePath: '',
      download: undefined,
    };
    await writeFile(join(dir, 'config.json'), JSON.stringify({ repoBlobUrl: '', lowers: cfg.lowers.map((l) => ({ file: l.file })), upper: { index, data }, resultFile: '' }), { mode: 0o600 });
    const stats = await applyOnDevice(layer, { cfg, mountpoint: join(dir, 'mnt'), ...options });
    checkExpected(stats, options.expect);
    options.onCommit?.();
    await commitFile({ data, index }, file, {
      zfile: { ...options.zfile, verify: true, rewriteHeader: true },
      tar: true,
      overwrite: true,
      uuid: options.uuid,
      parentUuid: options.parentUuid,
    });
    return { file, stats };
  } finally {
    if (options.keepWritable !== true) {
      await rm(data, { force: true });
      await rm(index, { force: true });
    }
  }
}

export interface ApplyOnDeviceOptions {
  cfg: DeviceConfig;
  mountpoint: string;
  mkfs: boolean;
  fsType?: string;
  runDir: string;
  applier: LayerApplier;
  applyOptions?: ApplyOptions;
}

/**
 * Opens the device of `cfg` (which needs an upper), attaches it with its file system
 * mounted read-write on `mountpoint` (`mkfs` first when asked), applies `layer` and
 * tears everything down again (`overlaybd-apply`).
 */
export async function applyOnDevice(layer: AsyncIterable<Uint8Array>, options: ApplyOnDeviceOptions): Promise<ApplyStats> {
  // The applier gets ready (its process starts) while the device is attached and mkfs runs.
  options.applier.prepare?.();
  const device = await openDevice(options.cfg);
  try {
    await mkdir(options.mountpoint, { recursive: true });
    const session = await startSession(device, {
      target: `apply:${options.mountpoint}`,
      runDir: options.runDir,
      mountpoint: options.mountpoint,
      writable: true,
      mkfs: options.mkfs,
      ...(options.fsType !== undefined ? { fsType: options.fsType } : {}),
    });
    let stats: ApplyStats;
    try {
      stats = await options.applier.apply(layer, options.mountpoint, { maxFileSize: device.size, ...options.applyOptions });
    } finally {
      await session.stop();
    }
    await device.flush();
    return stats;
  } finally {
    await device.close();
  }
}
